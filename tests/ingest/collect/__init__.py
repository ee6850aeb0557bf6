"""Tests of ``ingest.collect``, against real local servers."""

"""Tests of ``ingest.prepare``."""

"""Tests of ``ingest``: parsing, the union layout, the store."""

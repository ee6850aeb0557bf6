"""Tests of ``ingest.finetune``."""

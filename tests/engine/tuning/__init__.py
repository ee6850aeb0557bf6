"""Tests of ``engine.tuning``."""

"""Tests of ``engine.generation``."""

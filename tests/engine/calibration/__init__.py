"""Tests of ``engine.calibration``."""

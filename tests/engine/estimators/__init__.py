"""Tests of ``engine.estimators``; ``naive.py`` holds the estimators' dict twins."""

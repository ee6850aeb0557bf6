"""Tests of the command line, ``engine.cli``, run as users run it."""

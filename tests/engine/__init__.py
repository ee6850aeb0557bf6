"""Tests of ``engine``; ``naive.py`` holds the kernels' slow twins."""

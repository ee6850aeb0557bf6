"""Tests of the benchmarks' baselines (``bench.prototype``)."""

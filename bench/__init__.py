"""Benchmarks, apart from the tests: ``python -m bench.table``, ``bench.tuning``, ``bench.estimators``
(``bench/README.md``). They import only the packages, never ``tests``."""

"""The test suite, mirroring the packages: ``tests/engine``, ``tests/ingest``, ``tests/bench``."""

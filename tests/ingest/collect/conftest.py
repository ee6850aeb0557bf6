"""Fixtures shared by collect's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ingest.collect.fake_server import prepared_run


@pytest.fixture()
def manifest(tmp_path) -> tuple[Path, dict[str, int]]:
    """A prepared run folder's manifest and each request's index by prompt (``prepared_run``)."""
    return prepared_run(tmp_path)

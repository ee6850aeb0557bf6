"""Shared fixtures: the bundled Grimm data, ingested once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from tests.helpers import GOLDEN_DIR, GRIMM_DIR


@pytest.fixture(scope="session")
def grimm_store(tmp_path_factory) -> Path:
    """A store of all four bundled models, calibrated for ``GRIMM_ROLES`` on ``data/grimm/deep``
    as the demo does (read-only: tests must not modify it)."""
    import engine
    from engine.bundled import calibrate_bundle
    from ingest import ingest_responses

    out = tmp_path_factory.mktemp("grimm") / "grimm.store"
    store = ingest_responses(
        sorted(GRIMM_DIR.glob("grimm-*.jsonl.gz")), requests=GRIMM_DIR / "requests.jsonl", out=out,
        vocab_size=GPT2_VOCAB_SIZE,
    )
    calibrate_bundle(engine.open_dataset(store), GRIMM_DIR / "deep")
    return store


@pytest.fixture(scope="session")
def grimm_dataset(grimm_store):
    import engine

    return engine.open_dataset(grimm_store)


@pytest.fixture(scope="session")
def golden_dataset(tmp_path_factory):
    """Two real requests (one val, one test) cut to 40 tokens: small enough for brute force.
    Not calibrated: its default estimator is the fallback, and calibrated-tail needs a fit."""
    import engine
    from ingest import ingest_responses

    out = tmp_path_factory.mktemp("golden") / "golden.store"
    files = sorted(p for p in GOLDEN_DIR.iterdir() if p.name.startswith("grimm-"))
    return engine.open_dataset(
        ingest_responses(files, requests=GOLDEN_DIR / "requests.jsonl", out=out, vocab_size=GPT2_VOCAB_SIZE)
    )

"""The testbed's models over a store of two of its requests: the exact oracle that
``test_oracle`` checks and the sampled correction (``test_correction``) is judged by; the whole
testbed as a store; and the bundled data as a sharded store."""

from __future__ import annotations

import json

import pytest

from bench.testbed.reader import TESTBED_DIR, bundled_testbed, model_dirs
from engine import open_dataset
from engine.bundled import calibrate_bundle
from ingest import ingest_responses
from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from tests.helpers import GRIMM_DIR, SHARD_POSITIONS

BUNDLE = bundled_testbed()
TESTBED_MODELS = tuple(BUNDLE.roles[r] for r in ("big", "tuned", "untuned"))


@pytest.fixture(scope="session")
def grimm_sharded_store(tmp_path_factory):
    """The bundled data as ``grimm_store`` holds it, in shards of at most ``SHARD_POSITIONS``
    positions, calibrated the same way (read-only: tests must not modify it)."""
    out = ingest_responses(sorted(GRIMM_DIR.glob("grimm-*.jsonl.gz")), requests=GRIMM_DIR / "requests.jsonl",
                           out=tmp_path_factory.mktemp("sharded") / "grimm.store", vocab_size=GPT2_VOCAB_SIZE,
                           shard_positions=SHARD_POSITIONS)
    calibrate_bundle(open_dataset(out), GRIMM_DIR / "deep")
    return out


@pytest.fixture(scope="session")
def testbed_store(tmp_path_factory):
    """The whole committed testbed (four models, 42,862 positions) ingested, not calibrated
    (read-only: tests must copy it before calibrating)."""
    return ingest_responses(sorted(TESTBED_DIR.glob("testbed-*.jsonl.gz")), requests=TESTBED_DIR / "requests.jsonl",
                            out=tmp_path_factory.mktemp("testbed-all") / "store", vocab_size=BUNDLE.vocab_size)


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """A store of two testbed requests (the first val and the first test one) and its manifest."""
    root = tmp_path_factory.mktemp("testbed-two")
    lines = (TESTBED_DIR / "requests.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    keep = [next(r for r in records if r["split"] == split) for split in ("val", "test")]
    manifest = root / "requests.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    store = ingest_responses(sorted(TESTBED_DIR.glob("testbed-*.jsonl.gz")), requests=manifest, out=root / "store",
                             vocab_size=BUNDLE.vocab_size)
    return open_dataset(store), manifest


@pytest.fixture(scope="session")
def oracle(small):
    """The exact oracle of the testbed's blend over ``small`` (needs the local extra)."""
    pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
    from engine.oracle import Oracle

    ds, manifest = small
    return Oracle(ds, TESTBED_MODELS, model_dirs(TESTBED_DIR), requests=manifest)

"""Reading a testbed: its store (ingested and calibrated once into a cache, as the demo's), its
models, and the exact oracle over them (``engine.oracle``)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.bundled import BundledData, cached_store
from engine.dataset import Dataset, open_dataset
from engine.oracle import Oracle
from ingest.prepare.bpe import GPT2_VOCAB_SIZE

from .layout import BLEND_ROLES, MANIFEST, MARKER, MODELS_DIR, PREFIX, ROLES

__all__ = ["TESTBED_DIR", "bundled_testbed", "open_testbed", "model_dirs"]

TESTBED_DIR = Path(__file__).resolve().parents[2] / "data" / "testbed"
"""The committed testbed."""


def bundled_testbed(testbed: Path = TESTBED_DIR) -> BundledData:
    """The testbed in ``testbed`` as a bundled dataset: its roles, deep files and vocabulary
    (``layout``), and the exact proxy-tuning figures its build computed (``build.json``)."""
    roles = {role: PREFIX + model for role, model in ROLES.items()}
    figures = json.loads((testbed / MARKER).read_text(encoding="utf-8"))["exact"]["figures"]["proxy-tuning"]
    return BundledData(
        name=PREFIX.rstrip("-"),
        roles={"big": roles["big"], "tuned": roles["tuned"], "untuned": roles["untuned"], "reference": roles["big-tuned"]},
        deep_files={role: f"{role}.npz" for role in BLEND_ROLES},
        vocab_size=GPT2_VOCAB_SIZE,
        exact_proxy_tuning={split: figures[split]["perplexity"] for split in ("val", "test")},
    )


def model_dirs(testbed: Path) -> dict[str, Path]:
    """Store model name -> its directory under ``testbed/models``."""
    return {PREFIX + model: testbed / MODELS_DIR / model for model in ROLES.values()}


def open_testbed(testbed: Path, cache: Path) -> tuple[BundledData, Dataset, Oracle]:
    """The testbed's bundle, its dataset (cached store, calibrated on its deep sample) and the
    exact oracle of its blend roles."""
    bundle = bundled_testbed(testbed)
    ds = open_dataset(cached_store(testbed, cache, bundle))
    oracle = Oracle(ds, list(bundle.blend_roles.values()), model_dirs(testbed),
                    requests=testbed / MANIFEST)
    return bundle, ds, oracle


"""Bundled datasets: a folder of response files, a request manifest and a deep sample, and the
figures its data card states; ingested and calibrated once into a cache.

``data/grimm`` is the one ``approxft demo`` runs on (``GRIMM_DATA``); ``bench/testbed`` describes
the testbed's the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ingest import ingest_responses
from ingest.prepare.bpe import GPT2_VOCAB_SIZE

from .dataset import Dataset, open_dataset
from .params import ROLES

__all__ = ["BundledData", "GRIMM_DATA", "GRIMM", "GRIMM_DEEP_FILES", "EXACT_PROXY_TUNING", "bundled_data_dir",
           "cached_store", "calibrate_bundle"]

DEEP_DIR = "deep"
MANIFEST = "requests.jsonl"


@dataclass(frozen=True)
class BundledData:
    """What a bundled dataset's folder holds and what its data card says.

    Attributes:
        name: the files' prefix: responses ``<name>-*.jsonl.gz``; the cached store ``<name>.store``.
        roles: ``big``, ``tuned``, ``untuned`` and ``reference`` (the big model fine-tuned, which
            a blend tries to match) -> model name.
        deep_files: each blend role's file in ``deep/``.
        vocab_size: the models' vocabulary size.
        exact_proxy_tuning: the proxy-tuning blend's exact perplexity per split (data card).
    """

    name: str
    roles: dict[str, str]
    deep_files: dict[str, str]
    vocab_size: int
    exact_proxy_tuning: dict[str, float]

    @property
    def blend_roles(self) -> dict[str, str]:
        """``big``, ``tuned``, ``untuned`` -> model name."""
        return {r: self.roles[r] for r in ROLES}


GRIMM = {"big": "grimm-big", "tuned": "grimm-small-tuned", "untuned": "grimm-small", "reference": "grimm-big-tuned"}
"""Roles of the bundled models (see data/grimm/README.md)."""

GRIMM_DEEP_FILES = {"big": "top1000_big.npz", "tuned": "top1000_small_tuned.npz", "untuned": "top1000_small.npz"}
"""The bundled calibration sample, ``data/grimm/deep/``: each role's top-1000 lists (data card)."""

EXACT_PROXY_TUNING = {"val": 104.72, "test": 107.45}
"""The proxy-tuning blend's exact perplexity over the full vocabulary, from data/grimm/README.md
(computed from full distributions when the data was made; not derivable from the top-20 data)."""

GRIMM_DATA = BundledData(name="grimm", roles=GRIMM, deep_files=GRIMM_DEEP_FILES, vocab_size=GPT2_VOCAB_SIZE,
                         exact_proxy_tuning=EXACT_PROXY_TUNING)
"""The bundled Grimm data: its models use the GPT-2 byte-level BPE vocabulary (data card)."""


def bundled_data_dir() -> Path:
    """``data/grimm`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "data" / "grimm"


def _fingerprint(paths: list[Path]) -> dict[str, list[int]]:
    return {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


def cached_store(data_dir: Path, cache_dir: Path, bundle: BundledData = GRIMM_DATA) -> Path:
    """Ingest ``data_dir`` into ``cache_dir/<name>.store`` and fit ``calibrated-tail`` on its deep
    sample (``data_dir/deep``, where present) unless an up-to-date store is there."""
    responses = sorted(data_dir.glob(f"{bundle.name}-*.jsonl.gz"))
    requests = data_dir / MANIFEST
    if not responses or not requests.exists():
        raise FileNotFoundError(f"{data_dir}: expected {bundle.name}-*.jsonl.gz and {MANIFEST}")
    deep = data_dir / DEEP_DIR
    deep_files = [deep / f for f in bundle.deep_files.values()]
    calibrated = all(p.is_file() for p in deep_files)
    store = cache_dir / f"{bundle.name}.store"
    stamp = cache_dir / f"{bundle.name}.store.sources.json"
    want = _fingerprint([*responses, requests, *(deep_files if calibrated else [])])
    if store.is_dir() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return store
    print(f"ingesting {len(responses)} response files from {data_dir} into {store} (once) ...", file=sys.stderr)
    ingest_responses(responses, requests=requests, out=store, vocab_size=bundle.vocab_size)
    if calibrated:
        print(f"calibrating calibrated-tail on {deep} ...", file=sys.stderr)
        calibrate_bundle(open_dataset(store), deep, bundle)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(want))
    tmp.replace(stamp)
    return store


def calibrate_bundle(ds: Dataset, deep: Path, bundle: BundledData = GRIMM_DATA) -> Path:
    """Fit ``calibrated-tail`` for the bundle's blend roles on its deep sample; the fit's path."""
    return ds.calibrate(deep, models=[bundle.roles[r] for r in ROLES],
                        files=[bundle.deep_files[r] for r in ROLES])[0].path

"""A dataset's calibration fits, stored with the store: ``STORE/calibration/<model>+<model>+....json``
(a blend's models in term order: ``<big>+<tuned>+<untuned>`` for the three roles).

``calibrate`` (``approxft calibrate``, ``Dataset.calibrate``) matches a deep sample's positions to
the store's (``engine.calibration.sample``), fits ``calibrated-tail``'s missing-value
distributions at the store's k (``engine.calibration.fit``) and writes the fit atomically;
``read_fit`` reads it back for a blend of those models in that order. A re-ingest of the same
data (the same store fingerprint) keeps the fits; of other data it drops them, with a warning
(``ingest.store_write``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from ingest.atomic import write_text_atomic
from ingest.store import CALIBRATION_DIR, Store, StoreError

from ..candidates import MissingDrops
from ..estimators.calibrated_tail import NAME as CALIBRATED_TAIL
from .fit import fit_missing_drops
from .sample import CalibrationError, store_sample

__all__ = ["FitRecord", "calibrate", "read_fit", "calibration_path", "model_key"]

CALIBRATION_FORMAT = "approxft-calibration"
CALIBRATION_VERSION = 1
ROLES = ("big", "tuned", "untuned")

def calibration_path(store_path: str | Path, models: Sequence[str]) -> Path:
    """``STORE/calibration/<model>+<model>+....json``, the models in blend order (names quoted: ``org/model`` stays one
    file, ``+`` stays a separator)."""
    return Path(store_path) / CALIBRATION_DIR / (model_key(models) + ".json")


def model_key(models: Sequence[str]) -> str:
    """``<model>+<model>+...`` (blend order), the file name of what the store keeps for a blend's models."""
    return "+".join(quote(m, safe="") for m in models)


@dataclass(frozen=True)
class FitRecord:
    """A written fit and what it was fitted on."""

    path: Path
    models: tuple[str, ...]
    k: int
    depth: int
    sample_size: int
    positions: str
    drops: MissingDrops


def calibrate(
    store: Store, deep: str | Path, *, models: Sequence[str], files: Sequence[str], vocab_size: int
) -> FitRecord:
    """Fit ``calibrated-tail`` on a deep sample of ``store`` and write it into the store.

    Args:
        store: the store (written to).
        deep: the deep sample's folder.
        models: the store's model names, in blend order (any number: big, tuned, untuned for the
            three roles).
        files: each model's ``.npz``, relative to ``deep`` (or absolute), in the same order.
        vocab_size: the tokenizer's vocabulary size.

    Raises:
        ValueError: unknown model, the models' k differ, a file is missing or unreadable, or the
            sample does not line up with the store. Nothing is written then.
    """
    models = tuple(models)
    if not models or len(files) != len(models):
        raise ValueError("a calibration is for a blend's models and one file each")
    ks = {m: store.k[m] for m in models}
    if len(set(ks.values())) != 1:
        raise CalibrationError(
            "the models' list lengths differ (" + ", ".join(f"{m}: k = {k}" for m, k in ks.items())
            + "); a calibration fit is for one k"
        )
    k = ks[models[0]]
    sample, positions = store_sample(store, deep, models=models, files=files, vocab_size=vocab_size)
    if sample.depth <= k:
        raise CalibrationError(
            f"{deep}: the deep lists hold {sample.depth} entries (at their shortest), not more than the store's k = {k}"
        )
    drops = fit_missing_drops(sample, k)
    path = calibration_path(store.path, models)
    payload = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "estimator": CALIBRATED_TAIL,
        "models": _by_role(models),
        "k": k,
        "depth": sample.depth,
        "sample_size": sample.n_positions,
        "positions": positions,
        "source": {"deep": str(Path(deep).resolve()), "files": _by_role([str(f) for f in files])},
        "fit": drops.to_json(),
    }
    created = not path.parent.exists()
    path.parent.mkdir(exist_ok=True)
    try:
        write_text_atomic(path, _json_lines(payload))
    except BaseException:
        if created and not any(path.parent.iterdir()):
            path.parent.rmdir()
        raise
    return FitRecord(path=path, models=models, k=k, depth=sample.depth, sample_size=sample.n_positions,
                       positions=positions, drops=drops)


def _by_role(values: Sequence[str]) -> dict[str, str] | list[str]:
    """Per model of a blend, as the fit file keeps them: by role for three, a list otherwise."""
    return dict(zip(ROLES, values, strict=True)) if len(values) == len(ROLES) else list(values)


def _json_lines(payload: dict[str, Any]) -> str:
    """JSON with one top-level key per line (the fit's arrays stay on theirs)."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in payload.items()) + "\n}\n"


def read_fit(store: Store, models: Sequence[str]) -> MissingDrops | None:
    """The store's ``calibrated-tail`` fit for ``models`` (in blend order), None where it has none.

    Raises:
        StoreError: the file is unreadable, malformed, or for another k than the store's.
    """
    path = calibration_path(store.path, models)
    if not path.is_file():
        return None
    try:
        meta: Any = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: cannot be read ({err})") from None
    redo = f"; rerun approxft calibrate {store.path}"
    try:
        valid = (meta["format"] == CALIBRATION_FORMAT and meta["version"] == CALIBRATION_VERSION
                 and list(meta["models"].values() if isinstance(meta["models"], dict) else meta["models"])
                == list(models))
        drops = MissingDrops.from_json(meta["fit"])
    except (KeyError, TypeError, ValueError, AttributeError):
        valid = False
    if valid:
        valid = drops.drop.shape[2] == len(models)
    if not valid:
        raise StoreError(f"{path}: not a calibration fit of {', '.join(models)} (format {CALIBRATION_FORMAT} "
                         f"version {CALIBRATION_VERSION}){redo}")
    if any(store.k[m] != drops.k for m in models):
        raise StoreError(f"{path}: fitted at k = {drops.k}, the store's lists have k = "
                         f"{', '.join(str(store.k[m]) for m in models)}{redo}")
    return drops

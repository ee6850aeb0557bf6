"""A dataset's calibration fits: fitted on its calibration sample, stored with the store.

An estimator may fit its parameters per dataset on a calibration sample (deeper lists for some
positions). ``calibrate`` (``approxft calibrate``) matches a deep sample's positions to the
store's, fits ``calibrated-tail``'s missing-value distributions at the store's k
(``engine.calibration.fit_missing_drops``) and writes the fit atomically to
``STORE/calibration/<big>+<tuned>+<untuned>.json``; ``read_calibration`` reads it back for a
blend of those models in that order. A re-ingest replaces the whole store directory, and with it
the fits made on the old data.

A deep sample is a folder (``data/grimm/deep``, or ``deep/`` from ``approxft collect``) with one
``.npz`` per model:

- ``ids``: integer ``(n, K)``, token ids into ``token_strings.json`` (a JSON list: id -> the token
  string as the API wrote it, as in the store's vocabulary), each row by log-probability
  descending, -1 past the end of a shorter list;
- ``lp``: float ``(n, K)``, natural-log values;
- ``target_lp``: float ``(n,)``, the actual token's exact value (NaN where unknown);
- optionally ``request`` and ``position``: int ``(n,)``, which positions the rows are (manifest
  request index, tokens of context). Without them the rows are the first n scored positions of
  the ``val`` split in store order (data/grimm/README.md, ``deep/``).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import quote

import numpy as np

from ingest.atomic import write_text_atomic
from ingest.store import Store, StoreError

from .calibration import CalibrationSample, fit_missing_drops
from .estimators.calibrated_tail import NAME as CALIBRATED_TAIL
from .estimators.calibrated_tail import MissingDrops

if TYPE_CHECKING:
    from .dataset import Dataset

__all__ = ["CalibrationError", "Calibration", "calibrate", "read_calibration", "calibration_path", "store_sample"]

CALIBRATION_DIR = "calibration"
CALIBRATION_FORMAT = "approxft-calibration"
CALIBRATION_VERSION = 1
TOKEN_STRINGS = "token_strings.json"
ROLES = ("big", "tuned", "untuned")
IMPLICIT_SPLIT = "val"
"""A sample without ``request``/``position`` arrays covers the first n scored positions of this split."""
LINE_UP_TOLERANCE = 0.01
"""Largest median |deep target value - store's target value| (nats) of a sample that belongs to
the store. Separate API calls differ by float noise; another position or model differs by nats."""


class CalibrationError(ValueError):
    """A deep sample cannot be read or does not fit the store; one line naming the file."""


def calibration_path(store_path: str | Path, models: Sequence[str]) -> Path:
    """``STORE/calibration/<big>+<tuned>+<untuned>.json`` (names quoted: ``org/model`` stays one
    file, ``+`` stays a separator)."""
    return Path(store_path) / CALIBRATION_DIR / ("+".join(quote(m, safe="") for m in models) + ".json")


@dataclass(frozen=True)
class Calibration:
    """A written fit and what it was fitted on."""

    path: Path
    models: tuple[str, ...]
    k: int
    depth: int
    sample_size: int
    positions: str
    drops: MissingDrops


def calibrate(ds: "Dataset", deep: str | Path, *, models: Sequence[str], files: Sequence[str]) -> Calibration:
    """Fit ``calibrated-tail`` on a deep sample of ``ds`` and write it into the store.

    Args:
        ds: the dataset (its store is written to).
        deep: the deep sample's folder.
        models: the store's (big, tuned, untuned) model names.
        files: each model's ``.npz``, relative to ``deep`` (or absolute), in the same order.

    Raises:
        ValueError: unknown model, the models' k differ, a file is missing or unreadable, or the
            sample does not line up with the store. Nothing is written then.
    """
    models = tuple(ds.require_model(m) for m in models)
    if len(models) != len(ROLES) or len(files) != len(models):
        raise ValueError(f"a calibration is for {len(ROLES)} models (big, tuned, untuned) and one file each")
    ks = {m: ds.store.k[m] for m in models}
    if len(set(ks.values())) != 1:
        raise CalibrationError(
            "the models' list lengths differ (" + ", ".join(f"{m}: k = {k}" for m, k in ks.items())
            + "); a calibration fit is for one k"
        )
    k = ks[models[0]]
    sample, positions = store_sample(ds, deep, models=models, files=files)
    if sample.depth <= k:
        raise CalibrationError(
            f"{deep}: the deep lists hold {sample.depth} entries (at their shortest), not more than the store's k = {k}"
        )
    drops = fit_missing_drops(sample, k)
    path = calibration_path(ds.store.path, models)
    payload = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "estimator": CALIBRATED_TAIL,
        "models": dict(zip(ROLES, models, strict=True)),
        "k": k,
        "depth": sample.depth,
        "sample_size": sample.n_positions,
        "positions": positions,
        "source": {"deep": str(Path(deep).resolve()), "files": dict(zip(ROLES, map(str, files), strict=True))},
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
    return Calibration(path=path, models=models, k=k, depth=sample.depth, sample_size=sample.n_positions,
                       positions=positions, drops=drops)


def store_sample(
    ds: "Dataset", deep: str | Path, *, models: Sequence[str], files: Sequence[str]
) -> tuple[CalibrationSample, str]:
    """The deep sample as a ``CalibrationSample`` of ``ds``'s positions, and which positions it covers.

    Rows are matched to store positions by ``request``/``position`` where every file has them
    (positions all files answer), else taken as the first n scored ``val`` positions. Token ids
    stay in the sample's numbering; targets are mapped into it through ``token_strings.json``
    (a target no list holds gets an id of its own). Lists are truncated to the shortest full one.

    Raises:
        CalibrationError: a file is missing or malformed, or the sample does not line up with
            the store (its target values differ from the store's).
    """
    deep = Path(deep)
    paths = [deep / f for f in files]
    parts = [_read_npz(p) for p in paths]
    strings = _read_token_strings(deep / TOKEN_STRINGS)
    positions = ds.store.positions
    explicit = ["request" in p and "position" in p for p in parts]
    if all(explicit):
        store_key = _position_key(positions.get_column("request").to_numpy(), positions.get_column("position").to_numpy())
        keys = [_position_key(p["request"], p["position"]) for p in parts]
        common = keys[0]
        for other in keys[1:]:
            common = np.intersect1d(common, other)
        common = np.unique(common)
        if common.size == 0:
            raise CalibrationError(f"{deep}: the files have no position in common")
        order = np.argsort(store_key, kind="stable")
        at = np.searchsorted(store_key, common, sorter=order)
        found = (at < store_key.size) & (store_key[order[np.minimum(at, store_key.size - 1)]] == common)
        if not found.all():
            raise CalibrationError(f"{deep}: {int((~found).sum())} sampled positions are not in the store {ds.store.path}")
        rows = order[at]
        picks = []
        for key in keys:
            sorter = np.argsort(key, kind="stable")
            picks.append(sorter[np.searchsorted(key, common, sorter=sorter)])
        described = f"{common.size} positions named by request/position"
    elif not any(explicit):
        n = parts[0]["ids"].shape[0]
        for path, part in zip(paths, parts, strict=True):
            if part["ids"].shape[0] != n:
                raise CalibrationError(f"{path}: {part['ids'].shape[0]} rows, {paths[0].name} has {n}")
        if IMPLICIT_SPLIT not in ds.splits:
            raise CalibrationError(f"{deep}: the sample covers the first {n} {IMPLICIT_SPLIT} positions, "
                                   f"and the store has no {IMPLICIT_SPLIT} split")
        rows = np.flatnonzero(ds.split_mask(IMPLICIT_SPLIT))[:n]
        if rows.size < n:
            raise CalibrationError(f"{deep}: the sample covers the first {n} {IMPLICIT_SPLIT} positions, "
                                   f"the store has {rows.size}")
        picks = [np.arange(n)] * len(parts)
        described = f"the first {n} scored positions of the {IMPLICIT_SPLIT} split"
    else:
        raise CalibrationError(f"{deep}: some files name their positions (request, position) and some do not")

    ids = [p["ids"][pick] for p, pick in zip(parts, picks, strict=True)]
    depth = min(int((i >= 0).sum(axis=1).min()) for i in ids)
    if any(int(i.max(initial=-1)) >= len(strings) for i in ids):
        raise CalibrationError(f"{deep / TOKEN_STRINGS}: has {len(strings)} tokens, the lists use higher ids")
    target_lp = np.stack([p["target_lp"][pick].astype(np.float32) for p, pick in zip(parts, picks, strict=True)])
    for model, path, deep_lp in zip(models, paths, target_lp, strict=True):
        stored = ds.store.target_lp(model)[rows]
        both = np.isfinite(stored) & np.isfinite(deep_lp)
        if both.any():
            gap = float(np.median(np.abs(stored[both] - deep_lp[both])))
            if gap > LINE_UP_TOLERANCE:
                raise CalibrationError(
                    f"{path}: its target log-probabilities differ from {model}'s in the store (median {gap:.3g} "
                    f"nats over {described}): a sample of another model or dataset?"
                )
    token = ds.store.vocab.get_column("token").to_list()
    deep_id = {s: i for i, s in enumerate(strings)}
    target = np.empty(rows.size, dtype=np.int64)
    fresh = len(strings)
    for j, t in enumerate(positions.get_column("target").to_numpy()[rows]):
        target[j] = deep_id.get(token[t], -1)
        if target[j] < 0:  # in no deep list: any id of its own will do
            target[j] = fresh
            fresh += 1
    sample = CalibrationSample(
        ids=np.stack([i[:, :depth] for i in ids]),
        lp=np.stack([p["lp"][pick][:, :depth].astype(np.float32) for p, pick in zip(parts, picks, strict=True)]),
        target=target,
        target_lp=target_lp,
        vocab_size=max(fresh, ds.vocab_size),
    )
    return sample, described


def _json_lines(payload: dict[str, Any]) -> str:
    """JSON with one top-level key per line (the fit's arrays stay on theirs)."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in payload.items()) + "\n}\n"


def _position_key(request: np.ndarray, position: np.ndarray) -> np.ndarray:
    return (np.asarray(request, dtype=np.int64) << 32) | np.asarray(position, dtype=np.int64)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    try:
        with np.load(path) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CalibrationError(f"{path}: cannot be read as .npz ({err})") from None
    for name in ("ids", "lp", "target_lp"):
        if name not in arrays:
            raise CalibrationError(f"{path}: no {name!r} array (has: {', '.join(arrays) or 'none'})")
    n_k = arrays["ids"].shape
    if len(n_k) != 2 or arrays["lp"].shape != n_k or arrays["target_lp"].shape != n_k[:1]:
        raise CalibrationError(f"{path}: expected ids and lp of one shape (n, K) and target_lp (n,)")
    if not np.issubdtype(arrays["ids"].dtype, np.integer):
        raise CalibrationError(f"{path}: ids are {arrays['ids'].dtype}, not integers")
    arrays["ids"] = arrays["ids"].astype(np.int64)
    return arrays


def _read_token_strings(path: Path) -> list[str]:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    try:
        strings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CalibrationError(f"{path}: cannot be read ({err})") from None
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise CalibrationError(f"{path}: expected a JSON list of token strings")
    return strings


def read_calibration(store: Store, models: Sequence[str]) -> MissingDrops | None:
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
                 and list(meta["models"].values()) == list(models))
        drops = MissingDrops.from_json(meta["fit"])
    except (KeyError, TypeError, ValueError, AttributeError):
        valid = False
    n = len(models)
    if valid:
        shape = drops.drop.shape
        valid = len(shape) == 3 and shape[0] == 1 << n and shape[2] == n and drops.log_weight.shape == shape[:2]
    if not valid:
        raise StoreError(f"{path}: not a calibration fit of {', '.join(models)} (format {CALIBRATION_FORMAT} "
                         f"version {CALIBRATION_VERSION}){redo}")
    if any(store.k[m] != drops.k for m in models):
        raise StoreError(f"{path}: fitted at k = {drops.k}, the store's lists have k = "
                         f"{', '.join(str(store.k[m]) for m in models)}{redo}")
    return drops

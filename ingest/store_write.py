"""Writing a store: its tables and ``store.json`` built beside the old store and swapped with it
in one step, the old store's calibration fits carried over where the data are the same."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.atomic import staged_directory
from ingest.errors import IngestError
from ingest.fingerprint import store_fingerprint
from ingest.store import (
    CALIBRATION_DIR,
    COMPRESSION,
    DOCUMENT,
    SPLIT,
    STORE_JSON,
    StoreError,
    is_store,
    open_store,
)

__all__ = ["CalibrationDropped", "check_replaceable", "write_store"]


class CalibrationDropped(UserWarning):
    """A re-ingest dropped the calibration fits of the store it replaced: they were made on other
    data (``write_store``)."""


def write_store(out: str | Path, *, meta: Mapping[str, Any], tables: Mapping[str, pa.Table]) -> Path:
    """Write ``tables`` (file name -> table) and ``store.json`` (``meta`` plus the tables'
    ``fingerprint``, ``ingest.fingerprint``) as the store ``out``, in one step.

    The store is built in ``<out>.tmp-<random>`` beside ``out`` and swapped with it
    (``ingest.atomic.staged_directory``): readers see the old store or the new one, never none or
    a part; on any error an existing store is left as it was and nothing is left behind. What
    killed writers left beside ``out`` is removed. Only a store or an empty directory is replaced
    (``check_replaceable``, once those leftovers are dealt with).

    An existing store's calibration fits (``CALIBRATION_DIR``, ``approxft calibrate``) move into
    the new store where the fingerprints match (the same data ingested again); otherwise they are
    dropped, with a ``CalibrationDropped`` warning naming them.

    Raises:
        IngestError: ``out`` exists and is not an approxft store (``check_replaceable``).
    """
    out = Path(out)
    meta = {**meta, "fingerprint": store_fingerprint(meta, tables, tables.__getitem__)}
    with staged_directory(out) as tmp:
        check_replaceable(out)
        for name, table in tables.items():
            # Dictionary pages pay off only for the few repeated strings; for ids and floats
            # they cost time and size.
            dictionary = [c for c in table.column_names if c in (SPLIT, DOCUMENT)]
            pq.write_table(table, tmp / name, compression=COMPRESSION, use_dictionary=dictionary or False)
        (tmp / STORE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        dropped = _carry_calibration(out, tmp, meta["fingerprint"])
    if dropped:
        warnings.warn(dropped, CalibrationDropped, stacklevel=2)
    return out


def check_replaceable(out: str | Path) -> None:
    """Refuse to replace ``out`` unless it is missing, an empty directory, or an approxft store
    and only that (``ingest.store.is_store``): what ``write_store`` may replace.

    Raises:
        IngestError: naming ``out``.
    """
    out = Path(out)
    if out.exists() and not (is_store(out) or (out.is_dir() and not any(out.iterdir()))):
        raise IngestError("exists and is not an approxft store: not replacing it", file=str(out))


def _carry_calibration(out: Path, new: Path, fingerprint: str) -> str | None:
    """Copy ``out``'s calibration fits into the store being built at ``new`` where ``out`` held
    the same data (same fingerprint); else return the notice that they are dropped (None where
    there were none). Files are hard-linked where possible: fits are replaced by renames, never
    rewritten in place."""
    fits = out / CALIBRATION_DIR
    names = sorted(p.name for p in fits.iterdir() if not p.name.startswith(".")) if fits.is_dir() else []
    if not names:
        return None
    if _fingerprint_of(out) == fingerprint:
        shutil.copytree(fits, new / CALIBRATION_DIR, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".*"))
        return None
    return (f"{out}: dropped its calibration fits ({', '.join(f'{CALIBRATION_DIR}/{n}' for n in names)}): they "
            "were made on other data than the new store's; rerun approxft calibrate to fit them again")


def _fingerprint_of(path: Path) -> str | None:
    """The fingerprint of the store at ``path``; None where it cannot be read."""
    try:
        return open_store(path).fingerprint
    except (StoreError, OSError, pa.ArrowException):
        return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

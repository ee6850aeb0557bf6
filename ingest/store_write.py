"""Writing a store, sharded or not, or appending shards to one: its tables and ``store.json``
built beside the old store and swapped with it in one step, the old store's calibration fits
carried over where the data are the same."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.atomic import staged_directory
from ingest.errors import IngestError
from ingest.fingerprint import store_fingerprint
from ingest.store import (
    BLEND_CACHE_DIR,
    CALIBRATION_DIR,
    COMPRESSION,
    DOCUMENT,
    POSITIONS_FILE,
    SHARD_KEY,
    SHARDED_VERSION,
    SPLIT,
    STORE_JSON,
    VOCAB_FILE,
    Store,
    StoreError,
    is_store,
    read_table,
    shard_files,
    shard_folder,
)
from ingest.store_open import open_store

__all__ = ["CalibrationDropped", "check_replaceable", "write_sharded_store", "write_store"]


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
    with staged_directory(out) as tmp:
        check_replaceable(out)
        fingerprint = _write_tables(tmp, tables, lambda: store_fingerprint(meta, tables, tables.__getitem__))
        meta = {**meta, "fingerprint": fingerprint}
        (tmp / STORE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        dropped = _carry_calibration(out, tmp, meta["fingerprint"])
    if dropped:
        warnings.warn(dropped, CalibrationDropped, stacklevel=2)
    return out


def write_sharded_store(out: str | Path, *, meta: Mapping[str, Any], vocab: pa.Table,
                        shards: Iterable[Mapping[str, pa.Table]], base: Store | None = None) -> Path:
    """Write a sharded store (``ingest.store``, format ``SHARDED_VERSION``) at ``out``, in one
    step as ``write_store`` does, or grow the store ``base`` (opened from ``out``) by new shards.

    ``meta``: ``store.json``'s fields but ``version``, ``n_positions``, ``shards`` and
    ``fingerprint``, which are made here; its ``sources`` are the new shards' (each shard's entry
    records its own; the store's stay the first collection's). ``vocab``: the vocab table (for an
    append: the base's with new tokens after its own, so its ids stay valid). ``shards``: each shard's tables
    (``ingest.store.shard_files``), taken one at a time, so a generator bounds the memory to one
    shard's. Each shard file carries its shard's fingerprint (``SHARD_KEY``).

    An append links ``base``'s shard files into the new store (an unsharded base's tables are
    written again as its first shard) and keeps its blend caches, whose keys are per shard; its
    calibration fits are dropped with a ``CalibrationDropped`` warning, as for any other data.

    Raises:
        IngestError: ``out`` exists and is not an approxft store (``check_replaceable``).
    """
    out = Path(out)
    shard_meta = {"models": meta["models"], "k": meta["k"], "vocab_size": meta.get("vocab_size")}
    with staged_directory(out) as tmp:
        check_replaceable(out)
        entries = [] if base is None else _base_shards(base, tmp, shard_meta)
        for tables in shards:
            entries.append({**_write_shard(tmp, len(entries), tables, shard_meta), "sources": meta["sources"]})
        _write_table(tmp / VOCAB_FILE, vocab)
        full = {**meta, "version": SHARDED_VERSION, "n_positions": sum(e["n_positions"] for e in entries),
                "sources": meta["sources"] if base is None else base.sources, "shards": entries}
        full["fingerprint"] = store_fingerprint(full, [VOCAB_FILE], lambda _: vocab,
                                                shards=[e["fingerprint"] for e in entries])
        (tmp / STORE_JSON).write_text(json.dumps(full, indent=2) + "\n")
        if base is not None and base.sharded and (out / BLEND_CACHE_DIR).is_dir():
            shutil.copytree(out / BLEND_CACHE_DIR, tmp / BLEND_CACHE_DIR, copy_function=_link_or_copy,
                            ignore=shutil.ignore_patterns(".*"))
        dropped = _carry_calibration(out, tmp, full["fingerprint"])
    if dropped:
        warnings.warn(dropped, CalibrationDropped, stacklevel=2)
    return out


def _write_shard(root: Path, index: int, tables: Mapping[str, pa.Table], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write shard ``index``'s ``tables`` under ``root``, each file carrying the shard's
    fingerprint; its ``store.json`` entry."""
    fingerprint = store_fingerprint(meta, tables, tables.__getitem__)
    folder = root / shard_folder(index)
    folder.mkdir(parents=True)
    _write_tables(folder, {name: table.replace_schema_metadata({SHARD_KEY: fingerprint.encode()})
                           for name, table in tables.items()})
    return {"folder": shard_folder(index), "n_positions": tables[POSITIONS_FILE].num_rows, "fingerprint": fingerprint}


def _base_shards(base: Store, root: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``base``'s shards in the store being built at ``root``: a sharded base's files linked, an
    unsharded base's tables written again as shard 0; their ``store.json`` entries."""
    if not base.sharded:
        names = shard_files(base.models)
        tables = {name: read_table(base.path / name, None) for name in names}
        return [{**_write_shard(root, 0, tables, meta), "sources": base.sources}]
    entries = json.loads((base.path / STORE_JSON).read_text())["shards"]
    for entry in entries:
        shutil.copytree(base.path / entry["folder"], root / entry["folder"], copy_function=_link_or_copy)
    return entries


def _write_tables(folder: Path, tables: Mapping[str, pa.Table],
                  meanwhile: Callable[[], str] | None = None) -> str | None:
    """Write ``tables`` (file name -> table) into ``folder``, several at once: Parquet's encoder
    and zstd release the GIL, and each file's bytes are the same as when written alone. Largest
    first, so that the biggest (the candidates) does not start last. ``meanwhile`` (the
    fingerprint, which hashes the same tables) runs in this thread as they are written; returns
    its result."""
    order = sorted(tables, key=lambda name: tables[name].nbytes, reverse=True)
    with ThreadPoolExecutor(max(1, min(len(order), os.cpu_count() or 1))) as pool:
        written = [pool.submit(_write_table, folder / name, tables[name]) for name in order]
        result = meanwhile() if meanwhile is not None else None
        for future in written:
            future.result()
    return result


def _write_table(path: Path, table: pa.Table) -> None:
    # Dictionary pages pay off only for the few repeated strings; for ids and floats they cost
    # time and size.
    dictionary = [c for c in table.column_names if c in (SPLIT, DOCUMENT)]
    pq.write_table(table, path, compression=COMPRESSION, use_dictionary=dictionary or False)


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

"""Opening a store (``open_store``): ``store.json`` and every table's footer checked, and the
positions' small columns, before anything reads the large ones."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.store import (
    CANDIDATES_FILE,
    N_CANDIDATES,
    POSITION,
    POSITIONS_FILE,
    REQUEST,
    SHARD_KEY,
    SHARDED_VERSION,
    STORE_FORMAT,
    STORE_JSON,
    STORE_VERSION,
    TARGET,
    VOCAB_FILE,
    VOCAB_SCHEMA,
    Shard,
    Store,
    StoreError,
    candidates_schema,
    positions_schema,
    shard_folder,
    topk_file,
    topk_schema,
)
from ingest.table_read import check_range, read_table
from ingest.values import MAX_VOCAB_SIZE, is_integer

__all__ = ["open_store"]


def open_store(path: str | Path) -> Store:
    """Open a store, sharded or not; StoreError (naming the path) if it is missing, corrupt, of
    another version, or inconsistent.

    Checks ``store.json``, every table's footer (schema, row count, and for a shard file the shard
    fingerprint it carries) and the positions' small columns (``_check_positions``). The large
    columns are checked as they load: candidate ranks (``Store.union_columns``), candidate token
    ids and each run's first being its target (``Store.candidates``), top-k ids (``Store.topk``).
    So nothing inconsistent reaches a kernel.
    """
    path = Path(path)
    meta_path = path / STORE_JSON
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: not an approxft store (no {STORE_JSON})") from None
    except (OSError, ValueError) as err:
        raise StoreError(f"{meta_path}: cannot be read ({err})") from None
    fields = _fields_from_meta(path, meta)
    shards = _shards_from_meta(path, meta, fields["n_positions"])
    models, k = fields["models"], fields["k"]
    vocab_rows = _footer(path / VOCAB_FILE, VOCAB_SCHEMA, None, None).num_rows
    last, checked = None, []
    for shard in shards:
        n = shard.stop - shard.start
        fingerprint = shard.fingerprint
        _footer(shard.folder / POSITIONS_FILE, positions_schema(models), n, fingerprint)
        n_candidates = _footer(shard.folder / CANDIDATES_FILE, candidates_schema(models), None, fingerprint).num_rows
        for model in models:
            _footer(shard.folder / topk_file(model), topk_schema(k[model]), n, fingerprint)
        keys = _check_positions(shard.folder, n_candidates=n_candidates, vocab_rows=vocab_rows)
        if keys is not None:
            if last is not None and keys[0][0] <= last[0]:
                raise StoreError(f"{shard.folder / POSITIONS_FILE}: row 0 ({REQUEST} {keys[0][0]}) does not follow the "
                                 f"previous shard's last ({REQUEST} {last[0]}): each shard holds whole requests, "
                                 "later ones than the shard before it")
            last = keys[1]
        checked.append(replace(shard, n_candidates=n_candidates))
    return Store(**fields, vocab_rows=vocab_rows, shards=tuple(checked), sharded=meta["version"] == SHARDED_VERSION)


def _footer(where: Path, schema: pa.Schema, rows: int | None, fingerprint: str | None) -> pq.FileMetaData:
    """The footer of the table at ``where``, checked: its schema, its row count (where ``rows`` is
    given) and, for a shard file (``fingerprint``), the shard fingerprint it carries."""
    try:
        metadata = pq.read_metadata(where)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{where}: cannot be read ({err})") from None
    if not metadata.schema.to_arrow_schema().equals(schema):
        raise StoreError(f"{where}: schema differs from format {STORE_FORMAT} (another model set or k?)")
    if rows is not None and metadata.num_rows != rows:
        raise StoreError(f"{where}: {metadata.num_rows} rows, {STORE_JSON} says {rows}")
    if fingerprint is not None:
        carried = (metadata.metadata or {}).get(SHARD_KEY, b"").decode(errors="replace")
        if carried != fingerprint:
            raise StoreError(f"{where}: not this store's shard: it carries fingerprint {carried[:19] or 'none'}..., "
                             f"{STORE_JSON} lists {fingerprint[:19]}... (a file from another store, or another shard)")
    return metadata


def _check_positions(folder: Path, *, n_candidates: int, vocab_rows: int
                     ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The positions table in ``folder``, checked (one shard's columns in memory at a time):
    every position has at least one candidate (its target), together as many as the candidates
    table's ``n_candidates`` rows; targets are ids below ``vocab_rows``; positions have at least
    one token of context and are ordered by (request, position), each once. A StoreError names
    the column and first row at fault. Returns the first and last (request, position), None for
    an empty table."""
    where = folder / POSITIONS_FILE
    table = read_table(where, [REQUEST, POSITION, TARGET, N_CANDIDATES])
    request, position, target, counts = (table[c].to_numpy() for c in (REQUEST, POSITION, TARGET, N_CANDIDATES))
    check_range(where, N_CANDIDATES, counts, 1, np.iinfo(np.int32).max)
    total = int(counts.sum(dtype=np.int64))
    if total != n_candidates:
        raise StoreError(f"{where}: column {N_CANDIDATES!r} sums to {total}, but {CANDIDATES_FILE} has "
                         f"{n_candidates} rows")
    check_range(where, TARGET, target, 0, vocab_rows)
    check_range(where, POSITION, position, 1, np.iinfo(np.int32).max)
    ordered = (request[1:] > request[:-1]) | ((request[1:] == request[:-1]) & (position[1:] > position[:-1]))
    if not ordered.all():
        i = int(np.flatnonzero(~ordered)[0]) + 1
        raise StoreError(f"{where}: row {i} ({REQUEST} {request[i]}, {POSITION} {position[i]}) does not follow row "
                         f"{i - 1} ({REQUEST} {request[i - 1]}, {POSITION} {position[i - 1]}): positions are ordered "
                         f"by ({REQUEST}, {POSITION}), each once")
    if not request.size:
        return None
    return (int(request[0]), int(position[0])), (int(request[-1]), int(position[-1]))


def _shards_from_meta(path: Path, meta: dict[str, Any], n_positions: int) -> list[Shard]:
    """The shards ``store.json`` lists (validated), or the root's tables for an unsharded store."""
    if meta["version"] == STORE_VERSION:
        return [Shard(folder=path, start=0, stop=n_positions, fingerprint=None)]
    where = path / STORE_JSON
    entries = meta.get("shards")
    if not isinstance(entries, list) or not entries:
        raise StoreError(f"{where}: field 'shards' must list the store's shards")
    shards, start = [], 0
    for index, entry in enumerate(entries):
        valid = (isinstance(entry, dict) and entry.get("folder") == shard_folder(index)
                 and is_integer(entry.get("n_positions")) and entry["n_positions"] >= 0
                 and isinstance(entry.get("fingerprint"), str))
        if not valid:
            raise StoreError(f"{where}: field 'shards' item {index} is not {{folder: {shard_folder(index)!r}, "
                             "n_positions, fingerprint, sources}")
        stop = start + entry["n_positions"]
        shards.append(Shard(folder=path / entry["folder"], start=start, stop=stop, fingerprint=entry["fingerprint"]))
        start = stop
    if start != n_positions:
        raise StoreError(f"{where}: its shards hold {start} positions, field 'n_positions' says {n_positions}")
    return shards


def _fields_from_meta(path: Path, meta: Any) -> dict[str, Any]:
    """The ``Store`` fields ``store.json`` gives, validated."""
    where = path / STORE_JSON
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise StoreError(f"{where}: not an approxft store (format is not {STORE_FORMAT!r})")
    if meta.get("version") not in (STORE_VERSION, SHARDED_VERSION):
        raise StoreError(f"{where}: version {meta.get('version')!r}; this reader knows versions {STORE_VERSION} "
                         f"and {SHARDED_VERSION} (sharded)")
    models, k = meta.get("models"), meta.get("k")
    valid = (
        isinstance(models, list)
        and models
        and all(isinstance(m, str) for m in models)
        and len(set(models)) == len(models)
        and isinstance(k, dict)
        and set(k) == set(models)
        and all(isinstance(v, int) and v >= 1 for v in k.values())
        and all(isinstance(meta.get(n), int) for n in ("n_positions", "n_requests"))
        and isinstance(meta.get("sources"), dict)
        and (meta.get("vocab_size") is None or (is_integer(meta["vocab_size"]) and 1 <= meta["vocab_size"] <= MAX_VOCAB_SIZE))
        and isinstance(quirks := meta.get("quirks", {}), dict)
        and all(isinstance(c, dict) and all(isinstance(n, int) for n in c.values()) for c in quirks.values())
        and (meta.get("fingerprint") is None or isinstance(meta["fingerprint"], str))
        and (meta["version"] == STORE_VERSION or isinstance(meta.get("fingerprint"), str))
    )
    if not valid:
        raise StoreError(f"{where}: malformed (models, k, n_positions, n_requests, sources, vocab_size, quirks or "
                         "fingerprint)")
    return {
        "path": path,
        "models": list(models),
        "k": {m: k[m] for m in models},
        "n_positions": meta["n_positions"],
        "n_requests": meta["n_requests"],
        "sources": dict(meta["sources"]),
        "vocab_size": meta.get("vocab_size"),
        "quirks": {m: dict(c) for m, c in meta.get("quirks", {}).items()},
        "recorded_fingerprint": meta.get("fingerprint"),
    }

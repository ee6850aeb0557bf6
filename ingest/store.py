"""The columnar store: schema (every file and column name lives here) and reader (writing:
``ingest.store_write``).

A store is a directory: ``store.json`` plus Parquet (zstd) tables ``positions``, ``topk_<model>``
(row-aligned with positions), ``candidates`` (the union CSR) and ``vocab``; ``store.json`` records
the tables' fingerprint (``ingest.fingerprint``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.fingerprint import store_fingerprint
from ingest.values import MAX_VOCAB_SIZE, is_integer

STORE_FORMAT = "approxft-store"
STORE_VERSION = 1
STORE_JSON = "store.json"
CALIBRATION_DIR = "calibration"
"""The folder of a store where ``approxft calibrate`` keeps its fits and full samples."""
BLEND_CACHE_DIR = "blend-cache"
"""The folder of a store where the engine caches blends' filled candidate matrices
(``engine.matrix_cache``); a re-ingest does not carry it over."""
POSITIONS_FILE = "positions.parquet"
CANDIDATES_FILE = "candidates.parquet"
VOCAB_FILE = "vocab.parquet"
COMPRESSION = "zstd"

# positions.parquet
REQUEST = "request"
POSITION = "position"
SPLIT = "split"
DOCUMENT = "document"
TARGET = "target"
N_CANDIDATES = "n_candidates"
# topk_<model>.parquet
TOPK_IDS = "ids"
TOPK_LP = "lp"
# candidates.parquet
TOKEN = "token"
# vocab.parquet
VOCAB_ID = "id"
VOCAB_TOKEN = "token"
VOCAB_BYTES = "bytes"


def lp_column(model: str) -> str:
    """positions: the model's exact target log-prob; candidates: its log-prob of the candidate."""
    return f"lp_{model}"


def rank_column(model: str) -> str:
    """candidates: the candidate's 0-based rank in the model's top-k, -1 when not in it."""
    return f"rank_{model}"


def topk_file(model: str) -> str:
    """The model's top-k table; the name is quoted so that e.g. ``org/model`` stays one file."""
    return f"topk_{quote(model, safe='')}.parquet"


def positions_schema(models: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field(REQUEST, pa.int32(), nullable=False),
            pa.field(POSITION, pa.int32(), nullable=False),
            pa.field(SPLIT, pa.string(), nullable=False),
            pa.field(DOCUMENT, pa.string(), nullable=False),
            pa.field(TARGET, pa.int32(), nullable=False),
            pa.field(N_CANDIDATES, pa.int32(), nullable=False),
        ]
        + [pa.field(lp_column(m), pa.float32()) for m in models]
    )


def topk_schema(k: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field(TOPK_IDS, pa.list_(pa.int32(), k), nullable=False),
            pa.field(TOPK_LP, pa.list_(pa.float32(), k), nullable=False),
        ]
    )


def candidates_schema(models: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [pa.field(TOKEN, pa.int32(), nullable=False)]
        + [pa.field(lp_column(m), pa.float32()) for m in models]
        + [pa.field(rank_column(m), pa.int16(), nullable=False) for m in models]
    )


VOCAB_SCHEMA = pa.schema(
    [
        pa.field(VOCAB_ID, pa.int32(), nullable=False),
        pa.field(VOCAB_TOKEN, pa.string(), nullable=False),
        pa.field(VOCAB_BYTES, pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Candidates:
    """The union candidate layout for n positions, M models, C candidates; natural-log values.

    Run i is ``offsets[i]:offsets[i+1]``: the target first, then the union of the models' top-k
    ids in first-seen order (models in store order, each in rank order), every id once.
    """

    offsets: np.ndarray
    """uint64 (n+1,)."""
    token: np.ndarray
    """int32 (C,) vocabulary ids."""
    lp: np.ndarray
    """float32 (M, C), C-contiguous rows: the target row holds the exact target log-prob, other
    rows the model's top-k value; NaN = unknown (not in the model's top-k, or not observed)."""
    rank: np.ndarray
    """int16 (M, C): 0-based rank in the model's top-k, -1 when not in it."""


class StoreError(ValueError):
    """A store is missing, incomplete or not one this reader understands; names the path."""


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is an approxft store, and only that (what ingest may replace): its
    ``store.json`` names the format, and it holds nothing but a store's own files (the tables,
    ``store.json``, ``CALIBRATION_DIR``, ``BLEND_CACHE_DIR``)."""
    path = Path(path)
    try:
        meta = json.loads((path / STORE_JSON).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        return False
    return all(p.name == STORE_JSON or (p.suffix == ".parquet" and p.is_file())
               or (p.name in (CALIBRATION_DIR, BLEND_CACHE_DIR) and p.is_dir()) for p in path.iterdir())


@dataclass(frozen=True)
class Store:
    """A store opened for reading. Tables load on first use; arrays are natural-log float32."""

    path: Path
    models: list[str]
    k: dict[str, int]
    n_positions: int
    n_requests: int
    sources: dict[str, str]
    vocab_rows: int
    """Rows of the vocab table: every token id in the store is below it."""
    _offsets: np.ndarray = field(repr=False, compare=False)
    """uint64 (n+1,): the candidate runs, read and checked when the store was opened."""
    vocab_size: int | None = None
    """The tokenizer's vocabulary size, when ingest was told it."""
    quirks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per model, what ingest tolerated in its responses, counted by ``ingest.quirks.QUIRKS`` name."""
    recorded_fingerprint: str | None = None
    """The fingerprint ingest recorded in ``store.json`` (None in a store written before that)."""

    @cached_property
    def fingerprint(self) -> str:
        """``sha256:<hex>``, a hash of the store's content (``ingest.fingerprint``): the one ingest
        recorded, else computed from the tables (for a store written before fingerprints were
        recorded: it reads every table once)."""
        if self.recorded_fingerprint is not None:
            return self.recorded_fingerprint
        meta = {"models": self.models, "k": self.k, "n_requests": self.n_requests, "vocab_size": self.vocab_size}
        names = [POSITIONS_FILE, CANDIDATES_FILE, VOCAB_FILE, *(topk_file(m) for m in self.models)]
        return store_fingerprint(meta, names, lambda name: self._table(name, None))

    @cached_property
    def positions(self) -> pl.DataFrame:
        """One row per scored position, ordered by (request, position); see ``positions_schema``."""
        return self._polars(POSITIONS_FILE)

    @cached_property
    def vocab(self) -> pl.DataFrame:
        """``id``, ``token`` (as the API wrote it), ``bytes`` (raw)."""
        return self._polars(VOCAB_FILE)

    def offsets(self) -> np.ndarray:
        """uint64 (n+1,): the candidate runs, ``concat([0], cumsum(n_candidates))``."""
        return self._offsets.copy()

    def target_lp(self, model: str) -> np.ndarray:
        """float32 (n,): the model's exact log-prob of each position's target; NaN = not observed."""
        self._check_model(model)
        return _float32(self._table(POSITIONS_FILE, [lp_column(model)])[lp_column(model)])

    def union_columns(self, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The candidate columns of ``models`` only, in that order, model-major.

        Returns lp float32 (M, C), C-contiguous, NaN where the value is unknown (null in the
        file), and rank int16 (M, C). Runs as given by ``offsets()``.

        Read one column at a time, each copied straight into its row, and Arrow's freed memory
        handed back afterwards: the memory this needs beyond its result is one column's, not the
        whole table's twice over.
        """
        models = list(models)
        for model in models:
            self._check_model(model)
        n_candidates = int(self._offsets[-1])  # the candidates table's rows (open_store checks)
        lp = np.empty((len(models), n_candidates), dtype=np.float32)
        rank = np.empty((len(models), n_candidates), dtype=np.int16)
        for i, model in enumerate(models):
            lp[i] = _nan_filled(self._table(CANDIDATES_FILE, [lp_column(model)])[lp_column(model)])
            rank[i] = self._table(CANDIDATES_FILE, [rank_column(model)])[rank_column(model)].to_numpy()
            _check_range(self.path / CANDIDATES_FILE, rank_column(model), rank[i], -1, self.k[model])
        pa.default_memory_pool().release_unused()
        return lp, rank

    def candidates(self, models: Sequence[str] | None = None) -> Candidates:
        """The whole layout (token ids too) for ``models`` (default: all, in store order)."""
        models = list(self.models if models is None else models)
        lp, rank = self.union_columns(models)
        offsets = self.offsets()
        token = _writable(self._table(CANDIDATES_FILE, [TOKEN])[TOKEN].to_numpy())
        _check_range(self.path / CANDIDATES_FILE, TOKEN, token, 0, self.vocab_rows)
        target = self._table(POSITIONS_FILE, [TARGET])[TARGET].to_numpy()
        first = token[offsets[:-1].astype(np.int64)]
        if (first != target).any():
            i = int(np.flatnonzero(first != target)[0])
            raise StoreError(f"{self.path / CANDIDATES_FILE}: column {TOKEN!r} row {int(offsets[i])} is {first[i]}, "
                             f"but the run of position row {i} starts with its target, {target[i]}")
        return Candidates(offsets=offsets, token=token, lp=lp, rank=rank)

    def topk(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """ids int32 (n, k) and lp float32 (n, k), by lp descending; empty slots -1 / NaN."""
        self._check_model(model)
        table = self._table(topk_file(model), None)
        k = self.k[model]
        ids = _writable(table[TOPK_IDS].combine_chunks().flatten().to_numpy()).reshape(-1, k)
        lp = _writable(table[TOPK_LP].combine_chunks().flatten().to_numpy()).reshape(-1, k)
        _check_range(self.path / topk_file(model), TOPK_IDS, ids.ravel(), -1, self.vocab_rows)
        return ids, lp

    def _check_model(self, model: str) -> None:
        if model not in self.k:
            raise StoreError(f"{self.path}: no model {model!r} (models: {', '.join(self.models)})")

    def _table(self, name: str, columns: list[str] | None) -> pa.Table:
        return _read_table(self.path / name, columns)

    def _polars(self, name: str) -> pl.DataFrame:
        try:
            return pl.read_parquet(self.path / name)
        except (OSError, pl.exceptions.PolarsError) as err:
            raise StoreError(f"{self.path / name}: cannot be read ({err})") from None


def _read_table(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, memory_map=True)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path}: cannot be read ({err})") from None


def _check_range(path: Path, column: str, values: np.ndarray, low: int, high: int) -> None:
    """StoreError naming the file, column and first row of ``values`` outside ``[low, high)``."""
    bad = (values < low) | (values >= high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StoreError(f"{path}: column {column!r} row {i} is {values[i]}, outside {low}..{high - 1}")


def _float32(column: pa.ChunkedArray) -> np.ndarray:
    """float32 numpy array of a nullable float column, null -> NaN."""
    return _writable(_nan_filled(column))


def _nan_filled(column: pa.ChunkedArray) -> np.ndarray:
    """A nullable float column as numpy, null -> NaN: possibly a read-only view of Arrow memory."""
    return pc.fill_null(column, pa.scalar(np.nan, pa.float32())).to_numpy()


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied if it is a read-only view of Arrow memory: callers own what they get."""
    return array if array.flags.writeable else array.copy()


def open_store(path: str | Path) -> Store:
    """Open a store; StoreError (naming the path) if it is missing, corrupt, of another version,
    or inconsistent.

    Checks ``store.json``, every table's footer (schema and row count) and the positions' small
    columns (``_check_positions``). The large columns are checked as they load: candidate ranks
    (``Store.union_columns``), candidate token ids and each run's first being its target
    (``Store.candidates``), top-k ids (``Store.topk``). So nothing inconsistent reaches a kernel.
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
    models, k = fields["models"], fields["k"]
    expected = {
        POSITIONS_FILE: (positions_schema(models), fields["n_positions"]),
        CANDIDATES_FILE: (candidates_schema(models), None),
        VOCAB_FILE: (VOCAB_SCHEMA, None),
    }
    for model in models:
        expected[topk_file(model)] = (topk_schema(k[model]), fields["n_positions"])
    rows = {}
    for name, (schema, n) in expected.items():
        try:
            metadata = pq.read_metadata(path / name)
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"{path / name}: cannot be read ({err})") from None
        if not metadata.schema.to_arrow_schema().equals(schema):
            raise StoreError(f"{path / name}: schema differs from format {STORE_FORMAT} version {STORE_VERSION}")
        if n is not None and metadata.num_rows != n:
            raise StoreError(f"{path / name}: {metadata.num_rows} rows, {STORE_JSON} says {n}")
        rows[name] = metadata.num_rows
    offsets = _check_positions(path, n_candidates=rows[CANDIDATES_FILE], vocab_rows=rows[VOCAB_FILE])
    return Store(**fields, vocab_rows=rows[VOCAB_FILE], _offsets=offsets)


def _check_positions(path: Path, *, n_candidates: int, vocab_rows: int) -> np.ndarray:
    """The candidate runs' offsets (uint64 (n+1,)) from the positions table at ``path``, checked:
    every position has at least one candidate (its target), together as many as the candidates
    table's ``n_candidates`` rows; targets are ids below ``vocab_rows``; positions have at least
    one token of context and are ordered by (request, position), each once. A StoreError names
    the column and first row at fault."""
    where = path / POSITIONS_FILE
    table = _read_table(where, [REQUEST, POSITION, TARGET, N_CANDIDATES])
    request, position, target, counts = (table[c].to_numpy() for c in (REQUEST, POSITION, TARGET, N_CANDIDATES))
    _check_range(where, N_CANDIDATES, counts, 1, np.iinfo(np.int32).max)
    offsets = np.zeros(counts.size + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    if int(offsets[-1]) != n_candidates:
        raise StoreError(f"{where}: column {N_CANDIDATES!r} sums to {int(offsets[-1])}, but {CANDIDATES_FILE} has "
                         f"{n_candidates} rows")
    _check_range(where, TARGET, target, 0, vocab_rows)
    _check_range(where, POSITION, position, 1, np.iinfo(np.int32).max)
    ordered = (request[1:] > request[:-1]) | ((request[1:] == request[:-1]) & (position[1:] > position[:-1]))
    if not ordered.all():
        i = int(np.flatnonzero(~ordered)[0]) + 1
        raise StoreError(f"{where}: row {i} ({REQUEST} {request[i]}, {POSITION} {position[i]}) does not follow row "
                         f"{i - 1} ({REQUEST} {request[i - 1]}, {POSITION} {position[i - 1]}): positions are ordered "
                         f"by ({REQUEST}, {POSITION}), each once")
    return offsets


def _fields_from_meta(path: Path, meta: Any) -> dict[str, Any]:
    """The ``Store`` fields ``store.json`` gives, validated."""
    where = path / STORE_JSON
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise StoreError(f"{where}: not an approxft store (format is not {STORE_FORMAT!r})")
    if meta.get("version") != STORE_VERSION:
        raise StoreError(f"{where}: version {meta.get('version')!r}; this reader knows version {STORE_VERSION}")
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

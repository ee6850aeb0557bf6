"""The columnar store: schema (every file and column name lives here) and reader (opening and
checking: ``ingest.store_open``; writing: ``ingest.store_write``).

A store is a directory: ``store.json`` plus Parquet (zstd) tables ``positions``, ``topk_<model>``
(row-aligned with positions), ``candidates`` (the union CSR) and ``vocab``; ``store.json`` records
the tables' fingerprint (``ingest.fingerprint``).

A *sharded* store (format version 2, ``approxft ingest --shard-positions N``, or grown by
``--append``) keeps ``vocab`` at its root and the other tables once per shard, in
``shards/<NNNNN>/``: each shard holds whole requests, consecutive in the store's order, with its
own candidate layout. ``store.json`` lists the shards with their sizes and fingerprints, and every
shard file carries its shard's fingerprint (Parquet key-value metadata ``SHARD_KEY``), so a file
from another store or another shard is refused when the store is opened. Read as a whole, a
sharded store gives the very arrays an unsharded one of the same data gives; ``Store.shard(i)``
reads one shard alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

import numpy as np
import polars as pl
import pyarrow as pa

from ingest.errors import StoreError
from ingest.fingerprint import store_fingerprint
from ingest.table_read import (
    check_range,
    float32_column,
    nan_filled,
    read_rows,
    read_table,
)

STORE_FORMAT = "approxft-store"
STORE_VERSION = 1
SHARDED_VERSION = 2
"""The format version of a sharded store (an unsharded one stays at ``STORE_VERSION``)."""
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
SHARDS_DIR = "shards"
"""The folder of a sharded store that holds one folder per shard (``shard_folder``)."""
SHARD_KEY = b"approxft.shard"
"""Parquet key-value metadata of every shard file: its shard's fingerprint."""

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


def shard_folder(index: int) -> str:
    """The folder of shard ``index`` (0-based), relative to the store."""
    return f"{SHARDS_DIR}/{index:05d}"


def shard_files(models: Sequence[str]) -> list[str]:
    """The tables every shard holds (``vocab`` is the store's, at its root)."""
    return [POSITIONS_FILE, CANDIDATES_FILE, *(topk_file(m) for m in models)]


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


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is an approxft store, and only that (what ingest may replace): its
    ``store.json`` names the format, and it holds nothing but a store's own files (the tables,
    ``store.json``, ``CALIBRATION_DIR``, ``BLEND_CACHE_DIR``, ``SHARDS_DIR``)."""
    path = Path(path)
    try:
        meta = json.loads((path / STORE_JSON).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        return False
    return all(p.name == STORE_JSON or (p.suffix == ".parquet" and p.is_file())
               or (p.name in (CALIBRATION_DIR, BLEND_CACHE_DIR, SHARDS_DIR) and p.is_dir()) for p in path.iterdir())


@dataclass(frozen=True)
class Shard:
    """A consecutive run of a store's positions with its own tables and candidate layout."""

    folder: Path
    """Where its ``shard_files`` are: the store's root for an unsharded store."""
    start: int
    """Its first position row in the store."""
    stop: int
    """One past its last position row."""
    fingerprint: str | None
    """Its content hash (``ingest.fingerprint``), as ``store.json`` records it; None for the root
    tables of an unsharded store (whose fingerprint is the store's)."""
    n_candidates: int = 0
    """Rows of its candidates table (``open_store`` checks that its positions' runs add up to them)."""
    offset: int | None = None
    """None: the tables in ``folder`` are its own. A row: it is a piece of them (``Store.piece``),
    their positions from that row on, and their candidates from ``candidate_offset`` on."""
    candidate_offset: int = 0

    def read(self, name: str, columns: list[str] | None) -> pa.Table:
        """Its rows of the table ``name`` in ``folder`` (``columns`` only, where given)."""
        if self.offset is None:
            return read_table(self.folder / name, columns)
        lo, n = (self.candidate_offset, self.n_candidates) if name == CANDIDATES_FILE else (self.offset, self.stop - self.start)
        return read_rows(self.folder / name, columns, lo, lo + n)


@dataclass(frozen=True)
class Store:
    """A store opened for reading (``ingest.store_open.open_store``). Tables load on first use,
    one shard at a time; arrays are natural-log float32. Opening it keeps nothing per position:
    ``Store.shard(i)`` reads one shard alone, so a store larger than memory is read shard by shard
    (``engine.streaming``)."""

    path: Path
    models: list[str]
    k: dict[str, int]
    n_positions: int
    n_requests: int
    sources: dict[str, str]
    vocab_rows: int
    """Rows of the vocab table: every token id in the store is below it."""
    shards: tuple[Shard, ...] = ()
    """The parts its position tables are kept in, in order: one (the root) for an unsharded store."""
    sharded: bool = False
    """Whether it is a sharded store (format ``SHARDED_VERSION``), even of one shard."""
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

    def shard(self, index: int) -> "Store":
        """Shard ``index`` read alone, as a store of its positions (rows renumbered from 0), with
        the store's path, models, vocabulary and metadata (``n_requests`` is the store's), and
        the shard's fingerprint as its own (an unsharded store's one shard: the store's)."""
        part = self.shards[index]
        return replace(self, n_positions=part.stop - part.start,
                       shards=(replace(part, start=0, stop=part.stop - part.start),),
                       recorded_fingerprint=part.fingerprint or self.recorded_fingerprint)

    def piece(self, lo: int, hi: int) -> "Store":
        """Rows ``lo:hi`` of a store of one shard (an unsharded store, or ``Store.shard(i)``) read
        alone, as a store of those positions (rows renumbered from 0) whose fingerprint is the
        store's with the range: what a large unsharded store's blend is built from a piece at a
        time (``engine.matrix_cache``), reading only those rows' Parquet row groups."""
        if len(self.shards) != 1:
            raise ValueError(f"{self.path}: a piece is cut from a store of one shard, not {len(self.shards)}")
        whole, offsets = self.shards[0], self._offsets
        part = replace(whole, start=0, stop=hi - lo, offset=(whole.offset or 0) + lo,
                       candidate_offset=whole.candidate_offset + int(offsets[lo]),
                       n_candidates=int(offsets[hi] - offsets[lo]))
        return replace(self, n_positions=hi - lo, shards=(part,), recorded_fingerprint=f"{self.fingerprint}#rows {lo}:{hi}")

    @cached_property
    def _offsets(self) -> np.ndarray:
        """uint64 (n+1,): the candidate runs, from each shard's ``n_candidates`` column (read on
        first use; ``open_store`` checked them)."""
        offsets = np.zeros(self.n_positions + 1, dtype=np.uint64)
        at = 0
        for shard in self.shards:
            counts = shard.read(POSITIONS_FILE, [N_CANDIDATES])[N_CANDIDATES].to_numpy()
            np.cumsum(counts, out=offsets[shard.start + 1 : shard.stop + 1])
            offsets[shard.start + 1 : shard.stop + 1] += np.uint64(at)
            at += shard.n_candidates
        return offsets

    @property
    def _candidate_starts(self) -> np.ndarray:
        """int64 (S+1,): the candidates tables' first rows in the store's runs, shard by shard."""
        return np.concatenate([[0], np.cumsum([s.n_candidates for s in self.shards], dtype=np.int64)])

    @cached_property
    def positions(self) -> pl.DataFrame:
        """One row per scored position, ordered by (request, position); see ``positions_schema``."""
        try:
            return pl.concat([pl.from_arrow(s.read(POSITIONS_FILE, None)) for s in self.shards])
        except (OSError, pl.exceptions.PolarsError) as err:
            raise StoreError(f"{self.path}: its {POSITIONS_FILE} tables cannot be read ({err})") from None

    def position_columns(self, columns: list[str]) -> pl.DataFrame:
        """Some columns of the positions table, every shard's rows in order (read again on each call)."""
        try:
            return pl.from_arrow(self._table(POSITIONS_FILE, columns))
        except pl.exceptions.PolarsError as err:
            raise StoreError(f"{self.path}: its {POSITIONS_FILE} tables cannot be read ({err})") from None

    @cached_property
    def vocab(self) -> pl.DataFrame:
        """``id``, ``token`` (as the API wrote it), ``bytes`` (raw)."""
        try:
            return pl.read_parquet(self.path / VOCAB_FILE)
        except (OSError, pl.exceptions.PolarsError) as err:
            raise StoreError(f"{self.path / VOCAB_FILE}: cannot be read ({err})") from None

    def offsets(self) -> np.ndarray:
        """uint64 (n+1,): the candidate runs, ``concat([0], cumsum(n_candidates))``."""
        return self._offsets.copy()

    def target_lp(self, model: str) -> np.ndarray:
        """float32 (n,): the model's exact log-prob of each position's target; NaN = not observed."""
        self._check_model(model)
        return float32_column(self._table(POSITIONS_FILE, [lp_column(model)])[lp_column(model)])

    def union_columns(self, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The candidate columns of ``models`` only, in that order, model-major.

        Returns lp float32 (M, C), C-contiguous, NaN where the value is unknown (null in the
        file), and rank int16 (M, C). Runs as given by ``offsets()``.

        Read one column of one shard at a time, each copied straight into its place, and Arrow's
        freed memory handed back afterwards: the memory this needs beyond its result is one
        shard's column, not the whole table's twice over.
        """
        models = list(models)
        for model in models:
            self._check_model(model)
        starts = self._candidate_starts
        lp = np.empty((len(models), int(starts[-1])), dtype=np.float32)
        rank = np.empty((len(models), int(starts[-1])), dtype=np.int16)
        for shard, lo, hi in zip(self.shards, starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            where = shard.folder / CANDIDATES_FILE
            for i, model in enumerate(models):
                lp[i, lo:hi] = nan_filled(shard.read(CANDIDATES_FILE, [lp_column(model)])[lp_column(model)])
                rank[i, lo:hi] = shard.read(CANDIDATES_FILE, [rank_column(model)])[rank_column(model)].to_numpy()
                check_range(where, rank_column(model), rank[i, lo:hi], -1, self.k[model])
        pa.default_memory_pool().release_unused()
        return lp, rank

    def candidates(self, models: Sequence[str] | None = None) -> Candidates:
        """The whole layout (token ids too) for ``models`` (default: all, in store order)."""
        models = list(self.models if models is None else models)
        lp, rank = self.union_columns(models)
        offsets = self.offsets()
        token = np.empty(int(offsets[-1]), dtype=np.int32)
        for shard in self.shards:
            lo, hi = int(offsets[shard.start]), int(offsets[shard.stop])
            where = shard.folder / CANDIDATES_FILE
            token[lo:hi] = shard.read(CANDIDATES_FILE, [TOKEN])[TOKEN].to_numpy()
            check_range(where, TOKEN, token[lo:hi], 0, self.vocab_rows)
            target = shard.read(POSITIONS_FILE, [TARGET])[TARGET].to_numpy()
            first = token[offsets[shard.start : shard.stop].astype(np.int64)]
            if (first != target).any():
                i = int(np.flatnonzero(first != target)[0])
                raise StoreError(f"{where}: column {TOKEN!r} row {int(offsets[shard.start + i]) - lo} is {first[i]}, "
                                 f"but the run of position row {i} starts with its target, {target[i]}")
        return Candidates(offsets=offsets, token=token, lp=lp, rank=rank)

    def topk(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """ids int32 (n, k) and lp float32 (n, k), by lp descending; empty slots -1 / NaN."""
        self._check_model(model)
        k = self.k[model]
        ids = np.empty((self.n_positions, k), dtype=np.int32)
        lp = np.empty((self.n_positions, k), dtype=np.float32)
        for shard in self.shards:
            where = shard.folder / topk_file(model)
            table = shard.read(topk_file(model), None)
            ids[shard.start : shard.stop] = table[TOPK_IDS].combine_chunks().flatten().to_numpy().reshape(-1, k)
            lp[shard.start : shard.stop] = table[TOPK_LP].combine_chunks().flatten().to_numpy().reshape(-1, k)
            check_range(where, TOPK_IDS, ids[shard.start : shard.stop].ravel(), -1, self.vocab_rows)
        return ids, lp

    def _check_model(self, model: str) -> None:
        if model not in self.k:
            raise StoreError(f"{self.path}: no model {model!r} (models: {', '.join(self.models)})")

    def _table(self, name: str, columns: list[str] | None) -> pa.Table:
        """Table ``name`` (``columns`` only, where given): the root's vocab, or a per-position
        table with every shard's rows, in order."""
        if name == VOCAB_FILE:
            return read_table(self.path / name, columns)
        tables = [s.read(name, columns) for s in self.shards]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

"""What evaluation keeps of a store's positions: the store-wide ``Layout`` (split names, context
buckets, documents: nothing per position) and the per-position arrays of a ``PositionsPart``, a run
of consecutive store rows: the whole store in memory, or one shard at a time for a store streamed
shard by shard (``engine.streaming``), whose memory then does not grow with the store.

A figure adds each position's NLL into cells; a ``Grouping`` names which (``CELLS``: (split,
context bucket); ``DOCUMENTS``: (document, context bucket), the bootstrap's; ``tuning``: one
split's positions with enough context; ``rows_of``: given store rows) and gives each part's int32
cell per position, -1 for positions left out. Cells are numbered by the layout alone, so sums over
parts add up to the sums over the whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import polars as pl

from ingest.store import DOCUMENT, POSITION, SPLIT, TARGET, VOCAB_BYTES, Store

from .report import BY_CONTEXT_SCHEMA, Figures, bucket_labels, context_buckets

__all__ = ["CELLS", "DOCUMENTS", "Grouping", "Layout", "PositionsPart", "count", "rows_of", "token_bytes", "tuning"]

LAYOUT_COLUMNS = [SPLIT, POSITION, DOCUMENT]
"""The positions table's columns the layout is made from."""


@dataclass(frozen=True)
class Layout:
    """The store-wide numbering of cells: one entry per split, bucket and document, none per position.

    Attributes:
        splits: split names, in order of first appearance in the store.
        n_buckets: context-length buckets (``engine.report.context_buckets``) up to the longest context.
        documents: polars DataFrame ``split``, ``document``, one row per document, sorted; a
            document's code is its row.
        document_split: int32 ``(D,)``, each document's split code.
    """

    splits: list[str]
    n_buckets: int
    documents: pl.DataFrame
    document_split: np.ndarray

    @classmethod
    def of(cls, frames: Iterable[pl.DataFrame]) -> Layout:
        """The layout of positions tables' rows (``LAYOUT_COLUMNS`` at least), in store order:
        the whole table, or each shard's in turn (one in memory at a time)."""
        splits: list[str] = []
        longest, keys = 0, []
        for frame in frames:
            splits += [s for s in frame.get_column(SPLIT).unique(maintain_order=True).to_list() if s not in splits]
            longest = max(longest, int(frame.get_column(POSITION).max() or 0))
            keys.append(frame.select(SPLIT, pl.col(DOCUMENT).cast(pl.String)).unique())
        documents = pl.concat(keys).unique().sort(SPLIT, DOCUMENT) if keys else pl.DataFrame(
            schema={SPLIT: pl.String, DOCUMENT: pl.String})
        codes = {s: i for i, s in enumerate(splits)}
        split = documents.get_column(SPLIT).replace_strict(codes, return_dtype=pl.Int32).to_numpy()
        n_buckets = int(context_buckets(np.array([longest]))[0]) + 1 if longest else 0
        return cls(splits=splits, n_buckets=n_buckets, documents=documents, document_split=split)

    @property
    def n_groups(self) -> int:
        """(split, context bucket) cells."""
        return len(self.splits) * self.n_buckets

    @property
    def n_document_cells(self) -> int:
        """(document, context bucket) cells."""
        return self.documents.height * self.n_buckets

    def figures(self, nll_sums: np.ndarray, positions: np.ndarray, n_bytes: np.ndarray
                ) -> tuple[dict[str, Figures], pl.DataFrame]:
        """Figures per split and per (split, context bucket) from per-cell sums.

        Args:
            nll_sums: float64 ``(n_groups,)``, total NLL per (split, bucket) cell.
            positions, n_bytes: int64 ``(n_groups,)``, the positions counted in each cell and
                their targets' UTF-8 bytes.

        Returns:
            ``({split: Figures}, by_context)`` where ``by_context`` has one row per non-empty cell:
            ``split``, ``context_lo``, ``context_hi`` (inclusive), ``positions``, ``perplexity``,
            ``bits_per_byte``.
        """
        cells = [Figures(int(c), float(s), int(b)) for c, s, b in zip(positions, nll_sums, n_bytes, strict=True)]
        n_b = self.n_buckets
        splits: dict[str, Figures] = {}
        rows = []
        for s, name in enumerate(self.splits):
            mine = cells[s * n_b : (s + 1) * n_b]
            splits[name] = Figures(
                sum(f.positions for f in mine), sum(f.nll_sum for f in mine), sum(f.n_bytes for f in mine)
            )
            rows += [
                (name, lo, hi, f.positions, f.perplexity, f.bits_per_byte, None, None, None, None)
                for (lo, hi), f in zip(bucket_labels(n_b), mine, strict=True)
                if f.positions
            ]
        return splits, pl.DataFrame(rows, schema=BY_CONTEXT_SCHEMA, orient="row")


class PositionsPart:
    """The per-position arrays of a run of consecutive store rows, numbered by a store-wide layout.

    Attributes:
        store: the part's store (``Store.shard(i)``, or the whole store).
        rows: the store rows it covers.
        layout: the store's layout.
        split_code: int32 ``(n,)``, index into ``layout.splits``.
        context: int32 ``(n,)``, tokens of context (>= 1).
        target_bytes: int64 ``(n,)``, UTF-8 bytes of each target token.
    """

    def __init__(self, store: Store, rows: slice, layout: Layout, token_bytes: np.ndarray):
        """``token_bytes``: int64 ``(vocab rows,)``, each token id's UTF-8 bytes."""
        pos = store.position_columns([SPLIT, POSITION, TARGET])
        self.store, self.rows, self.layout = store, rows, layout
        codes = {s: i for i, s in enumerate(layout.splits)}
        self.split_code = pos.get_column(SPLIT).replace_strict(codes, return_dtype=pl.Int32).to_numpy()
        self.context = pos.get_column(POSITION).to_numpy().astype(np.int32)
        self.target_bytes = token_bytes[pos.get_column(TARGET).to_numpy()]
        self._groups: dict[tuple, np.ndarray] = {}

    @property
    def n_positions(self) -> int:
        return int(self.context.size)

    @cached_property
    def bucket(self) -> np.ndarray:
        """int32 ``(n,)``: each position's context bucket."""
        return context_buckets(self.context)

    @cached_property
    def group(self) -> np.ndarray:
        """int32 ``(n,)``: each position's (split, context bucket) cell, ``split * n_buckets + bucket``."""
        return (self.split_code * self.layout.n_buckets + self.bucket).astype(np.int32)

    @cached_property
    def document(self) -> np.ndarray:
        """int32 ``(n,)``: each position's document code (its row of ``layout.documents``)."""
        keys = self.store.position_columns([SPLIT, DOCUMENT]).with_columns(pl.col(DOCUMENT).cast(pl.String))
        code = self.layout.documents.with_row_index("code", offset=0)
        joined = keys.join(code, on=[SPLIT, DOCUMENT], how="left", maintain_order="left")
        return joined.get_column("code").to_numpy().astype(np.int32)

    @cached_property
    def document_cells(self) -> np.ndarray:
        """int32 ``(n,)``: each position's (document, context bucket) cell, ``document * n_buckets + bucket``."""
        return (self.document * self.layout.n_buckets + self.bucket).astype(np.int32)

    @classmethod
    def of_shard(cls, store: Store, index: int, layout: Layout, token_bytes: np.ndarray) -> PositionsPart:
        """Shard ``index`` of ``store``'s arrays (``Store.shard``), read from its positions table."""
        shard = store.shards[index]
        return cls(store.shard(index), slice(shard.start, shard.stop), layout, token_bytes)

    def grouped(self, grouping: Grouping) -> np.ndarray:
        """int32 ``(n,)``: ``grouping``'s cell of each position, -1 where it leaves one out (kept)."""
        if grouping.kind == "rows":
            return grouping.of(self)
        if grouping.key not in self._groups:
            self._groups[grouping.key] = grouping.of(self)
        return self._groups[grouping.key]


@dataclass(frozen=True)
class Grouping:
    """Which cells a figure adds positions' NLL into (see the module docstring); ``CELLS``,
    ``DOCUMENTS``, ``tuning(...)`` and ``rows_of(...)`` make them."""

    kind: str
    split: str | None = None
    min_context: int = 1
    rows: np.ndarray | None = field(default=None, compare=False)
    """int64 store rows, for ``rows_of``."""

    @property
    def key(self) -> tuple:
        """What tells groupings apart (``rows_of`` ones by identity)."""
        return (self.kind, self.split, self.min_context, id(self.rows) if self.rows is not None else None)

    def size(self, layout: Layout) -> int:
        """How many cells it numbers."""
        return {"cells": layout.n_groups, "documents": layout.n_document_cells}.get(self.kind, 1)

    def of(self, part: PositionsPart) -> np.ndarray:
        """int32 ``(n,)``: the cell of each of ``part``'s positions, -1 for those left out."""
        if self.kind == "cells":
            return part.group
        if self.kind == "documents":
            return part.document_cells
        if self.kind == "tuning":
            keep = (part.split_code == part.layout.splits.index(self.split)) & (part.context >= self.min_context)
            return np.where(keep, 0, -1).astype(np.int32)
        start = part.rows.start or 0
        mine = self.rows[(self.rows >= start) & (self.rows < start + part.n_positions)] - start
        out = np.full(part.n_positions, -1, dtype=np.int32)
        out[mine] = 0
        return out


CELLS = Grouping("cells")
DOCUMENTS = Grouping("documents")


def token_bytes(store: Store) -> np.ndarray:
    """int64 ``(vocab rows,)``: each token id's UTF-8 bytes (what bits per byte counts)."""
    return store.vocab.get_column(VOCAB_BYTES).bin.size().to_numpy().astype(np.int64)


def count(parts: Iterable[PositionsPart], grouping: Grouping, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``(cells,)`` twice: the positions ``grouping`` counts in each cell and their targets'
    UTF-8 bytes, added up over ``parts``."""
    size = grouping.size(layout)
    positions, n_bytes = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    for part in parts:
        group = part.grouped(grouping)
        kept = group >= 0
        positions += np.bincount(group[kept], minlength=size)
        n_bytes += np.bincount(group[kept], weights=part.target_bytes[kept], minlength=size).astype(np.int64)
    return positions, n_bytes


def tuning(split: str, min_context: int = 1) -> Grouping:
    """The positions tuning reads: ``split``'s with at least ``min_context`` tokens of context (one cell)."""
    return Grouping("tuning", split=split, min_context=min_context)


def rows_of(rows: np.ndarray) -> Grouping:
    """The given store rows (int64), one cell."""
    return Grouping("rows", rows=np.asarray(rows, dtype=np.int64))

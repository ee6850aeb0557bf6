"""Cutting a store's tables into shards of whole requests (``approxft ingest --shard-positions``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa

from ingest.store import (
    CANDIDATES_FILE,
    N_CANDIDATES,
    POSITIONS_FILE,
    REQUEST,
    VOCAB_FILE,
)

__all__ = ["shard_cuts", "split_tables"]


def shard_cuts(request: np.ndarray, limit: int) -> list[int]:
    """Position rows where shards start, then the end: ``[0, ..., n]`` (``[0, 0]``: one empty
    shard, for no positions). Each shard holds whole requests, as many consecutive ones as keep
    it within ``limit`` positions (a longer request gets a shard of its own).

    Args:
        request: int ``(n,)``, each position's request, grouped (non-decreasing runs).
        limit: most positions a shard holds, >= 1.
    """
    ends = [*(np.flatnonzero(request[1:] != request[:-1]) + 1).tolist(), int(request.size)]
    cuts, last = [0], 0  # last: the end of the last request the open shard holds
    for end in ends:
        if end - cuts[-1] > limit and last > cuts[-1]:
            cuts.append(last)
        last = end
    cuts.append(int(request.size))
    return cuts


def split_tables(tables: Mapping[str, pa.Table], limit: int) -> Iterator[dict[str, pa.Table]]:
    """A store's tables (``ingest.build.store_tables``) as shards of at most ``limit`` positions
    of whole requests (``shard_cuts``), each without the vocab; slices, not copies. A store of no
    positions is one empty shard."""
    positions = tables[POSITIONS_FILE]
    offsets = np.zeros(positions.num_rows + 1, dtype=np.int64)
    np.cumsum(positions[N_CANDIDATES].to_numpy(), out=offsets[1:])
    cuts = shard_cuts(positions[REQUEST].to_numpy(), limit)
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        shard = {}
        for name, table in tables.items():
            if name == CANDIDATES_FILE:
                shard[name] = table.slice(offsets[lo], offsets[hi] - offsets[lo])
            elif name != VOCAB_FILE:
                shard[name] = table.slice(lo, hi - lo)
        yield shard

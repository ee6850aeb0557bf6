"""Parallel passes over a matrix's runs that need scratch arrays (an estimator's fill, a mask's
rule): the positions are cut into ``BLOCKS`` consecutive blocks, threads take whole blocks, and
each block allocates its scratch once, sized by the longest run, instead of once per position."""

from __future__ import annotations

import numba as nb
import numpy as np

from ingest.jit import EXACT

__all__ = ["BLOCKS", "longest_run", "block_positions"]

BLOCKS = 256
"""Blocks of positions a pass shares among threads."""


@nb.njit(**EXACT)
def longest_run(offsets):
    """The most slots any run of ``offsets`` (uint64 ``(n + 1,)``) holds (0 for none)."""
    longest = 0
    for i in range(offsets.size - 1):
        longest = max(longest, np.int64(offsets[i + 1]) - np.int64(offsets[i]))
    return longest


@nb.njit(**EXACT)
def block_positions(block, n):
    """The positions ``lo:hi`` of block ``block`` (of ``BLOCKS``) among ``n``."""
    return block * n // BLOCKS, (block + 1) * n // BLOCKS

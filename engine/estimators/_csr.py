"""CSR helpers shared by the estimators' fill routines."""

from __future__ import annotations

import numpy as np


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """Run offsets from run lengths.

    Args:
        counts: integer ``(n,)``, the length of each position's run.

    Returns:
        uint64 ``(n + 1,)``: ``[0, cumsum(counts)...]``.
    """
    offsets = np.zeros(counts.size + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    return offsets

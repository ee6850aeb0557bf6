"""Per-model top-k tables: fixed-width (n, k) arrays from the parsed lists."""

from __future__ import annotations

import numpy as np

from ingest.errors import IngestError
from ingest.parse.model_file import ModelResponses


def infer_k(model: ModelResponses) -> int:
    """The k a model's responses were requested with: the most common list size (sizes not
    counting an actual token appended as the lowest entry). Ties go to the larger size."""
    sizes = np.bincount(model.list_sizes)
    k = int(sizes.size - 1 - np.argmax(sizes[::-1])) if sizes.size else 0
    if k < 1:
        raise IngestError(
            "has no top_logprobs entries to tell k from: give k (or params.logprobs in the manifest)",
            file=str(model.source),
        )
    return k


def topk_arrays(model: ModelResponses, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each scored position's k highest observed entries.

    Returns ids int32 (n, k) and lp float32 (n, k) (natural log), by lp descending; slots past
    the observed entries hold id -1 and lp NaN. An appended actual token beyond the top k and
    entries past k fall away here.
    """
    n = model.top_counts.size
    starts = np.cumsum(model.top_counts) - model.top_counts
    row = np.repeat(np.arange(n), model.top_counts)
    rank = np.arange(model.top_ids.size) - np.repeat(starts, model.top_counts)
    keep = rank < k
    ids = np.full((n, k), -1, dtype=np.int32)
    lp = np.full((n, k), np.nan, dtype=np.float32)
    ids[row[keep], rank[keep]] = model.top_ids[keep]
    lp[row[keep], rank[keep]] = model.top_lp[keep]
    return ids, lp


def cut_lists(model: ModelResponses, k: int) -> dict[str, int]:
    """How many lists ``topk_arrays`` cuts to k: ``appended`` (the actual token appended below
    the top k, the list's lowest entry, drops out) and ``cut`` (longer than k besides it)."""
    return {
        "appended": int((model.actual_lowest & (model.top_counts > k)).sum()),
        "cut": int(((model.top_counts - model.actual_lowest) > k).sum()),
    }

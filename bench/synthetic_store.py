"""A synthetic store shaped like the bundled Grimm data, at any size, for end-to-end benchmarks.

Per-position distributions come from ``bench.synthetic`` (3 models, Zipf-like pools, k = 20,
about 35 union candidates per position); requests are 512 tokens long; the first 45% of the
requests are ``val``, the rest ``test``. Written through the same table builder as ingest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ingest import store
from ingest.build import store_tables
from ingest.store_write import write_store
from ingest.tokens import token_bytes

from .synthetic import _CHUNK, _VOCAB, _pool_chunk, _topk

__all__ = ["MODELS", "synthetic_store"]

MODELS = ("big", "tuned", "untuned")
REQUEST_TOKENS = 512
VAL_SHARE = 0.45


def synthetic_store(out: str | Path, n: int, *, k: int = 20, seed: int = 0) -> Path:
    """Write a store of ``n`` scored positions at ``out`` (replacing a store there; anything else is
    refused, ``ingest.store_write.write_store``)."""
    rng = np.random.default_rng(seed)
    target, target_lp = [], []
    top_ids = [[] for _ in MODELS]
    top_lp = [[] for _ in MODELS]
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        ids, lp, t = _pool_chunk(rng, m, len(MODELS))
        top = _topk(lp, k)
        rows = np.arange(m)
        target.append(ids[rows, t])
        target_lp.append(lp[:, rows, t])
        for r in range(len(MODELS)):
            top_ids[r].append(np.take_along_axis(ids, top[r], axis=1))
            top_lp[r].append(np.take_along_axis(lp[r], top[r], axis=1))
    scored = REQUEST_TOKENS - 1
    request = np.arange(n) // scored
    n_requests = int(request[-1]) + 1 if n else 0
    split = np.where(request < VAL_SHARE * n_requests, "val", "test")
    tokens = [f"t{i}" for i in range(_VOCAB)]
    vocab = pa.table(
        [pa.array(np.arange(_VOCAB, dtype=np.int32)), pa.array(tokens), pa.array([token_bytes(t) for t in tokens])],
        schema=store.VOCAB_SCHEMA,
    )
    tables = store_tables(
        names=MODELS,
        request=request.astype(np.int32),
        position=(np.arange(n) % scored + 1).astype(np.int32),
        split=pa.array(split, pa.string()),
        document=pa.array(np.char.add("doc", request.astype(str)), pa.string()),
        target=np.concatenate(target).astype(np.int32),
        target_lp=np.concatenate(target_lp, axis=1),
        topk=[(np.concatenate(i).astype(np.int32), np.concatenate(p)) for i, p in zip(top_ids, top_lp, strict=True)],
        vocab=vocab,
    )
    meta = {
        "format": store.STORE_FORMAT,
        "version": store.STORE_VERSION,
        "models": list(MODELS),
        "k": dict.fromkeys(MODELS, k),
        "n_positions": n,
        "n_requests": n_requests,
        "sources": dict.fromkeys(MODELS, f"synthetic(seed={seed})"),
        "vocab_size": _VOCAB,
    }
    return write_store(out, meta=meta, tables=tables)

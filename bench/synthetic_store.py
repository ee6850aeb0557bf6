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
from ingest.store_write import write_sharded_store, write_store
from ingest.tokens import token_bytes

from .synthetic import _CHUNK, _VOCAB, _pool_chunk, _topk

__all__ = ["MODELS", "synthetic_store"]

MODELS = ("big", "tuned", "untuned")
REQUEST_TOKENS = 512
VAL_SHARE = 0.45


def synthetic_store(out: str | Path, n: int, *, k: int = 20, seed: int = 0, shard_positions: int | None = None
                    ) -> Path:
    """Write a store of ``n`` scored positions at ``out`` (replacing a store there; anything else is
    refused, ``ingest.store_write.write_store``). ``shard_positions``: a sharded store, shards of
    whole requests of at most that many positions, each made and written before the next (the
    memory is one shard's, whatever ``n``)."""
    rng = np.random.default_rng(seed)
    scored = REQUEST_TOKENS - 1
    n_requests = -(-n // scored)
    tokens = [f"t{i}" for i in range(_VOCAB)]
    vocab = pa.table(
        [pa.array(np.arange(_VOCAB, dtype=np.int32)), pa.array(tokens), pa.array([token_bytes(t) for t in tokens])],
        schema=store.VOCAB_SCHEMA,
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
    if shard_positions is None:
        return write_store(out, meta=meta, tables=_tables(rng, 0, n, k=k, n_requests=n_requests, vocab=vocab))
    per = max(1, shard_positions // scored) * scored  # whole requests
    shards = ({name: table for name, table in _tables(rng, lo, min(lo + per, n), k=k, n_requests=n_requests,
                                                      vocab=vocab).items() if name != store.VOCAB_FILE}
              for lo in range(0, n, per))
    return write_sharded_store(out, meta=meta, vocab=vocab, shards=shards)


def _tables(rng: np.random.Generator, lo: int, hi: int, *, k: int, n_requests: int, vocab: pa.Table
            ) -> dict[str, pa.Table]:
    """The tables of positions ``lo:hi``."""
    target, target_lp = [], []
    top_ids = [[] for _ in MODELS]
    top_lp = [[] for _ in MODELS]
    for start in range(lo, hi, _CHUNK):
        m = min(_CHUNK, hi - start)
        ids, lp, t = _pool_chunk(rng, m, len(MODELS))
        top = _topk(lp, k)
        rows = np.arange(m)
        target.append(ids[rows, t])
        target_lp.append(lp[:, rows, t])
        for r in range(len(MODELS)):
            top_ids[r].append(np.take_along_axis(ids, top[r], axis=1))
            top_lp[r].append(np.take_along_axis(lp[r], top[r], axis=1))
    scored = REQUEST_TOKENS - 1
    index = np.arange(lo, hi)
    request = index // scored
    split = np.where(request < VAL_SHARE * n_requests, "val", "test")
    return store_tables(
        names=MODELS,
        request=request.astype(np.int32),
        position=(index % scored + 1).astype(np.int32),
        split=pa.array(split, pa.string()),
        document=pa.array(np.char.add("doc", request.astype(str)), pa.string()),
        target=np.concatenate(target).astype(np.int32) if target else np.zeros(0, np.int32),
        target_lp=np.concatenate(target_lp, axis=1) if target else np.zeros((len(MODELS), 0), np.float32),
        topk=[(np.concatenate(i).astype(np.int32), np.concatenate(p)) if i else
              (np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)) for i, p in zip(top_ids, top_lp, strict=True)],
        vocab=vocab,
    )

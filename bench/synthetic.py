"""Seeded synthetic inputs shaped like the bundled Grimm data, for benchmarks.

Per position: a pool of ``POOL`` vocabulary tokens with Zipf-like log-probabilities (natural
log) per model, each model a noisy copy of a shared base; every model's top-k of the pool;
a target drawn from the big model's distribution. With the defaults (3 models, k = 20) the
union of the top-k lists plus the target holds about 35 tokens per position, as in the data.

Two views of the same positions:
- ``synthetic_candidates``: the kernels' candidate matrix (target first, then the union in
  pool order; a value missing from a model's list is that model's k-th value, the target's is
  exact), like the ``union-kth-tail`` estimator without its tail row.
- ``synthetic_records``: per-position top-k dicts and the target string, the input of the
  prototype's dict pipeline (``bench.prototype.prototype_corpus_nll``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.prepare.bpe import GPT2_VOCAB_SIZE

__all__ = [
    "POOL",
    "PROTOTYPE_TEMPS",
    "SyntheticCandidates",
    "cached_synthetic_candidates",
    "temperature_weights",
    "synthetic_candidates",
    "synthetic_records",
]

POOL = 64
"""Tokens per position that any model can rank; the rest of the vocabulary holds the tail."""

PROTOTYPE_TEMPS = (1.0, 0.8, 1.2)
"""(T_B, T_T, T_U) the benchmarks blend at, the prototype's kind of temperatures."""

_VOCAB = GPT2_VOCAB_SIZE
_CHUNK = 1 << 16  # positions generated at a time (bounds memory at about 100 MB)
_NOISE = 1.6  # how much the models disagree; sets the union size (about 35 at k = 20)
_GENERATOR_VERSION = 1  # bump when the generator's output changes, so caches are rebuilt


@dataclass(frozen=True)
class SyntheticCandidates:
    """A candidate matrix as ``engine.kernels`` takes it.

    Attributes:
        offsets: uint64 ``(n + 1,)``.
        values: float32 ``(R, C)`` C-contiguous, natural-log probabilities, finite.
        outside: bool ``(n,)``, all False (the target always belongs to its run).
    """

    offsets: np.ndarray
    values: np.ndarray
    outside: np.ndarray

    @property
    def n_positions(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def nbytes(self) -> int:
        """Bytes a kernel pass reads: values plus offsets."""
        return int(self.values.nbytes + self.offsets.nbytes)


def _pool_chunk(rng: np.random.Generator, n: int, n_models: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool token ids int64 ``(n, POOL)``, log-probs float32 ``(M, n, POOL)``, target index ``(n,)``."""
    start = rng.integers(0, _VOCAB, n)
    ids = (start[:, None] + np.arange(POOL) * 769) % _VOCAB  # distinct within a position
    steep = rng.uniform(0.8, 2.5, (n, 1)).astype(np.float32)  # how peaked the position is
    base = -steep * np.log1p(np.arange(POOL, dtype=np.float32)) + 0.7 * rng.standard_normal((n, POOL), np.float32)
    logits = base[None] + _NOISE * rng.standard_normal((n_models, n, POOL), np.float32)
    mass = rng.uniform(0.7, 0.99, (n_models, n, 1)).astype(np.float32)  # on the pool; the rest is tail
    lp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True) / mass)
    cdf = np.cumsum(np.exp(lp[0]), axis=1)
    target = (cdf < rng.random((n, 1), np.float32) * cdf[:, -1:]).sum(axis=1)  # drawn from big
    return ids, lp, np.minimum(target, POOL - 1)


def _topk(lp: np.ndarray, k: int) -> np.ndarray:
    """Indices int64 ``(M, n, k)`` of each model's k best pool tokens, best first."""
    part = np.argpartition(-lp, k - 1, axis=2)[..., :k]
    order = np.argsort(-np.take_along_axis(lp, part, axis=2), axis=2)
    return np.take_along_axis(part, order, axis=2)


def synthetic_candidates(n: int, *, n_models: int = 3, k: int = 20, seed: int = 0) -> SyntheticCandidates:
    """A seeded candidate matrix over ``n`` positions (see the module docstring)."""
    rng = np.random.default_rng(seed)
    counts_parts, values_parts = [], []
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        _, lp, target = _pool_chunk(rng, m, n_models)
        top = _topk(lp, k)
        rows = np.arange(m)[:, None]
        listed = np.zeros((n_models, m, POOL), dtype=bool)
        for r in range(n_models):
            listed[r, rows, top[r]] = True
        kth = np.take_along_axis(lp, top[..., -1:], axis=2)
        filled = np.where(listed, lp, kth)
        filled[:, np.arange(m), target] = lp[:, np.arange(m), target]  # exact target values
        member = listed.any(axis=0)
        member[np.arange(m), target] = True
        key = np.where(member, np.arange(POOL), POOL)  # pool order; non-members last
        key[np.arange(m), target] = -1  # target first
        order = np.argsort(key, axis=1, kind="stable")
        counts = member.sum(axis=1)
        keep = np.arange(POOL)[None, :] < counts[:, None]
        values_parts.append(
            np.stack([np.take_along_axis(filled[r], order, axis=1)[keep] for r in range(n_models)])
        )
        counts_parts.append(counts)
    counts = np.concatenate(counts_parts) if counts_parts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    values = (
        np.ascontiguousarray(np.concatenate(values_parts, axis=1), dtype=np.float32)
        if values_parts
        else np.zeros((n_models, 0), dtype=np.float32)
    )
    return SyntheticCandidates(offsets=offsets, values=values, outside=np.zeros(n, dtype=bool))


def cached_synthetic_candidates(n: int, *, seed: int = 0, cache_dir: str | Path) -> SyntheticCandidates:
    """``synthetic_candidates(n, seed=seed)``, kept as two .npy files in ``cache_dir`` after the
    first call (1M positions take about 15 s to generate, 0.3 s to load)."""
    stem = f"candidates-{n}-seed{seed}-v{_GENERATOR_VERSION}"
    paths = {name: Path(cache_dir) / f"{stem}.{name}.npy" for name in ("offsets", "values")}
    if all(path.exists() for path in paths.values()):
        return SyntheticCandidates(
            offsets=np.load(paths["offsets"]), values=np.load(paths["values"]), outside=np.zeros(n, dtype=bool)
        )
    data = synthetic_candidates(n, seed=seed)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, getattr(data, name))
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return data


def synthetic_records(n: int, *, k: int = 20, seed: int = 0) -> list[tuple[tuple[dict, dict, dict], str]]:
    """``n`` positions as ``((big, tuned, untuned), target)``, each model's top-k as
    {token string: natural-log probability} (best first), for the prototype baseline."""
    rng = np.random.default_rng(seed)
    records = []
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        ids, lp, target = _pool_chunk(rng, m, 3)
        top = _topk(lp, k)
        for i in range(m):
            lists = tuple(
                {f"t{ids[i, j]}": float(lp[r, i, j]) for j in top[r, i]} for r in range(3)
            )
            records.append((lists, f"t{ids[i, target[i]]}"))
    return records


def temperature_weights(n_vectors: int, *, seed: int = 0) -> np.ndarray:
    """float64 ``(n_vectors, 3)`` row weights (1/T_B, 1/T_T, -1/T_U) for temperatures scattered
    by up to 25% around ``PROTOTYPE_TEMPS`` (the ``temperatures`` parametrization with w = 1)."""
    rng = np.random.default_rng(seed)
    temps = np.asarray(PROTOTYPE_TEMPS) * rng.uniform(0.8, 1.25, (n_vectors, 3))
    return np.column_stack([1 / temps[:, 0], 1 / temps[:, 1], -1 / temps[:, 2]])

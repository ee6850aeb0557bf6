"""``MaskedBlend``: a blend whose support a plausibility mask restricts (``engine.masks``).

The mask is applied to the blend's candidate matrix: once to the whole matrix in memory, or to
each shard's as it is read for a blend streamed shard by shard (its ``MatrixSource`` carries the
mask: ``engine.streaming``); every figure then comes from the same kernels over the masked
matrix, batched over weight vectors. A mask is applied run by run, so both give each position's
NLL to the bit. Distributed on Ray (``engine.distributed.Cluster.distribute``), the workers hold
parts of the masked matrix, or mask the shards they read. Where the mask drops a position's
target, its NLL is infinite (so is the perplexity of every split holding one) unless a floor is
given: ``targets_outside`` counts those positions per split, and the reports say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .blend import Blend
from .masks import Mask, apply_mask
from .positions import Grouping, PositionsPart
from .streaming import StreamingBlend

__all__ = ["MaskedBlend", "masked_blend"]


class MaskedBlend(Blend):
    """A blend over a masked candidate matrix: ``inner``'s figures, with what the mask drops.

    Attributes:
        inner: the blend over the masked matrix (in memory, streamed with a masked source, or on
            Ray workers holding parts of it).
        mask: the mask.
        floor: the NLL charged where the mask drops the target, or None (infinite).
        outside: int64 ``(splits,)``, per split, the positions whose target the mask drops.
    """

    def __init__(self, inner: Blend, mask: Mask, floor: float | None, outside: np.ndarray):
        super().__init__(inner.dataset, inner.models, inner.matrix)
        self.inner = inner
        self.mask = mask
        self.floor = floor
        self.outside = outside

    @property
    def estimator(self) -> str:
        return self.inner.estimator

    def _chunks(self, grouping: Grouping):
        return self.inner._chunks(grouping)

    def _sums(self, weights: np.ndarray, grouping: Grouping) -> np.ndarray:
        return self.inner._sums(weights, grouping)

    def _grad_hess(self, weights: np.ndarray, grouping: Grouping) -> tuple[float, np.ndarray, np.ndarray]:
        return self.inner._grad_hess(weights, grouping)

    def targets_outside(self) -> dict[str, int]:
        """Per split, how many positions' targets the mask drops."""
        return dict(zip(self.dataset.splits, self.outside.tolist(), strict=True))

    def describe(self) -> dict[str, Any]:
        """The mask's JSON: its rule, model and value, the floor (null: infinite NLL) and the
        positions per split whose target it drops."""
        return {**self.mask.to_json(), "floor": self.floor, "targets_outside": self.targets_outside()}

    def note(self) -> str:
        """One line for tables: what the mask drops and what that costs."""
        outside = self.targets_outside()
        counts = ", ".join(f"{n:,} {s}" for s, n in outside.items())
        cost = (f"each charged a floor of {self.floor:g} nats (not the blend's NLL: a label, as the prototype's 30)"
                if self.floor is not None else "NLL infinite there, so is each such split's perplexity "
                "(--mask-floor NLL charges a floor instead)")
        return f"mask {self.mask.describe()}: the target falls outside it at {counts} positions; {cost}"


def masked_blend(blend: Blend, mask: Mask, *, floor: float | None = None) -> MaskedBlend:
    """``blend`` restricted by ``mask``: in memory, or streamed shard by shard (one pass over the
    shards finds where the mask drops the target; each figure then masks each shard as it reads
    it). To run a masked blend on Ray, distribute it masked (``Cluster.distribute``).

    Raises:
        ValueError: the mask's model is not in the blend (named), a bad floor, or a blend
            without one top-k estimator's candidate matrix to mask (the sampled correction, the
            oracle, a blend already masked or on Ray workers).
    """
    if type(blend) is StreamingBlend and blend.source.mask is None:
        mask.term(tuple(blend.models))
        return _streamed(blend, mask, floor)
    if type(blend) is not Blend:
        kind = {"RayBlend": "on Ray workers already (mask a blend before it is distributed: pass cluster= to "
                            "evaluate or tune, or Cluster.distribute the masked blend)",
                "MaskedBlend": "masked already", "StreamingBlend": "masked already"
                }.get(type(blend).__name__, "not a top-k estimate")
        raise ValueError(f"mask {mask.describe()}: a mask applies to one candidate matrix of a top-k estimator; this "
                         f"{blend.estimator!r} blend is {kind}")
    masked = apply_mask(blend.matrix, tuple(blend.models), mask, floor=floor)
    outside = _per_split(blend.dataset.whole, masked.target_outside)
    return MaskedBlend(Blend(blend.dataset, blend.models, masked.matrix), mask, floor, outside)


def _streamed(blend: StreamingBlend, mask: Mask, floor: float | None) -> MaskedBlend:
    """A streamed ``blend`` under ``mask``: its source masks each shard's matrix; where the mask
    drops the target is counted in one pass over the shards, one at a time."""
    source = blend.source.masked(mask, floor)
    ds = blend.dataset
    outside = np.zeros(len(ds.splits), dtype=np.int64)
    for i, shard in enumerate(ds.store.shards):
        if shard.stop > shard.start:
            outside += _per_split(ds.part(i), source.masked_shard(ds.store, i).target_outside)
    return MaskedBlend(StreamingBlend(ds, blend.models, source), mask, floor, outside)


def _per_split(part: PositionsPart, target_outside: np.ndarray) -> np.ndarray:
    """int64 ``(splits,)``: the positions of ``part`` where ``target_outside`` (bool ``(n,)``), per split."""
    return np.bincount(part.split_code[target_outside], minlength=len(part.layout.splits)).astype(np.int64)

"""``MaskedBlend``: a blend whose support a plausibility mask restricts (``engine.masks``).

The mask is applied once to the blend's candidate matrix; every figure then comes from the same
kernels over the masked matrix, batched over weight vectors. Where the mask drops a position's
target, its NLL is infinite (so is the perplexity of every split holding one) unless a floor is
given: ``targets_outside`` counts those positions per split, and the reports say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .blend import Blend
from .masks import Mask, apply_mask

__all__ = ["MaskedBlend", "masked_blend"]


class MaskedBlend(Blend):
    """A ``Blend`` over a masked candidate matrix.

    Attributes:
        mask: the mask.
        floor: the NLL charged where the mask drops the target, or None (infinite).
        target_outside: bool ``(n,)``, where the mask drops the target.
    """

    def __init__(self, base: Blend, mask: Mask, floor: float | None):
        masked = apply_mask(base.matrix, tuple(base.models), mask, floor=floor)
        super().__init__(base.dataset, base.models, masked.matrix)
        self.mask = mask
        self.floor = floor
        self.target_outside = masked.target_outside

    def targets_outside(self) -> dict[str, int]:
        """Per split, how many positions' targets the mask drops."""
        ds = self.dataset
        counts = np.bincount(ds.split_code[self.target_outside], minlength=len(ds.splits))
        return dict(zip(ds.splits, counts.tolist(), strict=True))

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
    """``blend`` restricted by ``mask``.

    Raises:
        ValueError: the mask's model is not in the blend (named), a bad floor, or a blend
            without one candidate matrix to mask (the sampled correction, the oracle, a blend
            streamed or run on Ray).
    """
    if type(blend) is not Blend:
        kind = {"StreamingBlend": "streamed shard by shard (leave out --stream)",
                "RayBlend": "run on Ray workers (leave out --ray)"}.get(type(blend).__name__, "not a top-k estimate")
        raise ValueError(f"mask {mask.describe()}: a mask applies to one candidate matrix of a top-k estimator; this "
                         f"{blend.estimator!r} blend is {kind}")
    mask.term(tuple(blend.models))
    return MaskedBlend(blend, mask, floor)

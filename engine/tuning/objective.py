"""What a tuner needs of the thing it tunes: a ``Blend`` (an estimate from top-k data) or an
``engine.oracle.Oracle`` (the exact figures, where the models are at hand)."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..dataset import Dataset

__all__ = ["Objective"]


class Objective(Protocol):
    """Mean NLL over a split's positions as a function of the blend weights."""

    dataset: Dataset
    models: tuple[str, ...]

    @property
    def estimator(self) -> str:
        """What makes the figures: an estimator's name, or the oracle's ``EXACT``."""
        ...

    def tuning_count(self, split: str, min_context: int = 1) -> int:
        """How many positions are tuned on (ValueError where none)."""
        ...

    def mean_nll(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1) -> np.ndarray:
        """float64 ``(B,)``: the mean NLL of each weight vector ``(B, 3)``, one pass."""
        ...

    def mean_nll_grad_hess(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1
                           ) -> tuple[float, np.ndarray, np.ndarray]:
        """The mean NLL of one weight vector with its gradient and Hessian, one pass."""
        ...

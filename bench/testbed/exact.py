"""Exact figures of the saved models, from their full next-token distributions (torch).

Every scored text is a list of chunks (token id lists); position i >= 1 of a chunk is predicted
from positions 0..i-1 of that chunk only, as ``approxft serve`` scores an echo request. Log-
probabilities are natural logs, normalized in float64 (log-sum-exp over all 50,257 logits) from
the float32 logits of the float16 weights loaded as float32. The proxy-tuning blend is ``lp_big + lp_tuned - lp_untuned`` renormalized over
all 50,257 tokens (float64 log-sum-exp) at every position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

TOP_K = 20
"""The list length collected; how often the actual token falls outside it is reported."""


@dataclass(frozen=True)
class Scores:
    """Per scored position (all chunks in order): float64 (n,) natural-log probability of the
    actual token, and bool (n,) whether it is outside the model's top ``TOP_K``."""

    logprob: np.ndarray
    outside_top_k: np.ndarray

    @property
    def positions(self) -> int:
        return len(self.logprob)

    @property
    def perplexity(self) -> float:
        return math.exp(-float(np.mean(self.logprob)))

    @property
    def outside_share(self) -> float:
        return float(np.mean(self.outside_top_k))


def _logits(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """float32 (len(ids) - 1, V): the logits predicting positions 1..n-1."""
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0, :-1]


def _model_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (n,) log-probability of each target under float32 ``logits`` (n, V), normalized
    by a float64 log-sum-exp; bool (n,) whether at least ``TOP_K`` tokens beat it."""
    actual = logits.gather(1, targets)
    log_z = torch.logsumexp(logits.double(), dim=1)
    return actual[:, 0].double() - log_z, (logits > actual).sum(dim=1) >= TOP_K


def _blend_scores(big: torch.Tensor, tuned: torch.Tensor, untuned: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_model_scores`` of the proxy-tuning blend ``z = big + tuned - untuned`` (float64) of three
    models' logits: each model's normalizer is constant over a row and cancels when the blend is
    renormalized, so its log-probabilities are ``z - logsumexp(z)``."""
    z = big.double() + tuned.double() - untuned.double()
    actual = z.gather(1, targets)
    return actual[:, 0] - torch.logsumexp(z, dim=1), (z > actual).sum(dim=1) >= TOP_K


# Compiled, each is one or two fused passes over the (n, V) rows instead of five to eight
# (4x faster here); dynamic shapes, as the last chunk of a document is shorter.
_compiled = {}


def _fast(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def score(models: Mapping[str, torch.nn.Module], chunks: Sequence[Sequence[int]], *, blend: tuple[str, str, str] | None = None) -> dict[str, Scores]:
    """Each model's ``Scores`` over ``chunks``; with ``blend = (big, tuned, untuned)`` names, also
    the proxy-tuning blend's, under the key ``"proxy-tuning"`` (its top-k flag is over the
    blended distribution)."""
    names = list(models) + (["proxy-tuning"] if blend else [])
    logprob: dict[str, list[np.ndarray]] = {n: [] for n in names}
    outside: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for ids in chunks:
        if len(ids) < 2:
            continue
        targets = torch.tensor(list(ids[1:]))[:, None]
        logits = {name: _logits(model, ids) for name, model in models.items()}
        rows = {name: _fast(_model_scores)(values, targets) for name, values in logits.items()}
        if blend:
            rows["proxy-tuning"] = _fast(_blend_scores)(*(logits[n] for n in blend), targets)
        for name, (lp, out) in rows.items():
            logprob[name].append(lp.numpy())
            outside[name].append(out.numpy())
    return {n: Scores(np.concatenate(logprob[n]), np.concatenate(outside[n])) for n in names}

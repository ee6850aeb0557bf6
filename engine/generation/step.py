"""One generation step, shared by the live loop (``engine.generation.generate``) and the offline
replay (``engine.generation.transcript``): blend the models' next-token lists, draw a token, and
record what was seen (each list by model name; each shown candidate with every model's value
under ``models``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..candidates import MissingDrops
from .next_token import blend_next_token
from .sampling import draw, sampling_probs
from .tuned import TunedBlend

__all__ = ["TOP_SHOWN", "step_record"]

TOP_SHOWN = 10
"""Blended candidates recorded per step (with each model's values)."""


def step_record(lists: dict[str, dict[str, float]], *, blend: TunedBlend | None, temperature: float, top_p: float,
                u: float, vocab_size: int, calibration: MissingDrops | None) -> dict[str, Any]:
    """One step's record: the lists, the blended top candidates, the token uniform ``u`` draws.

    ``lists``: model -> ``{token: natural-log probability}`` (every model of the blend, in term
    order; or, where ``blend`` is None, one model alone, renormalized over its own list like the
    blend's).
    """
    if blend is None:
        (only,) = lists.values()
        tokens = list(only)
        logprob = np.array([only[t] for t in tokens])
        pseudo = max(0.0, 1.0 - float(np.exp(logprob).sum()))
        estimator = None
    else:
        nt = blend_next_token({m: lists[m] for m in blend.models}, blend.weights, blend.estimator,
                              vocab_size=vocab_size, calibration=calibration, mask=blend.mask)
        tokens, logprob, pseudo, estimator = nt.tokens, nt.logprob, nt.pseudo_mass, nt.estimator
    p = sampling_probs(logprob, temperature=temperature, top_p=top_p)
    chosen = draw(p, u)
    shown = np.argsort(-np.where(np.isfinite(logprob), logprob, -np.inf), kind="stable")[:TOP_SHOWN]
    top = [{"token": tokens[i], "blend_logprob": float(logprob[i]) if np.isfinite(logprob[i]) else None,
            "p_sample": float(p[i]), "models": {m: lst.get(tokens[i]) for m, lst in lists.items()}} for i in shown]
    return {"lists": {m: [[t, v] for t, v in lst.items()] for m, lst in lists.items()}, "estimator": estimator,
            "pseudo_mass": pseudo, "u": u, "token": tokens[chosen], "p_token": float(p[chosen]), "top": top}

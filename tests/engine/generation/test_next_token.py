"""``engine.generation.next_token``: a one-position blend from top-k lists agrees with the engine's own
evaluation of the same stored position (where the actual token is in every list, its listed
values are its exact ones, so both see the same data)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.estimators import ESTIMATORS
from engine.generation.next_token import blend_next_token
from tests.helpers import GRIMM_ROLES

WEIGHTS = [(1.0, 1.0, -1.0), (0.8, 0.6, -0.3), (1.0, 0.0, 0.0)]


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_blended_next_token_matches_the_engines_evaluation(grimm_dataset, estimator):
    models = (GRIMM_ROLES["big"], GRIMM_ROLES["tuned"], GRIMM_ROLES["untuned"])
    blend = grimm_dataset.blend(big=models[0], tuned=models[1], untuned=models[2], estimator=estimator)
    data = grimm_dataset.union_candidates(models)
    everywhere = np.flatnonzero((data.rank[:, data.offsets[:-1].astype(np.int64)] >= 0).all(axis=0))
    chosen = everywhere[:: max(1, everywhere.size // 40)][:40]
    nll = blend.nll(np.array(WEIGHTS))
    for i in chosen:
        lo, hi = int(data.offsets[i]), int(data.offsets[i + 1])
        lists = [{f"t{c}": float(data.lp[m, c]) for c in range(lo, hi) if data.rank[m, c] >= 0} for m in range(3)]
        for b, w in enumerate(WEIGHTS):
            step = blend_next_token(lists, w, estimator, vocab_size=data.vocab_size, calibration=data.calibration)
            got = step.logprob[step.tokens.index(f"t{lo}")]
            assert got == pytest.approx(-nll[b, i], abs=2e-4), (estimator, i, w)
            total = np.exp(step.logprob).sum() + step.pseudo_mass
            assert total == pytest.approx(1.0, abs=1e-5)


def test_no_common_token_and_bad_input():
    lists = [{"a": -0.5, "b": -1.5}, {"c": -0.2, "d": -2.0}, {"e": -0.1}]
    step = blend_next_token(lists, (1, 1, -1), "union-kth-tail", vocab_size=100)
    assert step.tokens[0] == "a" and set(step.tokens) == set("abcde")
    assert np.exp(step.logprob).sum() + step.pseudo_mass == pytest.approx(1.0)
    seed = blend_next_token(lists, (1, 1, -1), "prototype", vocab_size=100)
    assert np.isneginf(seed.logprob[2:]).all() and seed.pseudo_mass == 0.0
    with pytest.raises(ValueError, match="empty"):
        blend_next_token([{}, {}, {}], (1, 1, -1), "zipf-tail", vocab_size=100)
    with pytest.raises(ValueError, match="unknown estimator"):
        blend_next_token(lists, (1, 1, -1), "nope", vocab_size=100)

"""``engine.generation.next_token``: a one-position blend from top-k lists agrees with the engine's own
evaluation of the same stored position (where the actual token is in every list, its listed
values are its exact ones, so both see the same data), for three and four models, masked or not."""

from __future__ import annotations

import numpy as np
import pytest

from engine.estimators import ESTIMATORS
from engine.generation.next_token import blend_next_token
from engine.masked_blend import masked_blend
from engine.masks import Mask
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
        lists = {name: {f"t{c}": float(data.lp[m, c]) for c in range(lo, hi) if data.rank[m, c] >= 0}
                 for m, name in enumerate(models)}
        for b, w in enumerate(WEIGHTS):
            step = blend_next_token(lists, w, estimator, vocab_size=data.vocab_size, calibration=data.calibration)
            got = step.logprob[step.tokens.index(f"t{lo}")]
            assert got == pytest.approx(-nll[b, i], abs=2e-4), (estimator, i, w)
            total = np.exp(step.logprob).sum() + step.pseudo_mass
            assert total == pytest.approx(1.0, abs=1e-5)


def test_no_common_token_and_bad_input():
    lists = {"b": {"a": -0.5, "b": -1.5}, "t": {"c": -0.2, "d": -2.0}, "u": {"e": -0.1}}
    step = blend_next_token(lists, (1, 1, -1), "union-kth-tail", vocab_size=100)
    assert step.tokens[0] == "a" and set(step.tokens) == set("abcde")
    assert np.exp(step.logprob).sum() + step.pseudo_mass == pytest.approx(1.0)
    seed = blend_next_token(lists, (1, 1, -1), "prototype", vocab_size=100)
    assert np.isneginf(seed.logprob[2:]).all() and seed.pseudo_mass == 0.0
    with pytest.raises(ValueError, match="empty"):
        blend_next_token({"b": {}, "t": {}, "u": {}}, (1, 1, -1), "zipf-tail", vocab_size=100)
    with pytest.raises(ValueError, match="unknown estimator"):
        blend_next_token(lists, (1, 1, -1), "nope", vocab_size=100)


FOUR = ("grimm-big", "grimm-small-tuned", "grimm-small", "grimm-big-tuned")
FOUR_WEIGHTS = [(1.0, 1.0, -1.0, 0.5), (0.5, 0.8, -0.4, 0.6)]


@pytest.mark.parametrize("mask", [None, Mask("relative", "grimm-big", 0.05), Mask("top-p", "grimm-small-tuned", 0.8)],
                         ids=["unmasked", "relative", "top-p"])
def test_a_four_model_masked_next_token_matches_the_masked_evaluation(grimm_dataset, mask):
    """Four terms and a mask: where the actual token is in every list, its blended next-token
    log-probability is minus the masked evaluation's NLL; a token the mask drops has none."""
    blend = grimm_dataset.blend(FOUR, estimator="zipf-tail")
    masked = blend if mask is None else masked_blend(blend, mask)
    data = grimm_dataset.union_candidates(FOUR)
    everywhere = np.flatnonzero((data.rank[:, data.offsets[:-1].astype(np.int64)] >= 0).all(axis=0))
    nll = masked.nll(np.array(FOUR_WEIGHTS))
    kept, gone = everywhere[np.isfinite(nll[0, everywhere])], everywhere[np.isinf(nll[0, everywhere])]
    chosen = np.concatenate([kept[:: max(1, kept.size // 30)][:30], gone[:: max(1, gone.size // 10)][:10]])
    dropped = 0
    for i in chosen:
        lo, hi = int(data.offsets[i]), int(data.offsets[i + 1])
        lists = {name: {f"t{c}": float(data.lp[m, c]) for c in range(lo, hi) if data.rank[m, c] >= 0}
                 for m, name in enumerate(FOUR)}
        for b, w in enumerate(FOUR_WEIGHTS):
            step = blend_next_token(lists, w, "zipf-tail", vocab_size=data.vocab_size, mask=mask)
            got = step.logprob[step.tokens.index(f"t{lo}")]
            if np.isinf(nll[b, i]):  # the mask drops the actual token
                assert got == -np.inf
                dropped += 1
            else:
                assert got == pytest.approx(-nll[b, i], abs=2e-4), (i, w)
            assert np.exp(step.logprob).sum() + step.pseudo_mass == pytest.approx(1.0, abs=1e-5)
            if mask is not None and mask.rule == "relative":  # an independent reading of the rule
                values = lists[mask.model]
                cut = max(values.values()) + np.log(mask.value)
                for token, lp in zip(step.tokens, step.logprob, strict=True):
                    if token in values:
                        assert (lp > -np.inf) == (values[token] >= cut), (i, token)
    if mask is not None:
        assert dropped > 0  # the comparison covered dropped targets too

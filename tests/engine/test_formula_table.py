"""The demo's comparison of the published formulas (``engine.formula_table``) on the bundled data."""

import math

import numpy as np
import pytest

from engine.formula_table import FLOOR, FORMULAS, formula_rows
from engine.masked_blend import masked_blend
from engine.params import get_parametrization
from tests.helpers import GRIMM_ROLES

ROLES = tuple(GRIMM_ROLES.values())


@pytest.fixture(scope="module")
def rows(grimm_dataset):
    return {r.label.split(" (")[0]: r for r in formula_rows(grimm_dataset, roles=ROLES, extra="grimm-big-tuned",
                                                            trials=16)}


def test_every_formula_has_a_default_and_a_tuned_row(rows):
    for name in FORMULAS:
        assert {f"{name}, default", f"{name}, tuned"} <= set(rows)
    assert {"loglinear, tuned", "grimm-big-tuned alone", "4 models, default", "4 models, tuned"} <= set(rows)


def test_default_rows_are_the_formulas_own_figures(rows, grimm_dataset):
    blend = grimm_dataset.blend(ROLES)
    for name in ("proxy-tuning", "eft-upscale", "seed"):
        row = rows[f"{name}, default"]
        w = get_parametrization(name).weights(list(row.params.values()))
        assert row.report.splits["test"].perplexity == pytest.approx(
            math.exp(float(blend.mean_nll(w, split="test"))), rel=1e-9)
        assert row.report.estimator == blend.estimator and row.report.documents["test"][0] < row.report.splits[
            "test"].perplexity
        tuned = rows[f"{name}, tuned"]
        w = get_parametrization(name).weights(list(tuned.params.values()))
        assert tuned.report.splits["val"].perplexity == pytest.approx(
            math.exp(float(blend.mean_nll(w, split="val"))), rel=1e-9)
        # Every unmasked formula is a point of the log-linear family: Newton's optimum is below each.
        for r in (row, tuned):
            assert rows["loglinear, tuned"].report.splits["val"].perplexity <= r.report.splits["val"].perplexity * (1 + 1e-9)
    reference = rows["grimm-big-tuned alone"].report
    assert reference.splits["test"].perplexity == grimm_dataset.model_report("grimm-big-tuned").splits["test"].perplexity


def test_masked_rows_count_what_their_masks_drop(rows, grimm_dataset):
    for name, rule in (("dexperts", "top-p"), ("contrastive", "relative")):
        default, tuned = rows[f"{name}, default"], rows[f"{name}, tuned"]
        assert default.mask["rule"] == rule and default.mask["floor"] is None
        assert default.mask["targets_outside"]["test"] > 0 and default.report.splits["test"].perplexity == np.inf
        assert tuned.mask["floor"] == FLOOR and tuned.mask["targets_outside"] == default.mask["targets_outside"]
        param = get_parametrization(name)
        p = param.complete(list(tuned.params.values()))
        again = masked_blend(grimm_dataset.blend(ROLES), param.mask(p, ROLES), floor=FLOOR)
        assert tuned.report.splits["val"].perplexity == pytest.approx(
            math.exp(float(again.mean_nll(param.weights(p), split="val"))), rel=1e-9)


def test_the_four_model_rows(rows, grimm_dataset):
    default, tuned = rows["4 models, default"], rows["4 models, tuned"]
    assert default.models == (*ROLES, "grimm-big-tuned") and list(default.params.values()) == [1.0, 1.0, -1.0, 1.0]
    assert tuned.report.splits["val"].perplexity < default.report.splits["val"].perplexity
    assert len(tuned.report.weights) == 4

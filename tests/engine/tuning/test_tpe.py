"""Optuna search: reproducible, resumable on real storage, guarded against the wrong study."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from engine.estimators import CALIBRATED_ESTIMATOR
from engine.tuning.tpe import StudyMismatch, tpe_search
from tests.helpers import GRIMM_ROLES


@pytest.fixture(scope="module")
def blend(golden_dataset):
    return golden_dataset.blend(**GRIMM_ROLES)


def test_same_seed_same_result_and_the_value_is_the_engine_evaluation(blend):
    a = tpe_search(blend, "temperatures", trials=24, batch=8, seed=3)
    b = tpe_search(blend, "temperatures", trials=24, batch=8, seed=3)
    assert a.trials == 24 and np.array_equal(a.params, b.params) and a.mean_nll == b.mean_nll
    assert a.params[3] == 1.0  # w is not searched
    # Batched trials run the lane kernel: equal to a single evaluation within its 1e-6 accuracy.
    assert a.mean_nll == pytest.approx(float(blend.mean_nll(a.weights, split="val")), rel=1e-6)
    c = tpe_search(blend, "temperatures", trials=24, batch=8, seed=4)
    assert not np.array_equal(a.params, c.params)


def test_search_reads_the_val_split_only(blend):
    found = tpe_search(blend, "loglinear", trials=16, batch=16, seed=0)
    assert found.mean_nll == pytest.approx(float(blend.mean_nll(found.weights, split="val")))
    assert found.mean_nll != pytest.approx(float(blend.mean_nll(found.weights, split="test")))


def test_sqlite_study_resumes_without_losing_trials(blend, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = tpe_search(blend, "temperatures", trials=10, batch=5, seed=1, storage=url, study_name="s")
    assert first.trials == 10
    again = tpe_search(blend, "temperatures", trials=25, batch=5, seed=1, storage=url, study_name="s")
    assert again.trials == 25
    assert again.mean_nll <= first.mean_nll
    with sqlite3.connect(tmp_path / "study.db") as db:
        assert db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0] == 25


def test_journal_storage_resumes(blend, tmp_path):
    path = str(tmp_path / "study.journal")
    tpe_search(blend, "loglinear", trials=8, batch=4, storage=path, study_name="j")
    assert tpe_search(blend, "loglinear", trials=12, batch=4, storage=path, study_name="j").trials == 12


def test_a_study_made_for_another_space_is_refused_and_left_alone(blend, golden_dataset, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tpe_search(blend, "temperatures", trials=6, batch=3, storage=url, study_name="s")
    before = (tmp_path / "study.db").read_bytes()
    with pytest.raises(StudyMismatch, match="was created for"):
        tpe_search(blend, "loglinear", trials=12, storage=url, study_name="s")
    other = golden_dataset.blend(**GRIMM_ROLES, estimator="prototype")
    with pytest.raises(StudyMismatch):
        tpe_search(other, "temperatures", trials=12, storage=url, study_name="s")
    assert (tmp_path / "study.db").read_bytes() == before


def test_bad_storage_and_empty_split_are_clear_errors(blend, tmp_path):
    with pytest.raises(ValueError, match="cannot be opened"):
        tpe_search(blend, "temperatures", trials=2, storage=str(tmp_path / "no" / "such" / "dir" / "j.log"))
    with pytest.raises(ValueError, match="no position with at least 500"):
        tpe_search(blend, "temperatures", trials=2, min_context=500)
    with pytest.raises(ValueError, match="unknown parametrization"):
        tpe_search(blend, "softmax", trials=2)


class Diverging:
    """A blend whose estimate is infinite wherever ``a_untuned`` is below -2.5 (as a store with an
    impossible value would make it), finite elsewhere."""

    def __init__(self, blend, everywhere: bool):
        self.blend, self.everywhere = blend, everywhere
        self.dataset, self.models, self.estimator = blend.dataset, blend.models, blend.estimator

    def tuning_count(self, split, min_context=1):
        return self.blend.tuning_count(split, min_context)

    def mean_nll(self, weights, *, split, min_context=1):
        out = self.blend.mean_nll(weights, split=split, min_context=min_context)
        return np.where(self.everywhere | (np.atleast_2d(weights)[:, 2] < -2.5), -np.inf, out)


def test_a_search_without_finite_trials_stops_with_one_error(blend):
    with pytest.raises(ValueError, match=r"100 trials gave no finite NLL \(0 of 20 complete\); stopping"):
        tpe_search(Diverging(blend, everywhere=True), "loglinear", trials=20, batch=10)
    # Some failures on the way are fine: the search goes round them.
    found = tpe_search(Diverging(blend, everywhere=False), "loglinear", trials=20, batch=10)
    assert found.trials == 20 and found.weights[2] >= -2.5 and np.isfinite(found.mean_nll)


def test_tune_cli_both_methods_report_test_for_weights_tuned_on_val(grimm_store, grimm_dataset, tmp_path):
    roles = [f"--{r}={m}" for r, m in GRIMM_ROLES.items()]
    outs = {}
    for method in ("tpe", "newton"):
        done = subprocess.run(
            [sys.executable, "-m", "engine", "tune", str(grimm_store), *roles, "--method", method,
             "--trials", "48", "--format", "json", "--min-context", "25"],
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr
        outs[method] = json.loads(done.stdout)
    blend = grimm_dataset.blend(**GRIMM_ROLES)
    for method, out in outs.items():
        best = out["best"]
        assert out["method"] == method and best["estimator"] == CALIBRATED_ESTIMATOR and best["estimate"] is True
        report = blend.evaluate(best["weights"])
        assert best["test"] == pytest.approx(report.splits["test"].perplexity, rel=1e-9)
        assert best["val"] == pytest.approx(report.splits["val"].perplexity, rel=1e-9)
    # Newton's optimum is exact: TPE cannot beat it on the tuning positions.
    tuned = {m: float(blend.mean_nll(o["best"]["weights"], split="val", min_context=25)) for m, o in outs.items()}
    assert tuned["newton"] <= tuned["tpe"] + 1e-9

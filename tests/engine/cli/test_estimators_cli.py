"""``approxft eval --estimator all``: every estimator side by side, with the bounds; the default
estimator follows the store's calibration."""

from __future__ import annotations

import json

from engine.cli import main
from engine.estimators import CALIBRATED_ESTIMATOR, ESTIMATORS, FALLBACK_ESTIMATOR
from tests.helpers import ROLE_ARGS, approxft

SINGLE_KEYS = {"terms", "models", "parametrization", "params", "weights", "estimator", "estimate", "val", "test", "details", "interval_kind"}


def test_eval_all_json_maps_every_estimator_and_keeps_the_single_shape(grimm_store):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--estimator", "all", "--format", "json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert list(out["blend"]) == list(ESTIMATORS)
    single = json.loads(approxft("eval", grimm_store, *ROLE_ARGS, "--format", "json").stdout)["blend"]
    assert set(single) == SINGLE_KEYS and single["estimator"] == CALIBRATED_ESTIMATOR
    for name, blend in out["blend"].items():
        assert set(blend) == SINGLE_KEYS and blend["estimator"] == name and blend["estimate"] is True
    assert out["blend"][CALIBRATED_ESTIMATOR]["test"] == single["test"]
    # Proxy-tuning has a negative weight: no finite upper bound; every estimate is above the lower one.
    assert out["bounds"]["upper"]["test"] is None
    assert all(out["bounds"]["lower"][s] < b[s] for b in out["blend"].values() for s in ("val", "test"))


def test_eval_all_table_has_a_row_per_estimator_and_the_bounds(grimm_store):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--estimator", "all", "--weights", "0.6,0.4,0")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    for name in ESTIMATORS:
        assert sum(f"estimate: {name}" in r for r in rows) == 1, name
    assert f"estimate: {CALIBRATED_ESTIMATOR} (default)" in done.stdout
    lower = next(r for r in rows if "lower bound" in r)
    upper = next(r for r in rows if "upper bound" in r)
    assert "inf" not in upper and "inf" not in lower  # nonnegative weights: both bounds are finite


def test_without_a_calibration_fit_the_default_is_the_fallback(golden_dataset, capsys):
    """The golden store has no calibration: eval defaults to zipf-tail, --estimator all leaves
    calibrated-tail out with a note, and asking for it is one line saying how to make a fit."""
    store = str(golden_dataset.store.path)
    done = approxft("eval", store, *ROLE_ARGS, "--estimator", "all", "--weights", "0.6,0.4,0")
    assert done.returncode == 0, done.stderr
    assert f"estimate: {FALLBACK_ESTIMATOR} (default)" in done.stdout
    assert f"estimate: {CALIBRATED_ESTIMATOR}" not in done.stdout
    assert f"note: {CALIBRATED_ESTIMATOR} left out" in done.stderr and "approxft calibrate" in done.stderr
    assert main(["eval", store, *ROLE_ARGS, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["blend"]["estimator"] == FALLBACK_ESTIMATOR
    assert main(["eval", store, *ROLE_ARGS, "--estimator", CALIBRATED_ESTIMATOR]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has none" in err and f"approxft calibrate {store} --deep DIR" in err

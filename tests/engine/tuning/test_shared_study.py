"""Several ``approxft tune`` processes on one study: created once, with its record, before anyone
uses it; exactly the number of complete trials asked for; a killed process's running trials do
not block a resume; a study made on one store refuses another of the same size and models."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import optuna
import pytest

from engine import open_dataset
from engine.tuning.tpe import STUDY_ATTR, StudyMismatch, tpe_search
from engine.tuning.workers import STALE_ATTR, SURPLUS_ATTR
from ingest import ingest_responses
from tests.helpers import GOLDEN_DIR, GRIMM_ROLES
from tests.postgres import postgres_server

from .study_tools import STUDY, states, study, tune, tune_command


@pytest.fixture(scope="module")
def store(golden_dataset):
    return golden_dataset.store.path


@pytest.fixture
def storage(request, tmp_path):
    """A new study's storage of the kind ``request.param``: a journal file, a SQLite file, or a
    database on a real PostgreSQL server of the test's own (``tests.postgres``)."""
    if request.param == "postgresql":
        with postgres_server() as url:
            yield url
    else:
        yield tmp_path / "study.journal" if request.param == "journal" else f"sqlite:///{tmp_path / 'study.db'}"


@pytest.mark.parametrize("storage", ["journal", "sqlite", "postgresql"], indirect=True)
def test_two_processes_starting_one_new_study_finish_exactly_the_trials_asked(store, storage):
    procs = [subprocess.Popen(tune_command(store, storage, 50), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0 and "Traceback" not in err and "error:" not in err, err
        assert json.loads(out)["trials"] == 50
    counts = states(storage)
    assert counts["COMPLETE"] == 50 and set(counts) <= {"COMPLETE", "FAIL"}
    shared = study(storage)
    assert shared.user_attrs[STUDY_ATTR]["store"] == open_dataset(store).fingerprint
    # Trials beyond the 50 were given back before they ran, each saying why.
    assert all(SURPLUS_ATTR in t.user_attrs for t in shared.trials if t.state.name == "FAIL")
    # The optimum: each process reports the study's best when it ends, so the one that ended last
    # reports the best of all 50 trials, whose value is the objective at those weights.
    complete = [t for t in shared.trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    reports = [json.loads(out)["best"] for out, _ in outs]
    assert min(r["details"]["val"]["mean_nll"] for r in reports) == pytest.approx(best.value, rel=1e-12)
    assert any(r["params"] == best.params for r in reports)
    blend = open_dataset(store).blend(**GRIMM_ROLES)
    weights = np.array([best.params[f"a_{role}"] for role in ("big", "tuned", "untuned")])
    assert blend.mean_nll(weights, split="val") == pytest.approx(best.value, rel=1e-12)


def test_a_killed_process_does_not_block_the_resume(store, tmp_path):
    journal = tmp_path / "study.journal"
    proc = subprocess.Popen(tune_command(store, journal, 100_000), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # killed past its first batch, while it has trials running
        deadline = time.monotonic() + 300
        while not (journal.exists() and journal.stat().st_size >= 12_000 and states(journal)["RUNNING"]):
            assert time.monotonic() < deadline and proc.poll() is None, "the tune process never got that far"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = states(journal)
    assert before["RUNNING"] > 0
    target = before["COMPLETE"] + 10
    resumed = tune(store, journal, target)
    assert resumed.returncode == 0, resumed.stderr
    after = states(journal)
    assert after["COMPLETE"] == target and after["RUNNING"] == 0
    # The killed process's running trials were failed, saying why.
    stale = [t for t in study(journal).trials if STALE_ATTR in t.user_attrs]
    assert len(stale) == before["RUNNING"] and all(t.state.name == "FAIL" for t in stale)
    assert all(f"its process {proc.pid} " in t.user_attrs[STALE_ATTR] for t in stale)


def test_a_search_that_raised_leaves_no_trial_that_blocks_the_next_in_the_same_process(golden_dataset, tmp_path):
    blend = golden_dataset.blend(**GRIMM_ROLES)

    class Interrupted:
        dataset, models, estimator = blend.dataset, blend.models, blend.estimator

        def tuning_count(self, split, min_context=1):
            return blend.tuning_count(split, min_context)

        def mean_nll(self, weights, *, split, min_context=1):
            raise KeyboardInterrupt

    storage = str(tmp_path / "study.journal")
    with pytest.raises(KeyboardInterrupt):
        tpe_search(Interrupted(), "loglinear", trials=8, batch=8, storage=storage, study_name=STUDY)
    assert states(storage)["RUNNING"] == 8
    found = tpe_search(blend, "loglinear", trials=8, batch=8, storage=storage, study_name=STUDY)
    assert found.trials == 8 and states(storage) == {"COMPLETE": 8, "FAIL": 8}


def test_a_study_made_on_one_store_refuses_another_of_the_same_size_and_models(golden_dataset, tmp_path):
    lines = [json.loads(line) for line in (GOLDEN_DIR / "requests.jsonl").read_text().splitlines()]
    lines[0]["split"], lines[1]["split"] = lines[1]["split"], lines[0]["split"]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    files = sorted(p for p in GOLDEN_DIR.iterdir() if p.name.startswith("grimm-"))
    other = open_dataset(ingest_responses(files, requests=tmp_path / "requests.jsonl", out=tmp_path / "other",
                                          vocab_size=golden_dataset.vocab_size))
    assert other.n_positions == golden_dataset.n_positions and other.models == golden_dataset.models
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tpe_search(golden_dataset.blend(**GRIMM_ROLES), "loglinear", trials=8, batch=8, storage=url, study_name=STUDY)
    before = (tmp_path / "study.db").read_bytes()
    with pytest.raises(StudyMismatch, match=f'"store": "{other.fingerprint}"'):
        tpe_search(other.blend(**GRIMM_ROLES), "loglinear", trials=16, batch=8, storage=url, study_name=STUDY)
    assert (tmp_path / "study.db").read_bytes() == before


def test_a_study_recorded_before_fingerprints_resumes_on_a_store_of_its_size(golden_dataset, tmp_path):
    blend = golden_dataset.blend(**GRIMM_ROLES)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tpe_search(blend, "loglinear", trials=8, batch=8, storage=url, study_name=STUDY)
    old = optuna.load_study(study_name=STUDY, storage=url)
    record = {k: v for k, v in old.user_attrs[STUDY_ATTR].items() if k != "store"}
    old.set_user_attr(STUDY_ATTR, record)
    assert tpe_search(blend, "loglinear", trials=16, batch=8, storage=url, study_name=STUDY).trials == 16
    old.set_user_attr(STUDY_ATTR, {**record, "positions": record["positions"] + 1})
    with pytest.raises(StudyMismatch):
        tpe_search(blend, "loglinear", trials=24, batch=8, storage=url, study_name=STUDY)

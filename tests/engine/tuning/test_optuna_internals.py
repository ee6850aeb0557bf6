"""The Optuna internals ``engine.tuning.workers`` relies on, where Optuna has no public way:
``study._storage`` and ``study._study_id`` (to make a running trial with its owner in one storage
operation, and to set an attribute of another search's trial), ``Trial._trial_id`` and
``FrozenTrial._trial_id``, and the trial cache Optuna's samplers read
(``study._thread_local.cached_all_trials``, reset as ``Study.ask`` does). pyproject.toml bounds
optuna below the next major version; this test says what changed if a release drops one."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from engine.tuning.workers import OWNER_ATTR, SharedSearch

DISTRIBUTIONS = {"x": FloatDistribution(0.0, 1.0)}


def changed(what: str) -> str:
    return (f"optuna {optuna.__version__} changed {what}, which engine/tuning/workers.py relies on (SharedSearch): "
            "adapt it, or bound optuna below this version in pyproject.toml")


def test_the_optuna_internals_shared_searches_use_are_there():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    try:
        storage, study_id = study._storage, study._study_id
        with SharedSearch(study, 3) as search:
            [first] = search.ask(DISTRIBUTIONS, 1)
            search.tell(first, 0.5)
            cached = study._get_trials(deepcopy=False, use_cache=True)  # what the samplers see, now cached
            [second] = search.ask(DISTRIBUTIONS, 1)
            seen = study._get_trials(deepcopy=False, use_cache=True)
            frozen = study.get_trials(deepcopy=False)
            ids = first._trial_id, second._trial_id, frozen[0]._trial_id, frozen[1]._trial_id
    except AttributeError as err:
        pytest.fail(changed(f"an attribute ({err})"))
    assert isinstance(storage, optuna.storages.BaseStorage), changed("study._storage")
    assert storage.get_study_id_from_name(study.study_name) == study_id, changed("study._study_id")
    assert ids[:2] == ids[2:], changed("Trial._trial_id or FrozenTrial._trial_id")
    assert [t.number for t in cached] == [0], changed("when the samplers' trial cache fills")
    assert [t.number for t in seen] == [0, 1], changed("the samplers' trial cache (study._thread_local."
                                                       "cached_all_trials): a new trial stays unseen")
    assert frozen[1].state == TrialState.RUNNING and OWNER_ATTR in frozen[1].user_attrs

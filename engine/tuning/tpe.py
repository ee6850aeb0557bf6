"""Blend search with Optuna: TPE over any named parametrization, in batches of trials.

The objective is a thin wrapper over ``Blend.mean_nll`` (or any ``Objective``'s): ask B trials, evaluate all B weight
vectors in one kernel pass over the tuning split, tell. Tuning only ever reads one split
(``val`` by default); reporting on ``test`` is the caller's next step.

Storage: ``None`` (in memory), a journal file path (cheapest per trial), or an RDB URL such as
``sqlite:///study.db`` or ``postgresql://...`` (shared by several processes or machines; see
``engine.tuning.storage``). A study remembers what it tunes (parametrization, search space,
models, estimator, split, minimum context, and the store: its size and fingerprint); reopening it
for anything else is an error, and the study is left as it was. Searches sharing a study
(``engine.tuning.workers``) end it with exactly the number of complete trials asked for.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.exceptions import DuplicatedStudyError
from optuna.trial import TrialState

from ..blend import BATCH
from ..params import Parametrization, get_parametrization
from .objective import Objective
from .storage import creation_lock, open_storage, storage_errors
from .workers import SharedSearch

__all__ = ["SearchResult", "tpe_search", "StudyMismatch"]

STUDY_ATTR = "approxft"
"""The study user attribute that records what the study tunes."""

Progress = Callable[[int, int, float], None]
"""``progress(done, total, best_mean_nll)``, called after every batch."""


class StudyMismatch(ValueError):
    """An existing study was created for another search space or objective."""


@dataclass(frozen=True)
class SearchResult:
    """The best trial of a study.

    Attributes:
        parametrization: the parametrization searched.
        params: float64 ``(P,)``, the best parameters (completed with defaults).
        weights: float64 ``(N,)``, their blend weights.
        mean_nll: the best mean NLL on the tuning split, nats.
        trials: complete trials in the study.
        seconds: wall time of this call.
        study_name: the study's name.
        history: float64 ``(trials,)``, each complete trial's mean NLL in trial order.
    """

    parametrization: Parametrization
    params: np.ndarray
    weights: np.ndarray
    mean_nll: float
    trials: int
    seconds: float
    study_name: str
    history: np.ndarray


def _distributions(param: Parametrization) -> dict[str, FloatDistribution]:
    return {name: FloatDistribution(lo, hi, log=log) for name, (lo, hi, log) in param.space.items()}


def _objective_record(param: Parametrization, blend: Objective, split: str, min_context: int) -> dict:
    return {
        "parametrization": param.name,
        "space": {k: list(v) for k, v in param.space.items()},
        **({"fixed": dict(param.fixed)} if param.fixed else {}),
        "models": list(blend.models),
        "estimator": blend.estimator,
        "split": split,
        "min_context": min_context,
        "positions": blend.dataset.n_positions,
        "store": blend.dataset.fingerprint,
    }


RECORD_WAIT = 30.0
"""Seconds a search waits for the creator of a study in a server database other than PostgreSQL
to record what it tunes (a journal or SQLite file, or a PostgreSQL database, is locked while a
study is created and recorded instead: ``creation_lock``)."""


def _open_study(url: str | None, name: str, seed: int, record: dict) -> optuna.Study:
    """Load the study ``name`` or create it, with ``record`` (what it tunes) set before any other
    search can use it: a journal or SQLite file, or a PostgreSQL database, is locked meanwhile
    (``creation_lock``); another server database's study is awaited until its creator has
    recorded it (``RECORD_WAIT``)."""
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    with creation_lock(url) as locked:
        storage = open_storage(url)
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize")
        except DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        else:
            study.set_user_attr(STUDY_ATTR, record)
            return study
        found = _recorded(study, locked=locked)
        if found is None and not study.get_trials(deepcopy=False):
            # A creator that died before recording: nobody has used the study, so it is this one's.
            study.set_user_attr(STUDY_ATTR, record)
            return study
    if not _same_objective(found, record):
        raise StudyMismatch(
            f"study {name!r} was created for {json.dumps(found, sort_keys=True)}, "
            f"not {json.dumps(record, sort_keys=True)}; use another --study name"
        )
    return study


def _same_objective(found: object, record: dict) -> bool:
    """Whether a study's record is ``record``. A study made before records held the store's
    fingerprint is compared without it: its store's size and models still must match."""
    if isinstance(found, dict) and "store" not in found:
        record = {k: v for k, v in record.items() if k != "store"}
    return found == record


def _recorded(study: optuna.Study, *, locked: bool) -> dict | None:
    """The study's record; in a server database, waits for it up to ``RECORD_WAIT``."""
    deadline = time.monotonic() + (0 if locked else RECORD_WAIT)
    while True:
        found = study.user_attrs.get(STUDY_ATTR)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


FAILED_TRIALS = 100
"""A search stops with an error once this many of its trials (or as many as it was asked for, if
more) gave no finite NLL, rather than asking for ever."""


def tpe_search(
    blend: Objective,
    parametrization: str,
    *,
    trials: int = 100,
    batch: int = BATCH,
    seed: int = 0,
    split: str = "val",
    min_context: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    progress: Progress | None = None,
    fixed: Mapping[str, float] | None = None,
) -> SearchResult:
    """Run TPE until the study holds ``trials`` complete trials (a resumed study runs the rest).

    Args:
        blend: the blend to tune (its estimator is the one tuned under).
        parametrization: a name from ``engine.params.PARAMETRIZATIONS`` (``loglinear``: one weight
            per model of the blend).
        trials: complete trials wanted in the study.
        batch: trials asked before one kernel pass evaluates them all.
        seed: the TPE sampler's seed (a fresh in-memory study is reproducible).
        split, min_context: the positions tuned on.
        storage, study_name: see ``engine.tuning.storage.open_storage``; the name defaults to
            one derived from the parametrization and estimator.
        fixed: parameters held at a value (``Parametrization.with_fixed``); TPE searches the rest.

    Raises:
        ValueError: unknown parametrization (or one for another number of models), a bad fixed
            parameter, empty split, unusable storage (``StorageError``: it
            cannot be opened, read or written, a full disk say), a study created for something
            else (``StudyMismatch``), or ``FAILED_TRIALS`` trials without a finite NLL.
    """
    start = time.perf_counter()
    param = get_parametrization(parametrization, len(blend.models))
    if fixed:
        param = param.with_fixed(fixed)
    if trials < 1 or batch < 1:
        raise ValueError(f"trials and batch must be positive, got {trials} and {batch}")
    blend.tuning_count(split, min_context)  # validates the split
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or f"approxft-{param.name}-{blend.estimator}"
    with storage_errors(storage):
        study = _open_study(storage, name, seed, _objective_record(param, blend, split, min_context))
        distributions = _distributions(param)
        failed = 0
        with SharedSearch(study, trials) as search:
            while asked := search.ask(distributions, batch):
                params = [param.point(t.params) for t in asked]
                try:
                    values = blend.mean_nll(np.array([param.weights(p) for p in params]), split=split,
                                            min_context=min_context)
                except Exception:
                    # E.g. a Ray worker lost for good: the trials fail now, rather than holding
                    # up other searches of a shared study until they count as stale.
                    for trial in asked:
                        search.tell(trial, None)
                    raise
                for trial, value in zip(asked, values, strict=True):
                    finite = math.isfinite(value)
                    search.tell(trial, float(value) if finite else None)
                    failed += not finite
                done = search.complete()
                if failed >= max(FAILED_TRIALS, trials):
                    raise ValueError(f"study {name!r}: {failed} trials gave no finite NLL ({done} of {trials} complete); "
                                     f"stopping: the {blend.estimator} estimate is not finite over much of this search space")
                if progress is not None:
                    progress(done, trials, study.best_value if done else math.nan)
            done = search.complete()
        if done == 0:
            raise ValueError(f"study {name!r}: no trial gave a finite NLL")
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best_params, best_value = study.best_params, float(study.best_value)
    best = param.point(best_params)
    return SearchResult(
        parametrization=param,
        params=best,
        weights=param.weights(best),
        mean_nll=best_value,
        trials=done,
        seconds=time.perf_counter() - start,
        study_name=name,
        history=np.array([t.value for t in sorted(finished, key=lambda t: t.number)]),
    )

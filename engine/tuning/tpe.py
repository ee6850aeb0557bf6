"""Blend search with Optuna: TPE over any named parametrization, in batches of trials.

The objective is a thin wrapper over ``Blend.mean_nll`` (or any ``Objective``'s): ask B trials, evaluate all B weight
vectors in one kernel pass over the tuning split, tell. Tuning only ever reads one split
(``val`` by default); reporting on ``test`` is the caller's next step.

Storage: ``None`` (in memory), a journal file path (cheapest per trial), or an RDB URL such as
``sqlite:///study.db`` or ``postgresql://...`` (shared by several processes or machines). A
study remembers what it tunes (parametrization, search space, models, estimator, split, minimum
context); reopening it for anything else is an error, and the study is left as it was.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from ..blend import BATCH
from ..params import Parametrization, get_parametrization
from .objective import Objective

__all__ = ["SearchResult", "tpe_search", "open_storage", "StudyMismatch"]

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
        weights: float64 ``(3,)``, their blend weights.
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


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """``None`` -> in memory; ``scheme://...`` -> RDB storage; anything else -> a journal file.

    Raises:
        ValueError: the storage cannot be opened (named, with the reason).
    """
    if url is None:
        return None
    try:
        if "://" in url:
            return optuna.storages.RDBStorage(url)
        path = Path(url)
        if path.parent and not path.parent.is_dir():
            raise FileNotFoundError(f"no directory {path.parent}")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except Exception as err:  # optuna/sqlalchemy raise many types; the user needs one line
        raise ValueError(f"storage {url!r} cannot be opened: {err}") from None


def _distributions(param: Parametrization) -> dict[str, FloatDistribution]:
    return {name: FloatDistribution(lo, hi, log=log) for name, (lo, hi, log) in param.space.items()}


def _objective_record(param: Parametrization, blend: Objective, split: str, min_context: int) -> dict:
    return {
        "parametrization": param.name,
        "space": {k: list(v) for k, v in param.space.items()},
        "models": list(blend.models),
        "estimator": blend.estimator,
        "split": split,
        "min_context": min_context,
        "positions": blend.dataset.n_positions,
    }


def _open_study(storage, name: str, seed: int, record: dict) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if storage is not None:
        try:
            existing = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            existing = None
        if existing is not None:
            found = existing.user_attrs.get(STUDY_ATTR)
            if found != record:
                raise StudyMismatch(
                    f"study {name!r} was created for {json.dumps(found, sort_keys=True)}, "
                    f"not {json.dumps(record, sort_keys=True)}; use another --study name"
                )
            return existing
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize")
    study.set_user_attr(STUDY_ATTR, record)
    return study


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
) -> SearchResult:
    """Run TPE until the study holds ``trials`` complete trials (a resumed study runs the rest).

    Args:
        blend: the blend to tune (its estimator is the one tuned under).
        parametrization: a name from ``engine.params.PARAMETRIZATIONS``.
        trials: complete trials wanted in the study.
        batch: trials asked before one kernel pass evaluates them all.
        seed: the TPE sampler's seed (a fresh in-memory study is reproducible).
        split, min_context: the positions tuned on.
        storage, study_name: see ``open_storage``; the name defaults to one derived from the
            parametrization and estimator.

    Raises:
        ValueError: unknown parametrization, empty split, unusable storage, a study created
            for something else (``StudyMismatch``), or ``FAILED_TRIALS`` trials without a finite NLL.
    """
    start = time.perf_counter()
    param = get_parametrization(parametrization)
    if trials < 1 or batch < 1:
        raise ValueError(f"trials and batch must be positive, got {trials} and {batch}")
    blend.tuning_group(split, min_context)  # validates the split
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or f"approxft-{param.name}-{blend.estimator}"
    study = _open_study(open_storage(storage), name, seed, _objective_record(param, blend, split, min_context))
    distributions = _distributions(param)

    def complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    done, failed = complete(), 0
    while done < trials:
        asked = [study.ask(distributions) for _ in range(min(batch, trials - done))]
        params = [param.complete([t.params[n] for n in param.space]) for t in asked]
        values = blend.mean_nll(np.array([param.weights(p) for p in params]), split=split, min_context=min_context)
        for trial, value in zip(asked, values, strict=True):
            if math.isfinite(value):
                study.tell(trial, float(value))
            else:
                study.tell(trial, state=TrialState.FAIL)
                failed += 1
        done = complete()
        if failed >= max(FAILED_TRIALS, trials):
            raise ValueError(f"study {name!r}: {failed} trials gave no finite NLL ({done} of {trials} complete); "
                             f"stopping: the {blend.estimator} estimate is not finite over much of this search space")
        if progress is not None:
            progress(done, trials, study.best_value if done else math.nan)
    if done == 0:
        raise ValueError(f"study {name!r}: no trial gave a finite NLL")
    best = param.complete([study.best_params[n] for n in param.space])
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return SearchResult(
        parametrization=param,
        params=best,
        weights=param.weights(best),
        mean_nll=float(study.best_value),
        trials=done,
        seconds=time.perf_counter() - start,
        study_name=name,
        history=np.array([t.value for t in sorted(finished, key=lambda t: t.number)]),
    )

"""Tuning a blend on ``val``: Optuna TPE over any parametrization (``tpe``), exact Newton over
log-linear weights (``newton``), and ``tune``, which runs either and reports the best blend on
every split. Both tune an ``Objective`` (``objective``): a ``Blend``, through which they reach
the kernels, or the exact oracle (``engine.oracle``)."""

from .newton import NewtonResult, newton_search
from .objective import Objective
from .storage import StorageError, open_storage
from .tpe import SearchResult, StudyMismatch, tpe_search
from .tune import METHODS, OBJECTIVES, Tuned, tune

__all__ = ["NewtonResult", "newton_search", "Objective", "SearchResult", "StorageError", "StudyMismatch", "open_storage",
           "tpe_search",
           "METHODS", "OBJECTIVES", "Tuned", "tune"]

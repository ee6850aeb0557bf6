"""Tuning a blend on ``val``: Optuna TPE over any parametrization (``tpe``), exact Newton over
log-linear weights (``newton``), and ``tune``, which runs either and reports the best blend on
every split. Both reach the kernels only through ``Blend``."""

from .newton import NewtonResult, newton_search
from .tpe import SearchResult, StudyMismatch, open_storage, tpe_search
from .tune import METHODS, Tuned, tune

__all__ = ["NewtonResult", "newton_search", "SearchResult", "StudyMismatch", "open_storage", "tpe_search",
           "METHODS", "Tuned", "tune"]

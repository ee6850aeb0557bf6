"""approxft's evaluation engine: blend kernels, estimators, metrics and the batch API.

Start with ``open_dataset`` (see ``engine.dataset`` for an example).
"""

from .dataset import Blend, Dataset, Report, open_dataset
from .estimators import DEFAULT_ESTIMATOR, ESTIMATORS, get_estimator
from .metrics import Figures
from .params import PARAMETRIZATIONS, get_parametrization

__all__ = [
    "Blend",
    "Dataset",
    "Report",
    "Figures",
    "open_dataset",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "get_estimator",
    "PARAMETRIZATIONS",
    "get_parametrization",
]

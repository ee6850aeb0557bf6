"""approxft's evaluation engine: blend kernels, estimators, metrics and the batch API.

Start with ``open_dataset`` (see ``engine.dataset`` for an example).
"""

from .dataset import Blend, Dataset, Report, open_dataset
from .dataset_calibration import calibrate
from .estimators import ESTIMATORS, FALLBACK_ESTIMATOR, default_estimator, get_estimator
from .metrics import Figures
from .params import PARAMETRIZATIONS, get_parametrization

__all__ = [
    "Blend",
    "Dataset",
    "Report",
    "Figures",
    "open_dataset",
    "calibrate",
    "ESTIMATORS",
    "FALLBACK_ESTIMATOR",
    "default_estimator",
    "get_estimator",
    "PARAMETRIZATIONS",
    "get_parametrization",
]

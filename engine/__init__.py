"""approxft's evaluation engine: from a store to blended figures, tuned blends and generated text.

Stages, each importing only those before it: ``kernels`` (Numba blend, gradient and Hessian
kernels) and ``candidates`` (their inputs) -> ``estimators`` (filling what top-k data leaves
out) and ``calibration`` (fits on deep samples) -> ``dataset`` (``Dataset`` and ``Blend``, the
one route to the kernels) -> ``evaluation``, ``tuning``, ``generation``, ``plot``, ``demo`` ->
``cli``. Start with ``open_dataset`` (see ``engine.dataset`` for an example).
"""

from .blend import Blend
from .dataset import Dataset, open_dataset
from .estimators import ESTIMATORS, FALLBACK_ESTIMATOR, default_estimator, get_estimator
from .masked_blend import masked_blend
from .masks import Mask
from .params import PARAMETRIZATIONS, get_parametrization
from .report import Figures, Report
from .terms import Term, parse_blend

__all__ = [
    "Blend",
    "Dataset",
    "Report",
    "Figures",
    "open_dataset",
    "ESTIMATORS",
    "FALLBACK_ESTIMATOR",
    "default_estimator",
    "get_estimator",
    "PARAMETRIZATIONS",
    "get_parametrization",
    "Term",
    "parse_blend",
    "Mask",
    "masked_blend",
]

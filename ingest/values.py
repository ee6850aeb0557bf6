"""JSON values that must be numbers or token ids, checked one way wherever they enter (response
files, next-token answers, serve's requests, tuned blends, transcripts, calibration fits).

``json.loads`` reads an integer exactly, however long (up to Python's 4300 digits): ``10**400`` is
an ``int`` that ``float()``, ``math.isfinite`` and ``numpy`` refuse with ``OverflowError``. So a
number is checked here, once, before any arithmetic: booleans (``true`` is an ``int`` to Python)
and integers too large for a float are not numbers.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LP_TOLERANCE", "MAX_VOCAB_SIZE", "number", "finite_number", "is_integer", "is_token_id"]

LP_TOLERANCE = 1e-4
"""Largest log-probability accepted above 0, nats (float rounding of a certain token); beyond it
a value is not a log-probability."""
MAX_VOCAB_SIZE = 2**31 - 1
"""Largest vocabulary size: token ids are int32 (a store's tables, the kernels' arrays)."""


def number(value: Any) -> float | None:
    """``value`` as a float where it is a JSON number: an integer a float can hold, or a float
    (NaN and ±inf included, as ``json.loads`` reads ``NaN``, ``Infinity`` and ``1e400``); None
    for anything else: a boolean, a string, null, a container, or an integer too large."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def finite_number(value: Any) -> float | None:
    """``value`` as a float where it is a finite JSON number (``number``, NaN and ±inf refused);
    None otherwise."""
    x = number(value)
    return x if x is not None and math.isfinite(x) else None


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a JSON integer (a boolean is not); any size: compare it before use."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_token_id(value: Any, vocab_size: int | None = None) -> bool:
    """Whether ``value`` is a token id: an integer >= 0, and below ``vocab_size`` where given."""
    return is_integer(value) and value >= 0 and (vocab_size is None or value < vocab_size)

"""Blend parametrizations: named ways of writing the weights of a log-linear blend.

Every parametrization maps its parameter vector to the weights ``a = (a_B, a_T, a_U)`` of

    log p(x) = a_B·lp_B(x) + a_T·lp_T(x) + a_U·lp_U(x) − log Z

(big, small tuned, small untuned; natural logs). The kernels only ever see weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["ROLES", "Parametrization", "PARAMETRIZATIONS", "get_parametrization"]

ROLES = ("big", "tuned", "untuned")
"""The blend's roles, in the order of its weights: the big model, the small tuned model and its
untuned base."""


@dataclass(frozen=True)
class Parametrization:
    """A named map from a parameter vector to blend weights.

    Attributes:
        name: registry name (``loglinear``, ``temperatures``).
        names: the parameter names, in order; ``optional`` trailing ones may be left out.
        optional: how many trailing parameters may be omitted (they take their defaults).
        defaults: default values of the optional trailing parameters.
        description: one line for help texts.
        space: the search space for tuning: ``{name: (low, high, log_scale)}``; parameters left
            out (e.g. the temperatures parametrization's ``w``) keep their defaults while tuning.
    """

    name: str
    names: tuple[str, ...]
    optional: int
    defaults: tuple[float, ...]
    description: str
    space: dict[str, tuple[float, float, bool]]
    _to_weights: Callable[[np.ndarray], np.ndarray]
    _from_weights: Callable[[np.ndarray], np.ndarray | None]

    def complete(self, params: "np.ndarray | list[float] | tuple[float, ...]") -> np.ndarray:
        """Validate a parameter vector and fill omitted optional parameters.

        Returns:
            float64 array of shape ``(len(names),)``.

        Raises:
            ValueError: wrong number of parameters, non-finite values, or a value outside the
                parametrization's domain (e.g. a non-positive temperature).
        """
        p = np.asarray(params, dtype=np.float64).ravel()
        required = len(self.names) - self.optional
        if not required <= p.size <= len(self.names):
            expected = ",".join(self.names)
            raise ValueError(
                f"parametrization {self.name!r} takes {required}"
                f"{'' if not self.optional else f' to {len(self.names)}'} values ({expected}), got {p.size}"
            )
        if not np.all(np.isfinite(p)):
            raise ValueError(f"parametrization {self.name!r}: parameters must be finite, got {p.tolist()}")
        missing = len(self.names) - p.size
        if missing:
            p = np.concatenate([p, np.asarray(self.defaults[self.optional - missing :], dtype=np.float64)])
        return p

    def weights(self, params: "np.ndarray | list[float] | tuple[float, ...]") -> np.ndarray:
        """Blend weights ``(a_B, a_T, a_U)`` for a parameter vector: float64 array of shape (3,)."""
        return self._to_weights(self.complete(params))

    def from_weights(self, weights: "np.ndarray | list[float]") -> np.ndarray | None:
        """Parameters giving ``weights`` (float64 ``(3,)``), or None where none do."""
        return self._from_weights(np.asarray(weights, dtype=np.float64).reshape(3))

    def describe(self, params: "np.ndarray | list[float] | tuple[float, ...]") -> dict[str, float]:
        """The completed parameters as a ``{name: value}`` mapping (for reports and JSON)."""
        return dict(zip(self.names, self.complete(params).tolist(), strict=True))


def _loglinear(p: np.ndarray) -> np.ndarray:
    return p.copy()


def _temperatures_from_weights(a: np.ndarray) -> np.ndarray | None:
    # With w = 1: a = (1/T_B, 1/T_T, -1/T_U), so the signs must be (+, +, -).
    a_big, a_tuned, a_untuned = a
    if a_big <= 0 or a_tuned <= 0 or a_untuned >= 0:
        return None
    return np.array([1.0 / a_big, 1.0 / a_tuned, -1.0 / a_untuned, 1.0])


def _temperatures(p: np.ndarray) -> np.ndarray:
    t_big, t_tuned, t_untuned, w = p
    if min(t_big, t_tuned, t_untuned) <= 0:
        raise ValueError(f"parametrization 'temperatures': temperatures must be positive, got {p[:3].tolist()}")
    return np.array([1.0 / t_big, w / t_tuned, -w / t_untuned])


PARAMETRIZATIONS: dict[str, Parametrization] = {
    p.name: p
    for p in (
        Parametrization(
            name="loglinear",
            names=("a_big", "a_tuned", "a_untuned"),
            optional=0,
            defaults=(),
            description="the weights themselves: a_B·lp_B + a_T·lp_T + a_U·lp_U",
            space={"a_big": (0.0, 2.0, False), "a_tuned": (-1.0, 3.0, False), "a_untuned": (-3.0, 1.0, False)},
            _to_weights=_loglinear,
            _from_weights=_loglinear,
        ),
        Parametrization(
            name="temperatures",
            names=("T_big", "T_tuned", "T_untuned", "w"),
            optional=1,
            defaults=(1.0,),
            description="the prototype's temperatures: lp_B/T_B + w·(lp_T/T_T − lp_U/T_U), w = 1 unless given",
            space={"T_big": (0.05, 5.0, True), "T_tuned": (0.05, 10.0, True), "T_untuned": (0.05, 10.0, True)},
            _to_weights=_temperatures,
            _from_weights=_temperatures_from_weights,
        ),
    )
}


def get_parametrization(name: str) -> Parametrization:
    """Look up a parametrization by name; ``ValueError`` listing the known names otherwise."""
    try:
        return PARAMETRIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown parametrization {name!r}; known: {', '.join(PARAMETRIZATIONS)}") from None

"""Blend parametrizations: named ways of writing the weights of a log-linear blend.

A blend of N models (its terms, in order) has weights ``a = (a_1, ..., a_N)``:

    log p(x) = a_1·lp_1(x) + ... + a_N·lp_N(x) − log Z

(natural logs). ``loglinear`` is the weights themselves, for any N. The named formulas of the
published methods are maps from their own parameters to the weights of three models in the roles
of ``ROLES`` (big, small tuned, small untuned): a blend given by the three role flags, or any
three-term blend, its terms read in that order. The kernels only ever see weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .masks import Mask

__all__ = ["ROLES", "Parametrization", "PARAMETRIZATIONS", "get_parametrization", "loglinear"]

ROLES = ("big", "tuned", "untuned")
"""The roles of a three-model blend, in the order of its weights: the big model, the small tuned
model and its untuned base (the role flags ``--big --tuned --untuned`` are a shorthand for a
three-term blend in this order)."""

LOGLINEAR_RANGE = (-3.0, 3.0)
"""TPE's search range of each weight of a ``loglinear`` blend of other than three models."""


@dataclass(frozen=True)
class Parametrization:
    """A named map from a parameter vector to blend weights.

    Attributes:
        name: registry name (``loglinear``, ``proxy-tuning``, ...).
        names: the parameter names, in order; ``optional`` trailing ones may be left out.
        optional: how many trailing parameters may be omitted (they take their defaults).
        defaults: default values of the optional trailing parameters.
        description: one line for help texts.
        reference: where the formula comes from.
        space: the search space for tuning: ``{name: (low, high, log_scale)}``; parameters left
            out (e.g. the temperatures parametrization's ``w``) keep their defaults while tuning.
        n_models: how many models the weights are for.
        fixed: parameters held at a value while tuning (``with_fixed``), out of ``space``.
        mask_names: the parameters of the formula's plausibility mask (``mask``), never tuned.
    """

    name: str
    names: tuple[str, ...]
    optional: int
    defaults: tuple[float, ...]
    description: str
    reference: str
    space: dict[str, tuple[float, float, bool]]
    _to_weights: Callable[[np.ndarray], np.ndarray]
    _from_weights: Callable[[np.ndarray], np.ndarray | None]
    n_models: int = 3
    fixed: Mapping[str, float] = field(default_factory=dict)
    mask_names: tuple[str, ...] = ()
    _mask: Callable[[np.ndarray, tuple[str, ...]], Mask] | None = None

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
        bad = [f"{n}={v:g}" for n, v in zip(self.names, p.tolist(), strict=False) if not np.isfinite(v)]
        if bad:
            raise ValueError(f"parametrization {self.name!r}: parameters must be finite, got {', '.join(bad)}")
        missing = len(self.names) - p.size
        if missing:
            p = np.concatenate([p, np.asarray(self.defaults[self.optional - missing :], dtype=np.float64)])
        return p

    def weights(self, params: "np.ndarray | list[float] | tuple[float, ...]") -> np.ndarray:
        """Blend weights for a parameter vector: float64 ``(n_models,)``.

        Raises:
            ValueError: see ``complete``; a parameter outside its domain is named.
        """
        return self._to_weights(self.complete(params))

    def from_weights(self, weights: "np.ndarray | list[float]") -> np.ndarray | None:
        """Parameters giving ``weights`` (float64 ``(n_models,)``), or None where none do."""
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size != self.n_models:
            raise ValueError(f"parametrization {self.name!r} is for {self.n_models} weights, got {w.size}")
        return self._from_weights(w)

    def describe(self, params: "np.ndarray | list[float] | tuple[float, ...]") -> dict[str, float]:
        """The completed parameters as a ``{name: value}`` mapping (for reports and JSON)."""
        return dict(zip(self.names, self.complete(params).tolist(), strict=True))

    def with_fixed(self, fixed: Mapping[str, float]) -> "Parametrization":
        """The same map with the parameters ``fixed`` held at their values while tuning (TPE
        searches the rest of ``space``).

        Raises:
            ValueError: a name that is not a parameter, a value that is not finite, or nothing
                left to search.
        """
        for name, value in fixed.items():
            if name not in self.names:
                raise ValueError(f"--fix {name}: parametrization {self.name!r} has no parameter {name!r}; "
                                 f"it has {', '.join(self.names)}")
            if not np.isfinite(value):
                raise ValueError(f"--fix {name}={value}: the value must be finite")
        space = {n: r for n, r in self.space.items() if n not in fixed}
        if not space:
            raise ValueError(f"parametrization {self.name!r}: every parameter it tunes is fixed; nothing left to search")
        return dataclasses.replace(self, space=space, fixed={**self.fixed, **{n: float(v) for n, v in fixed.items()}})

    def mask(self, params: "np.ndarray | list[float] | tuple[float, ...]", models: tuple[str, ...]) -> Mask | None:
        """The formula's plausibility mask on ``models`` (the blend's, in role order) for a
        parameter vector, or None for a formula without one."""
        return None if self._mask is None else self._mask(self.complete(params), models)

    def search_mask(self, models: tuple[str, ...]) -> Mask | None:
        """The mask a search holds while it tunes the rest: its parameters fixed or at their
        defaults (they are never in ``space``)."""
        if self._mask is None:
            return None
        first = len(self.names) - self.optional
        values = {n: self.fixed.get(n, self.defaults[self.names.index(n) - first]) for n in self.mask_names}
        return self._mask(np.array([values.get(n, np.nan) for n in self.names]), models)

    def point(self, values: Mapping[str, float]) -> np.ndarray:
        """The completed parameter vector of a search point: ``values`` for the parameters searched,
        ``fixed`` ones at their values, optional ones at their defaults."""
        first = len(self.names) - self.optional
        p = []
        for i, name in enumerate(self.names):
            if name in values:
                p.append(values[name])
            elif name in self.fixed:
                p.append(self.fixed[name])
            elif i >= first:
                p.append(self.defaults[i - first])
            else:
                break
        return self.complete(p)


def loglinear(n_models: int) -> Parametrization:
    """The weights themselves for a blend of ``n_models`` models: ``a_big, a_tuned, a_untuned``
    for three (the roles' names), ``a_1 .. a_N`` otherwise."""
    if n_models < 1:
        raise ValueError(f"a blend needs at least one model, got {n_models}")
    if n_models == len(ROLES):
        names = tuple(f"a_{r}" for r in ROLES)
        space = {"a_big": (0.0, 2.0, False), "a_tuned": (-1.0, 3.0, False), "a_untuned": (-3.0, 1.0, False)}
    else:
        names = tuple(f"a_{i + 1}" for i in range(n_models))
        space = {n: (*LOGLINEAR_RANGE, False) for n in names}
    return Parametrization(
        name="loglinear", names=names, optional=0, defaults=(), n_models=n_models,
        description="the weights themselves: a_1·lp_1 + ... + a_N·lp_N, any number of models",
        reference="language-model-arithmetic: Dekoninck et al. 2024, Controlled Text Generation via Language "
                  "Model Arithmetic, ICLR (arXiv:2311.14479)",
        space=space, _to_weights=np.copy, _from_weights=np.copy,
    )


def _temperatures_from_weights(a: np.ndarray) -> np.ndarray | None:
    # With w = 1: a = (1/T_B, 1/T_T, -1/T_U), so the signs must be (+, +, -).
    a_big, a_tuned, a_untuned = a
    if a_big <= 0 or a_tuned <= 0 or a_untuned >= 0:
        return None
    return np.array([1.0 / a_big, 1.0 / a_tuned, -1.0 / a_untuned, 1.0])


def _temperatures(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def to_weights(p: np.ndarray) -> np.ndarray:
        t_big, t_tuned, t_untuned, w = p
        bad = [f"{n}={t:g}" for n, t in zip(("T_big", "T_tuned", "T_untuned"), p[:3].tolist(), strict=True) if t <= 0]
        if bad:
            raise ValueError(f"parametrization {name!r}: temperatures must be positive, got {', '.join(bad)}")
        return np.array([1.0 / t_big, w / t_tuned, -w / t_untuned])

    return to_weights


def _difference(p: np.ndarray) -> np.ndarray:
    """``(1, s, -s)``: the big model plus ``s`` times the small pair's difference."""
    return np.array([1.0, p[0], -p[0]])


def _difference_from_weights(a: np.ndarray) -> np.ndarray | None:
    if not (np.isclose(a[0], 1.0, rtol=0, atol=1e-9) and np.isclose(a[1], -a[2], rtol=0, atol=1e-9)):
        return None
    return np.array([a[1]])


def _temperature_formula(name: str, description: str, reference: str) -> Parametrization:
    return Parametrization(
        name=name, names=("T_big", "T_tuned", "T_untuned", "w"), optional=1, defaults=(1.0,),
        description=description, reference=reference,
        space={"T_big": (0.05, 5.0, True), "T_tuned": (0.05, 10.0, True), "T_untuned": (0.05, 10.0, True)},
        _to_weights=_temperatures(name), _from_weights=_temperatures_from_weights,
    )


def _unit(name: str, formula: str, p: float) -> None:
    """ValueError naming the parameter where ``p`` is outside (0, 1]."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"parametrization {formula!r}: {name} must be in (0, 1], got {name}={p:g}")


def _dexperts(p: np.ndarray) -> np.ndarray:
    _unit("top_p", "dexperts", p[1])
    return _difference(p)


def _masked_from_weights(a: np.ndarray) -> np.ndarray | None:
    return None  # the parameters of a mask are no function of the weights


def _contrastive(p: np.ndarray) -> np.ndarray:
    _unit("alpha", "contrastive", p[0])
    if p[1] < 0:
        raise ValueError(f"parametrization 'contrastive': beta must be >= 0, got beta={p[1]:g}")
    return np.array([1.0 + p[1], 0.0, -p[1]])


PROTOTYPE = "approxft's prototype (tuned T_big, T_tuned, T_untuned with w = 1)"

PARAMETRIZATIONS: dict[str, Parametrization] = {
    p.name: p
    for p in (
        loglinear(len(ROLES)),
        _temperature_formula(
            "temperatures", "the prototype's temperatures: lp_B/T_B + w·(lp_T/T_T − lp_U/T_U), w = 1 unless given",
            PROTOTYPE),
        _temperature_formula("seed", "the prototype's formula under its name: the same map as temperatures", PROTOTYPE),
        Parametrization(
            name="proxy-tuning", names=("alpha",), optional=1, defaults=(1.0,),
            description="lp_B + α·(lp_T − lp_U), α = 1 unless given",
            reference="Liu et al. 2024, Tuning Language Models by Proxy (arXiv:2401.08565)",
            space={"alpha": (0.0, 3.0, False)}, _to_weights=_difference, _from_weights=_difference_from_weights),
        Parametrization(
            name="eft-upscale", names=("beta",), optional=1, defaults=(1.0,),
            description="EFT up-scaling: lp_B + β·(lp_T − lp_U), the small pair's implicit reward scaled by β "
                        "(β = 1: the paper's up-scaling); the same weights as proxy-tuning at α = β",
            reference="Mitchell et al. 2024, An Emulator for Fine-Tuning Large Language Models using Small "
                      "Language Models, ICLR (arXiv:2310.12962)",
            space={"beta": (0.0, 3.0, False)}, _to_weights=_difference, _from_weights=_difference_from_weights),
        Parametrization(
            name="dexperts", names=("alpha", "top_p"), optional=2, defaults=(2.0, 0.9),
            description="lp_B + α·(lp_T − lp_U) over the big model's top-p tokens (α = 2, top_p = 0.9 unless "
                        "given; only α is tuned)",
            reference="Liu et al. 2021, DExperts: Decoding-Time Controlled Text Generation with Experts and "
                      "Anti-Experts, ACL (arXiv:2105.03023)",
            space={"alpha": (0.0, 3.0, False)}, _to_weights=_dexperts, _from_weights=_masked_from_weights,
            mask_names=("top_p",), _mask=lambda p, models: Mask("top-p", models[0], float(p[1]))),
        Parametrization(
            name="contrastive", names=("alpha", "beta"), optional=2, defaults=(0.1, 0.5),
            description="(1 + β)·lp_B − β·lp_U over the tokens with lp_B >= max lp_B + log α: the big model as "
                        "expert, the untuned small as amateur, the tuned one unused (α = 0.1, β = 0.5 unless "
                        "given; only β is tuned)",
            reference="Li et al. 2023, Contrastive Decoding: Open-ended Text Generation as Optimization, ACL "
                      "(arXiv:2210.15097); the β form: O'Brien and Lewis 2023 (arXiv:2309.09117)",
            space={"beta": (0.0, 3.0, False)}, _to_weights=_contrastive, _from_weights=_masked_from_weights,
            mask_names=("alpha",), _mask=lambda p, models: Mask("relative", models[0], float(p[0]))),
    )
}


def get_parametrization(name: str, n_models: int = len(ROLES)) -> Parametrization:
    """Look up a parametrization by name for a blend of ``n_models`` models.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a formula over three
            models asked for a blend of another number.
    """
    if name == "loglinear":
        return loglinear(n_models)
    try:
        p = PARAMETRIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown parametrization {name!r}; known: {', '.join(PARAMETRIZATIONS)}") from None
    if p.n_models != n_models:
        raise ValueError(f"parametrization {name!r} is a formula over {p.n_models} models ({', '.join(ROLES)}); "
                         f"this blend has {n_models}: give its weights (loglinear)")
    return p

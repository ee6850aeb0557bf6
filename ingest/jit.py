"""Numba compile options: the one home of the flags every kernel of approxft is compiled with
(ingest's union layout, engine's blend kernels and estimator fills).

- ``cache=True`` everywhere: compiled code is kept on disk, so only the first run compiles.
- ``error_model="numpy"``: a float division by zero gives inf/NaN instead of a Python exception,
  whose check on every division stops LLVM from vectorizing the loop around it.
- ``FASTMATH`` only where a kernel is written for it (the blend kernels, ``KERNEL``): the flags
  that keep ``inf``/``nan`` semantics (no ``nnan``/``ninf``: log-probabilities hold -inf).
  ``reassoc`` lets LLVM reorder sums into vector lanes; the polynomials that must be evaluated
  as written are compiled without it (``KERNEL_IN_ORDER``).
- ``EXACT`` for the code whose results must be reproducible to the bit whatever LLVM does
  (estimator fills, layouts): IEEE arithmetic in the order written.
"""

from __future__ import annotations

__all__ = ["FASTMATH", "KERNEL", "KERNEL_PARALLEL", "KERNEL_IN_ORDER", "EXACT", "EXACT_PARALLEL"]

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
"""LLVM fast-math flags of the blend kernels: no 'nnan'/'ninf', values hold -inf."""

KERNEL = dict(cache=True, fastmath=set(FASTMATH), error_model="numpy")
"""The blend kernels (``engine.kernels``)."""
KERNEL_PARALLEL = dict(KERNEL, parallel=True)
KERNEL_IN_ORDER = dict(KERNEL, fastmath=set(FASTMATH - {"reassoc"}))
"""Polynomials evaluated exactly as written (``reassoc`` would regroup their terms)."""

EXACT = dict(cache=True, error_model="numpy")
"""IEEE arithmetic in the order written: estimator fills, candidate layouts, calibration fits."""
EXACT_PARALLEL = dict(EXACT, parallel=True)

"""Numba compile options: the one home of the flags every kernel of approxft is compiled with
(ingest's union layout, engine's blend kernels and estimator fills).

- ``cache=True`` everywhere: compiled code is kept on disk, so only the first run compiles; in a
  folder named by a digest of every source file of ``ingest`` and ``engine`` (``CACHE_DIR``).
  Numba keys a cached function by its own file's timestamp alone, so a kernel calling a function
  of another file would keep its old machine code when only that file changed (an estimator's
  fill after an edit of ``engine/estimators/_fill.py``, or a ``git pull`` in an editable
  install): old numbers, silently. The price of the digest is one fresh compile after any source
  change (about 25 s for an evaluation's kernels). ``NUMBA_CACHE_DIR``, where set, is the
  folder's parent; else the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``), ``approxft/numba``.
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

import hashlib
import os
from pathlib import Path

import numba

__all__ = ["CACHE_DIR", "FASTMATH", "KERNEL", "KERNEL_PARALLEL", "KERNEL_IN_ORDER", "EXACT", "EXACT_PARALLEL"]

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


def _cache_dir() -> str:
    """The compiled-code folder for these sources: ``<parent>/<digest>`` (see the module's notes).
    The packages' files are read as files, not imported: nothing of ``engine`` is loaded here."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("ingest", "engine"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    parent = numba.config.CACHE_DIR or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "approxft", "numba")
    return os.path.join(parent, digest.hexdigest()[:16])


CACHE_DIR = _cache_dir()
"""Where every ``cache=True`` function of this process keeps its compiled code."""
numba.config.CACHE_DIR = CACHE_DIR

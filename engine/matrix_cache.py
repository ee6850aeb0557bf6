"""A blend's filled candidate matrix, cached in its store where building it costs more than
reading it back (stores of ``MIN_POSITIONS`` positions or more).

An estimator's fill reads the store's candidate columns and builds the matrix the kernels take:
about 2.5 s (on a quiet 2-core machine) per million positions for ``zipf-tail``, and built whole
its peak memory is the store's columns beside the matrix (1.4 GB per million: hence the pieces
below). Read back from ``<store>/blend-cache/<key>/`` (``ingest.store.BLEND_CACHE_DIR``)
it is a plain file read, about 0.4 s, with only the matrix in memory.

A sharded store's matrices are cached shard by shard, each under its shard's fingerprint, so
appending shards keeps the others' caches, and a store larger than memory is evaluated one
shard's matrix at a time (``shard_matrix``, ``engine.streaming``). An unsharded store of more than
``PIECE_POSITIONS`` positions is built and cached in pieces of its rows (``Store.piece``), so
that its build holds the matrix and one piece's columns, not the whole store's beside it.

A cache holds an estimator's matrix unmasked: a ``MatrixSource`` with a plausibility mask
(``engine.masks``) applies it to each matrix after it is read back or built, so masked and
unmasked blends share one cache and no key names a mask.

The key covers everything the matrix depends on: the store's (or shard's) content (its
fingerprint, not its path), the models in blend order, the estimator, the vocabulary size and
list lengths, the calibration fit, and the code that fills it (the source of
``engine.estimators`` and of what it imports, and the NumPy and Numba versions), so no stale
matrix is ever served. A re-ingest replaces the whole store folder, cache included (an append
keeps a sharded store's). A cache is written aside and swapped
into place, and the caches older code wrote are removed then; a store folder that cannot be
written (read-only, full) is left as it is, and a cache that cannot be read, or does not hold
what its key says, is built again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numba
import numpy as np

from ingest import jit
from ingest.atomic import staged_directory
from ingest.store import BLEND_CACHE_DIR, Store

from .candidates import CandidateMatrix, MissingDrops, UnionCandidates
from .estimators import get_estimator
from .masks import Mask, MaskedMatrix, apply_mask

__all__ = ["MIN_POSITIONS", "PIECE_POSITIONS", "MatrixSource", "assemble", "cached_build", "cache_key", "load", "save", "shard_matrix"]

PIECE_POSITIONS = 250_000
"""The most positions of an unsharded store built at a time (``cached_build``): a piece's
columns and its build take about 0.35 GB, beside the whole matrix's 0.64 GB per million."""
MIN_POSITIONS = 200_000
"""Smaller stores' matrices are not cached: they build in a few seconds at most (the bundled
data's 53k positions in well under one), and their folders stay as ingest wrote them."""

_ARRAYS = ("offsets", "values", "outside")
NAN_CHECK_BYTES = 1 << 24
"""Values a read-back matrix is checked for NaN in at a time (``_consistent``)."""


@dataclass(frozen=True)
class MatrixSource:
    """How a blend's matrix is made for a store or any of its shards: the estimator, the models
    in blend order, what the estimator reads beside the store, and the mask restricting it if
    any. Picklable: a Ray worker makes its shards' matrices from it (``engine.distributed``)."""

    path: Path
    """The store's folder."""
    models: tuple[str, ...]
    estimator: str
    vocab_size: int
    calibration: MissingDrops | None
    """The store's calibration fit for ``models`` where the estimator reads one, else None."""
    mask: Mask | None = None
    """A plausibility mask applied to every matrix made (``masked``), after the cache."""
    floor: float | None = None
    """The mask's floor (``engine.masks.apply_mask``)."""

    def build(self, part: Store) -> CandidateMatrix:
        """The estimator's matrix of ``part`` (the store or one of its shards)."""
        union = UnionCandidates.from_store(part, self.models, vocab_size=self.vocab_size, calibration=self.calibration)
        return get_estimator(self.estimator).build(union)

    def key(self, part: Store) -> str:
        """The cache key of ``part``'s matrix (``cache_key``)."""
        fit = None if self.calibration is None else self.calibration.to_json()
        return cache_key(part, models=self.models, estimator=self.estimator, vocab_size=self.vocab_size,
                         calibration_json=fit)

    def matrix(self, store: Store) -> CandidateMatrix:
        """``store``'s whole matrix (``cached_build``), under the mask if any."""
        return self._restricted(cached_build(store, self.build, self.key))

    def shard(self, store: Store, index: int) -> CandidateMatrix:
        """The matrix of ``store``'s shard ``index`` (``shard_matrix``), under the mask if any: a
        part of the whole store's, slot for slot (``engine.masks``)."""
        return self._restricted(shard_matrix(store, index, self.build, self.key))

    def masked(self, mask: Mask, floor: float | None) -> MatrixSource:
        """This source with every matrix restricted by ``mask`` (and ``floor``)."""
        return replace(self, mask=mask, floor=floor)

    def masked_shard(self, store: Store, index: int) -> MaskedMatrix:
        """``shard``'s matrix under the mask (of a source with one), with where it drops the target."""
        return apply_mask(shard_matrix(store, index, self.build, self.key), self.models, self.mask, floor=self.floor)

    def _restricted(self, matrix: CandidateMatrix) -> CandidateMatrix:
        return matrix if self.mask is None else apply_mask(matrix, self.models, self.mask, floor=self.floor).matrix


def cached_build(store: Store, build: Callable[[Store], CandidateMatrix], key: Callable[[Store], str]
                 ) -> CandidateMatrix:
    """The matrix ``build(store)`` makes. For a store of ``MIN_POSITIONS`` or more, made shard by
    shard (``shard_matrix``; an unsharded store of more than ``PIECE_POSITIONS``, piece by piece),
    each read back from the cache where that holds its ``key``, else built and cached, then put
    together one at a time (``CandidateMatrix.concatenate``): bit for bit the matrix a whole
    build gives, with the memory of the result and one shard's or piece's build. A smaller store
    is built whole, with no cache."""
    if store.n_positions < MIN_POSITIONS:
        return build(store)
    if not store.sharded and store.n_positions > PIECE_POSITIONS:
        pieces = [(lo, min(lo + PIECE_POSITIONS, store.n_positions)) for lo in range(0, store.n_positions, PIECE_POSITIONS)]
        return assemble(lambda: (_cached(store.piece(lo, hi), build, key) for lo, hi in pieces))
    if len(store.shards) == 1:
        return shard_matrix(store, 0, build, key)
    return assemble(lambda: (shard_matrix(store, i, build, key) for i in range(len(store.shards))))


def assemble(parts: Callable[[], Iterator[CandidateMatrix]], *, trailing: int = 0) -> CandidateMatrix:
    """One matrix of the consecutive matrices ``parts()`` yields (then ``trailing`` zero columns),
    with the memory of the result and one part: ``parts()`` is run twice, first for the sizes,
    then to copy each part in (``CandidateMatrix.concatenate``); cached parts are read back
    twice, not built twice."""
    sizes = []
    for m in parts():
        sizes.append((m.outside.size, *m.values.shape))
        del m  # before the next is made: one part in memory at a time
    return CandidateMatrix.concatenate(parts(), n_positions=sum(n for n, _, _ in sizes), n_rows=sizes[0][1],
                                       n_columns=sum(c for _, _, c in sizes), trailing=trailing)


def shard_matrix(store: Store, index: int, build: Callable[[Store], CandidateMatrix],
                 key: Callable[[Store], str]) -> CandidateMatrix:
    """The matrix of shard ``index`` of ``store`` (``Store.shard``): read back from the cache where
    the store has ``MIN_POSITIONS`` or more positions and the cache holds ``key(shard)``'s (a key
    is computed only then), else built by ``build(shard)`` and, for such a store, cached."""
    shard = store.shard(index)
    if store.n_positions < MIN_POSITIONS:
        return build(shard)
    return _cached(shard, build, key)


def _cached(part: Store, build: Callable[[Store], CandidateMatrix], key: Callable[[Store], str]) -> CandidateMatrix:
    """``part``'s matrix (a shard or a piece), read back from the cache where it holds
    ``key(part)``'s, else built by ``build(part)`` and cached."""
    key_hex = key(part)
    matrix = load(part, key_hex, n_positions=part.n_positions)
    if matrix is None:
        matrix = build(part)
        save(part, key_hex, matrix)
    return matrix


@cache
def _code_digest() -> str:
    """SHA-256 of the code a matrix depends on: the estimator package and what it imports of
    approxft (the blocks a fill is cut into, the candidate bundles, the kernels, the compile
    options), with the NumPy and Numba versions that compile and run it."""
    here = Path(__file__).resolve().parent
    files = [*sorted((here / "estimators").glob("*.py")), here / "blocks.py", here / "candidates.py",
             here / "kernels.py", Path(jit.__file__)]
    digest = hashlib.sha256(f"numpy {np.__version__} numba {numba.__version__}".encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_key(store: Store, *, models: tuple[str, ...], estimator: str,
              vocab_size: int, calibration_json: dict | None) -> str:
    """The hex key of the matrix of ``models`` under ``estimator`` for this store's content."""
    record = {
        "store": store.fingerprint, "models": list(models), "estimator": estimator, "vocab_size": vocab_size,
        "k": [store.k[m] for m in models], "calibration": calibration_json, "code": _code_digest(),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def load(store: Store, key: str, *, n_positions: int) -> CandidateMatrix | None:
    """The cached matrix of ``key``, or None where there is none, or it cannot be read, or it is
    not a matrix over ``n_positions`` positions (it is then built again and replaced)."""
    folder = store.path / BLEND_CACHE_DIR / key
    try:
        meta = json.loads((folder / "matrix.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        matrix = CandidateMatrix(offsets=arrays["offsets"], values=arrays["values"], outside=arrays["outside"],
                                 outside_nll=float(meta["outside_nll"]), n_models=int(meta["n_models"]),
                                 estimator=str(meta["estimator"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return matrix if _consistent(matrix, n_positions) else None


def _consistent(m: CandidateMatrix, n_positions: int) -> bool:
    """Whether ``m`` is a matrix the kernels can take over ``n_positions`` positions."""
    offsets, values = m.offsets, m.values
    if offsets.dtype != np.uint64 or offsets.shape != (n_positions + 1,) or int(offsets[0]) != 0:
        return False
    if values.dtype != np.float32 or values.ndim != 2 or not values.flags.c_contiguous:
        return False
    if not values.shape[0] >= m.n_models >= 1 or int(offsets[-1]) != values.shape[1]:
        return False
    if m.outside.dtype != np.bool_ or m.outside.shape != (n_positions,):
        return False
    if not bool((np.diff(offsets) < np.uint64(1 << 63)).all()):
        return False
    step = max(1, NAN_CHECK_BYTES // (4 * values.shape[0]))  # a block of columns at a time: no (R, C) mask
    return not any(bool(np.isnan(values[:, i : i + step]).any()) for i in range(0, values.shape[1], step))


def save(store: Store, key: str, matrix: CandidateMatrix) -> bool:
    """Write ``matrix`` as the cache of ``key`` (``ingest.atomic.staged_directory``: built aside,
    swapped into place), and remove the caches that older code wrote; False, leaving the store
    as it was, where its folder cannot be written."""
    root = store.path / BLEND_CACHE_DIR
    try:
        with staged_directory(root / key) as folder:
            for name in _ARRAYS:
                np.save(folder / f"{name}.npy", getattr(matrix, name), allow_pickle=False)
            meta = {"estimator": matrix.estimator, "n_models": matrix.n_models, "outside_nll": matrix.outside_nll,
                    "code": _code_digest()}
            (folder / "matrix.json").write_text(json.dumps(meta))
        for other in root.iterdir():
            if other.is_dir() and other.name != key and _written_by_other_code(other):
                shutil.rmtree(other, ignore_errors=True)
        return True
    except OSError:
        return False


def _written_by_other_code(folder: Path) -> bool:
    try:
        return json.loads((folder / "matrix.json").read_text()).get("code") != _code_digest()
    except (OSError, ValueError, AttributeError):
        return False  # another writer's folder being staged, or not ours: left alone

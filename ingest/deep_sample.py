"""The deep sample on disk: deeper top-K lists at some positions of a dataset, read and written here only.

A deep sample is a folder (``data/grimm/deep``, or ``deep/`` of ``approxft collect --calibration``)
with one ``.npz`` per model and one ``token_strings.json`` for all of them:

- ``ids``: integer ``(n, K)``, token ids into ``token_strings.json`` (a JSON list: id -> the token
  string as the API wrote it, as in the store's vocabulary), each row by log-probability
  descending, -1 past the end of a shorter list;
- ``lp``: float ``(n, K)``, natural-log values (-inf past the end);
- ``target_lp``: float ``(n,)``, the actual token's exact value (NaN where unknown);
- optionally ``request`` and ``position``: integer ``(n,)``, which positions the rows are
  (manifest request index, tokens of context). Without them the rows are the first n scored
  positions of the ``val`` split in store order (data/grimm/README.md, ``deep/``).

A model whose whole next-token distribution was collected (``approxft collect --calibration-k
all``) has ``full`` instead of ``ids`` and ``lp``: uint16 ``(n, V)``, column ``j`` the value of
token ``j`` of ``token_strings.json``, stored as ``round(-lp / FULL_STEP)`` (fixed point, 2^-10
nats: every value within 2^-11 nats of the model's float32 one; values below -64 nats, which no
model of the testbed reaches, are stored as -64). Against float16 (half a unit in the last place:
up to 2^-8 nats at -32) this keeps the error uniform where the tail's values lie; on the testbed it
moves a blend's mean NLL by at most 4.4e-5 nats, and the members are zip-deflated (about 0.88 of
the raw 2 bytes per value: the values carry about 14 bits each, so no lossless coder gains much;
``bench/README.md``). A float ``full`` (natural-log values) is accepted too and quantized on reading.
A sample may mix models with lists and models with full rows.

``engine.calibration`` lines a deep sample up with a store and fits estimators on it.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.atomic import staged_files
from ingest.errors import IngestError

__all__ = ["TOKEN_STRINGS", "FULL_STEP", "FULL_MASS_TOLERANCE", "DeepLists", "holds_full", "quantize_full", "read_deep_lists",
           "read_token_strings", "write_deep_sample"]

TOKEN_STRINGS = "token_strings.json"
FULL_STEP = 2.0**-10
"""Nats per unit of a stored full distribution (``full``: ``round(-lp / FULL_STEP)``, uint16)."""
FULL_MASS_TOLERANCE = 1e-3
"""Largest |total probability - 1| of a stored full distribution (after quantization: 2^-11 nats
per value moves a total by at most about 5e-4)."""


@dataclass(frozen=True)
class DeepLists:
    """One model's deep lists at n positions (one ``.npz`` of a deep sample).

    Attributes:
        ids: integer ``(n, K)``, ids into the sample's token strings, -1 past a shorter list
            (None for a full distribution: see ``full``).
        lp: float ``(n, K)``, natural-log values, -inf past a shorter list (None with ``full``).
        target_lp: float ``(n,)``, the actual token's exact value, NaN where unknown.
        request, position: integer ``(n,)`` naming the positions, or None (see the module).
        full: uint16 ``(n, V)``, the whole distribution in fixed point (``FULL_STEP``), or None.
    """

    ids: np.ndarray | None
    lp: np.ndarray | None
    target_lp: np.ndarray
    request: np.ndarray | None = None
    position: np.ndarray | None = None
    full: np.ndarray | None = None

    @property
    def n_positions(self) -> int:
        return int(self.target_lp.shape[0])

    @property
    def is_full(self) -> bool:
        return self.full is not None

    def full_lp(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """float32 ``(len(rows), V)``: the full distribution's natural-log values at ``rows``."""
        return self.full[rows].astype(np.float32) * np.float32(-FULL_STEP)

    def top(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """int64 ids and float32 values ``(n, depth)`` of each row's first ``depth`` entries, by
        value descending: the lists themselves, or the head of the full distribution."""
        if not self.is_full:
            return self.ids[:, :depth], self.lp[:, :depth]
        ids = np.argsort(self.full, axis=1, kind="stable")[:, :depth]  # smallest code = largest value
        return ids.astype(np.int64), np.take_along_axis(self.full, ids, axis=1).astype(np.float32) * np.float32(-FULL_STEP)

    @property
    def names_positions(self) -> bool:
        """Whether the rows say which positions they are (``request`` and ``position``)."""
        return self.request is not None and self.position is not None

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``.npz`` members: ``ids`` and ``lp`` or ``full``, ``target_lp`` (and ``request``, ``position``)."""
        out = {"full": self.full} if self.is_full else {"ids": self.ids, "lp": self.lp}
        out["target_lp"] = self.target_lp
        if self.names_positions:
            out |= {"request": self.request, "position": self.position}
        return out


def quantize_full(lp: np.ndarray) -> np.ndarray:
    """uint16 of the same shape: natural-log values (finite or -inf, <= 0) in ``full``'s fixed point."""
    return np.minimum(np.round(-np.asarray(lp, dtype=np.float64) / FULL_STEP), np.iinfo(np.uint16).max).astype(np.uint16)


@contextmanager
def _npz(path: Path) -> Iterator[Any]:
    """``np.load(path)``, a missing or unreadable file an IngestError naming it."""
    if not path.is_file():
        raise IngestError("no such file", file=str(path))
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so
        raise IngestError("is not an .npz archive (a zip file of .npy arrays)", file=str(path))
    try:
        with np.load(path) as z:
            yield z
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise IngestError(f"cannot be read as .npz ({err})", file=str(path)) from None


def holds_full(path: str | Path) -> bool:
    """Whether a model's ``.npz`` holds a full distribution (reads its member names only)."""
    with _npz(Path(path)) as z:
        return "full" in z.files


def read_deep_lists(path: str | Path) -> DeepLists:
    """Read one model's ``.npz``; ``ids`` as int64, ``full`` as uint16 (a float one is checked
    and quantized). IngestError names the file and field and what is wrong: a missing member,
    mismatched shapes, and for ``full`` a value that is NaN, +inf or positive, or a row whose
    total probability is off by more than ``FULL_MASS_TOLERANCE``."""
    path = Path(path)
    with _npz(path) as z:
        arrays = {name: z[name] for name in z.files}
    required = ("full", "target_lp") if "full" in arrays else ("ids", "lp", "target_lp")
    for name in required:
        if name not in arrays:
            raise IngestError(f"no {name!r} array (has: {', '.join(arrays) or 'none'})", file=str(path))
    target_lp = arrays["target_lp"]
    if "full" in arrays:
        return DeepLists(ids=None, lp=None, target_lp=target_lp, request=arrays.get("request"),
                         position=arrays.get("position"), full=_checked_full(arrays["full"], target_lp, path))
    n_k = arrays["ids"].shape
    if len(n_k) != 2 or arrays["lp"].shape != n_k or target_lp.shape != n_k[:1]:
        raise IngestError("expected ids and lp of one shape (n, K) and target_lp (n,)", file=str(path))
    if not np.issubdtype(arrays["ids"].dtype, np.integer):
        raise IngestError(f"ids are {arrays['ids'].dtype}, not integers", file=str(path))
    return DeepLists(ids=arrays["ids"].astype(np.int64), lp=arrays["lp"], target_lp=target_lp,
                     request=arrays.get("request"), position=arrays.get("position"))


def _checked_full(full: np.ndarray, target_lp: np.ndarray, path: Path) -> np.ndarray:
    """``full`` as uint16 codes, checked (see ``read_deep_lists``)."""
    if full.ndim != 2 or target_lp.shape != full.shape[:1]:
        raise IngestError(f"expected full (n, V) and target_lp (n,), got {full.shape} and {target_lp.shape}",
                          file=str(path), field="full")
    if np.issubdtype(full.dtype, np.floating):
        bad = np.argwhere(~(full <= 0))  # NaN, +inf and positive values
        if bad.size:
            i, j = bad[0]
            raise IngestError(f"row {i}, token {j}: {full[i, j]!r} is not a log-probability", file=str(path), field="full")
        full = quantize_full(full)
    elif full.dtype != np.uint16:
        raise IngestError(f"is {full.dtype}; expected uint16 fixed point or float log-probabilities",
                          file=str(path), field="full")
    lse = _row_logsumexp(full)
    off = np.flatnonzero(np.abs(np.expm1(lse)) > FULL_MASS_TOLERANCE)
    if off.size:
        i = int(off[0])
        raise IngestError(f"row {i}: total probability {np.exp(lse[i]):.6g}, off by more than "
                          f"{FULL_MASS_TOLERANCE:g} ({off.size} such rows)", file=str(path), field="full")
    return full


def _row_logsumexp(full: np.ndarray, rows_per_step: int = 256) -> np.ndarray:
    """float64 ``(n,)``: the log of each row's total probability."""
    out = np.empty(full.shape[0])
    for start in range(0, full.shape[0], rows_per_step):
        lp = full[start : start + rows_per_step].astype(np.float64) * -FULL_STEP
        top = lp.max(axis=1, keepdims=True)
        out[start : start + rows_per_step] = top[:, 0] + np.log(np.exp(lp - top).sum(axis=1))
    return out


def read_token_strings(path: str | Path) -> list[str]:
    """The sample's ``token_strings.json``: the API string of every id its lists use."""
    path = Path(path)
    if not path.is_file():
        raise IngestError("no such file", file=str(path))
    try:
        strings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IngestError(f"cannot be read ({err})", file=str(path)) from None
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise IngestError("expected a JSON list of token strings", file=str(path))
    return strings


def write_deep_sample(out: str | Path, lists: Iterable[tuple[str, DeepLists]], token_strings: Sequence[str]) -> list[Path]:
    """Write ``out/<name>.npz`` for each ``(name, lists)`` pair and ``out/token_strings.json``,
    all together or none (``ingest.atomic.staged_files``: an error while ``lists`` is consumed,
    e.g. a generator that reads and checks one model at a time, leaves ``out`` as it was); a full
    distribution is zip-deflated. Returns the ``.npz`` paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with staged_files() as stage:
        for name, deep in lists:
            buffer = io.BytesIO()
            (np.savez_compressed if deep.is_full else np.savez)(buffer, **deep.arrays())
            written.append(stage(out / f"{name}.npz", buffer.getvalue()))
        stage(out / TOKEN_STRINGS, json.dumps(list(token_strings), ensure_ascii=False).encode("utf-8"))
    return written

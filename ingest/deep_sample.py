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

``engine.calibration`` lines a deep sample up with a store and fits estimators on it.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.atomic import write_bytes_atomic, write_text_atomic
from ingest.errors import IngestError

__all__ = ["TOKEN_STRINGS", "DeepLists", "read_deep_lists", "read_token_strings", "write_deep_sample"]

TOKEN_STRINGS = "token_strings.json"
REQUIRED = ("ids", "lp", "target_lp")


@dataclass(frozen=True)
class DeepLists:
    """One model's deep lists at n positions (one ``.npz`` of a deep sample).

    Attributes:
        ids: integer ``(n, K)``, ids into the sample's token strings, -1 past a shorter list.
        lp: float ``(n, K)``, natural-log values, -inf past a shorter list.
        target_lp: float ``(n,)``, the actual token's exact value, NaN where unknown.
        request, position: integer ``(n,)`` naming the positions, or None (see the module).
    """

    ids: np.ndarray
    lp: np.ndarray
    target_lp: np.ndarray
    request: np.ndarray | None = None
    position: np.ndarray | None = None

    @property
    def n_positions(self) -> int:
        return int(self.ids.shape[0])

    @property
    def names_positions(self) -> bool:
        """Whether the rows say which positions they are (``request`` and ``position``)."""
        return self.request is not None and self.position is not None

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``.npz`` members: ``ids``, ``lp``, ``target_lp`` (and ``request``, ``position``)."""
        out = {"ids": self.ids, "lp": self.lp, "target_lp": self.target_lp}
        if self.names_positions:
            out |= {"request": self.request, "position": self.position}
        return out


def read_deep_lists(path: str | Path) -> DeepLists:
    """Read one model's ``.npz``; ``ids`` as int64. IngestError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise IngestError("no such file", file=str(path))
    try:
        with np.load(path) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise IngestError(f"cannot be read as .npz ({err})", file=str(path)) from None
    for name in REQUIRED:
        if name not in arrays:
            raise IngestError(f"no {name!r} array (has: {', '.join(arrays) or 'none'})", file=str(path))
    n_k = arrays["ids"].shape
    if len(n_k) != 2 or arrays["lp"].shape != n_k or arrays["target_lp"].shape != n_k[:1]:
        raise IngestError("expected ids and lp of one shape (n, K) and target_lp (n,)", file=str(path))
    if not np.issubdtype(arrays["ids"].dtype, np.integer):
        raise IngestError(f"ids are {arrays['ids'].dtype}, not integers", file=str(path))
    return DeepLists(ids=arrays["ids"].astype(np.int64), lp=arrays["lp"], target_lp=arrays["target_lp"],
                     request=arrays.get("request"), position=arrays.get("position"))


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


def write_deep_sample(out: str | Path, lists: Mapping[str, DeepLists], token_strings: Sequence[str]) -> list[Path]:
    """Write ``out/<name>.npz`` for each entry of ``lists`` and ``out/token_strings.json``, each
    atomically; returns the ``.npz`` paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, deep in lists.items():
        buffer = io.BytesIO()
        np.savez(buffer, **deep.arrays())
        written.append(write_bytes_atomic(out / f"{name}.npz", buffer.getvalue()))
    write_text_atomic(out / TOKEN_STRINGS, json.dumps(list(token_strings), ensure_ascii=False))
    return written

"""Replace a file atomically: write a temporary file beside it, fsync, rename over it (and
several files together: ``staged_files``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    with staged_files() as stage:
        return stage(path, data)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``write_bytes_atomic`` of UTF-8 ``text``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def staged_files() -> Iterator[Callable[[str | Path, bytes], Path]]:
    """Replace several files together: inside the block, ``stage(path, data)`` writes a
    temporary file beside ``path`` (fsynced) and returns ``path``; leaving the block renames each
    over its target, while an error leaves every target as it was and removes the temporaries."""
    staged: list[tuple[Path, Path]] = []

    def stage(path: str | Path, data: bytes) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        staged.append((tmp, path))
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path

    try:
        yield stage
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)

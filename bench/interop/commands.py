"""What the interoperability checks share: running a command from the repository root, and a
working folder that is removed afterwards unless the user named it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run(command: list[Any], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` (anything ``str`` turns into an argument) from the repository root; its output,
    or a RuntimeError with the end of its stderr when it fails."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command[:4]))} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


@contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` (created if absent, kept), or a temporary folder removed when the check ends."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)

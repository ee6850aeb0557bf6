"""What the interoperability checks share: running a command from the repository root."""

from __future__ import annotations

import subprocess
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

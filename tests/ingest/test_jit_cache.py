"""Where compiled kernels are kept (``ingest.jit.CACHE_DIR``): a folder per state of the sources,
so a kernel never runs a helper's old code after the helper's file changed (Numba itself checks
only the kernel's own file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def cache_dir(root: Path, env: dict[str, str]) -> Path:
    """``ingest.jit.CACHE_DIR`` in a fresh interpreter that imports the packages under ``root``."""
    done = subprocess.run([sys.executable, "-c", "import ingest.jit; print(ingest.jit.CACHE_DIR)"], cwd=root,
                          env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def test_the_cache_folder_follows_every_source_file(tmp_path):
    root = tmp_path / "src"
    for package in ("ingest", "engine"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = cache_dir(root, env)
    assert first.parent == tmp_path / "cache" / "approxft" / "numba"
    assert cache_dir(root, env) == first  # the same sources: the same folder
    helper = root / "engine" / "estimators" / "_fill.py"  # the helpers zipf_tail's fill calls
    helper.write_text(helper.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
    changed = cache_dir(root, env)
    assert changed != first and changed.parent == first.parent
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")  # the user's folder is the parent
    assert cache_dir(root, env) == tmp_path / "mine" / changed.name

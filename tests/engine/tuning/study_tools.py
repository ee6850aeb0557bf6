"""What the storage and shared-study tests share: the real ``approxft tune`` in a subprocess, a
study's trial states read with Optuna's own storages, and a disk that fills up."""

from __future__ import annotations

import resource
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import optuna
import pytest

from tests.helpers import ROLE_ARGS

STUDY = "s"


def tune_command(store: Path, storage: str | Path, trials: int, *extra: object) -> list[str]:
    return [sys.executable, "-m", "engine", "tune", str(store), *ROLE_ARGS, "--trials", str(trials), "--storage",
            str(storage), "--study", STUDY, "--batch", "8", "--quiet", "--format", "json", *map(str, extra)]


def tune(store: Path, storage: str | Path, trials: int, *extra: object,
         preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """The real ``approxft tune`` (TPE) over ``store``, in a subprocess."""
    return subprocess.run(tune_command(store, storage, trials, *extra), capture_output=True, text=True,
                          timeout=600, preexec_fn=preexec_fn)


def states(storage: str | Path) -> Counter:
    """How many trials of the study are in each state, read without approxft: sqlite3 for a
    SQLite URL, Optuna's own storages for a server URL or a journal file."""
    storage = str(storage)
    if storage.startswith("sqlite:///"):
        with sqlite3.connect(storage.removeprefix("sqlite:///")) as db:
            return Counter(dict(db.execute("select state, count(*) from trials group by state").fetchall()))
    return Counter(t.state.name for t in study(storage).trials)


def study(storage: str | Path) -> optuna.Study:
    """The study, loaded by Optuna itself: an RDB URL as it is, a path as a journal file."""
    storage = str(storage)
    if "://" not in storage:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    return optuna.load_study(study_name=STUDY, storage=storage)


@contextmanager
def full_disk(kind: str, seed: Path, room: int, folder: Path) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """``seed`` (a journal or SQLite file) on a disk with about ``room`` bytes free after it.

    ``fsize``: in place, with a subprocess limit on the size of any file it writes
    (``RLIMIT_FSIZE``: writes past it fail with EFBIG; Python ignores SIGXFSZ). ``tmpfs``: copied
    onto a small tmpfs mounted for the test (root only; skipped where mounting is not allowed),
    where writes fail with ENOSPC. Yields the file's path and the subprocess's ``preexec_fn``."""
    if kind == "fsize":
        limit = seed.stat().st_size + room
        yield seed, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return
    disk = folder / "disk"
    disk.mkdir()
    size = (seed.stat().st_size + room) // 4096 * 4096 + 4096
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here ({mounted.stderr.strip()}); the fsize case covers a full disk")
    try:
        shutil.copy(seed, disk / seed.name)
        yield disk / seed.name, None
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)

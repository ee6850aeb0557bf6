"""A study's storage against a full disk and torn writes: journal files are appended in whole
lines, a torn last line is cut off with a notice, a damaged line is refused naming it, and a full
disk is one error line (journal and SQLite) after which the study resumes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from engine.tuning.storage import JournalFile, StorageError, open_storage
from tests.helpers import REPO, free_port

from .study_tools import full_disk, states, study, tune


@pytest.fixture(scope="module")
def store(golden_dataset):
    return golden_dataset.store.path


def complete(storage) -> int:
    return states(storage)["COMPLETE"]


def test_a_torn_last_line_is_cut_off_with_a_notice_and_the_study_resumes(store, tmp_path):
    journal = tmp_path / "study.journal"
    assert tune(store, journal, 16).returncode == 0
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # a write cut off midway
    resumed = tune(store, journal, 24)
    assert resumed.returncode == 0, resumed.stderr
    cut = len(data) - last - (len(data) - last) // 2
    assert resumed.stderr.splitlines() == [
        f"approxft: {journal}: removed a torn last line ({cut} bytes) left by an interrupted write; "
        "every complete record is kept"]
    assert json.loads(resumed.stdout)["trials"] == 24 and complete(journal) == 24
    assert journal.read_bytes().endswith(b"\n")


def test_a_line_damaged_in_the_middle_is_refused_naming_it(store, tmp_path):
    """What Optuna's own backend left after a full disk: a partial line, the next append glued on."""
    journal = tmp_path / "study.journal"
    assert tune(store, journal, 8).returncode == 0
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:5]) + lines[5][:40] + b"".join(lines[5:]))
    done = tune(store, journal, 16)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"approxft tune: error: journal {journal}: line 6 is not one whole record (")
    with pytest.raises(StorageError, match="line 6 is not one whole record"):
        open_storage(str(journal))


APPEND_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
from engine.tuning.storage import JournalFile, StorageError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    JournalFile(sys.argv[1]).append_logs([{"op_code": 0, "b": 2}])
except StorageError as err:
    print(err)
"""


def test_an_append_that_fails_is_cut_back_off(tmp_path):
    """A real short write: in a subprocess under RLIMIT_FSIZE (SIGXFSZ ignored), the kernel
    writes 7 bytes of the record up to the limit, then refuses the rest with EFBIG."""
    path = tmp_path / "j"
    JournalFile(str(path)).append_logs([{"op_code": 0, "a": 1}])
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", APPEND_UNDER_A_SIZE_LIMIT, str(path), str(len(before) + 7)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert re.search(r"cannot append \(File too large\)", done.stdout), done.stdout
    assert path.read_bytes() == before


@pytest.mark.parametrize("disk", ["fsize", "tmpfs"])
def test_a_journal_on_a_full_disk_is_one_error_line_and_resumes(store, tmp_path, disk):
    seed = tmp_path / "study.journal"
    assert tune(store, seed, 8).returncode == 0  # a study, and the kernels compiled (their cache written)
    with full_disk(disk, seed, 16_000, tmp_path) as (journal, preexec):
        done = tune(store, journal, 100_000, preexec_fn=preexec)
        assert done.returncode == 1
        reason = "File too large" if disk == "fsize" else "No space left on device"
        assert done.stderr.splitlines() == [
            f"approxft tune: error: journal {journal}: cannot append ({reason}); the journal keeps every record "
            "before this, and a rerun resumes it"]
        assert journal.read_bytes().endswith(b"\n")
        shutil.copy(journal, tmp_path / "after.journal")
    after = tmp_path / "after.journal"
    reached = complete(after)
    assert reached > 8
    resumed = tune(store, after, reached + 10)
    assert resumed.returncode == 0, resumed.stderr
    assert complete(after) == reached + 10


@pytest.mark.parametrize("disk", ["fsize", "tmpfs"])
def test_sqlite_on_a_full_disk_is_one_error_line_and_resumes(store, tmp_path, disk):
    seed = tmp_path / "study.db"
    assert tune(store, f"sqlite:///{seed}", 8).returncode == 0
    with full_disk(disk, seed, 40_000, tmp_path) as (db, preexec):
        done = tune(store, f"sqlite:///{db}", 100_000, preexec_fn=preexec)
        assert done.returncode == 1
        assert len(done.stderr.splitlines()) == 1, done.stderr
        reason = "disk I/O error" if disk == "fsize" else "database or disk is full"  # EFBIG / ENOSPC
        assert done.stderr == (f"approxft tune: error: storage 'sqlite:///{db}': {reason}; the study keeps every "
                               "trial finished before this, and a rerun resumes it\n")
        shutil.copy(db, tmp_path / "after.db")
    after = f"sqlite:///{tmp_path / 'after.db'}"
    reached = complete(after)
    assert reached > 8
    resumed = tune(store, after, reached + 10)
    assert resumed.returncode == 0, resumed.stderr
    assert complete(after) == reached + 10
    assert all(t.user_attrs.get("approxft_stale") for t in study(after).trials if t.state.name == "FAIL")


def test_a_postgresql_server_that_cannot_be_reached_is_one_line_without_its_password(store):
    url = f"postgresql+psycopg2://tuner:hunter2-secret@127.0.0.1:{free_port()}/studies"
    done = tune(store, url, 8)
    assert done.returncode == 1 and "hunter2" not in done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert re.fullmatch(r"approxft tune: error: storage 'postgresql\+psycopg2://tuner:\*\*\*@127\.0\.0\.1:\d+/studies' "
                        r"cannot be opened: .*Connection refused.*\n", done.stderr), done.stderr

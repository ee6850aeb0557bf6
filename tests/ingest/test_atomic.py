"""ingest.atomic's locks and whole appends: ``locked`` (one holder at a time, files and
directories), ``append_whole`` cut back after a real short write (RLIMIT_FSIZE), and
``cut_torn_tail``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ingest.atomic import append_whole, cut_torn_tail, locked
from tests.helpers import REPO


def test_a_lock_has_one_holder_at_a_time_for_files_and_directories(tmp_path):
    path, folder = tmp_path / "lock", tmp_path / "folder"
    folder.mkdir()
    for target, create in ((path, True), (folder, False)):
        with locked(target, blocking=False, create=create) as fd:
            assert isinstance(fd, int) and os.fstat(fd).st_ino == os.stat(target).st_ino
            # Another open descriptor conflicts as another process's would.
            with locked(target, blocking=False) as other:
                assert other is None
        with locked(target, blocking=True) as again:
            assert again is not None
    assert path.read_bytes() == b""  # created empty


def test_a_lock_opens_a_file_for_appending_and_refuses_what_it_cannot_open(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"first\n")
    with locked(path, blocking=True) as fd:
        os.write(fd, b"second\n")
    assert path.read_bytes() == b"first\nsecond\n"
    with pytest.raises(FileNotFoundError), locked(tmp_path / "missing", blocking=True):
        pass
    with pytest.raises(IsADirectoryError), locked(tmp_path, blocking=True, create=True):
        pass
    assert not (tmp_path / "missing").exists()


APPEND_UNDER_A_SIZE_LIMIT = """
import os, resource, signal, sys
from ingest.atomic import append_whole
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
fd = os.open(sys.argv[1], os.O_RDWR | os.O_APPEND)
try:
    append_whole(fd, sys.argv[2].encode())
except OSError as err:
    print(err.strerror)
"""


def test_an_append_cut_short_by_the_kernel_is_cut_back(tmp_path):
    """A real short write: in a subprocess under RLIMIT_FSIZE (SIGXFSZ ignored) the kernel writes
    up to the limit and returns the count, and the next write fails with EFBIG."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    limit = path.stat().st_size + 7
    done = subprocess.run([sys.executable, "-c", APPEND_UNDER_A_SIZE_LIMIT, str(path), '{"b": 2}\n{"c": 3}\n',
                           str(limit)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "File too large\n", "")
    assert path.read_bytes() == b'{"a": 1}\n'


def test_a_whole_append_returns_the_new_size(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"a\n")
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        assert append_whole(fd, b"bc\n" * 3) == 11
    finally:
        os.close(fd)
    assert path.read_bytes() == b"a\n" + b"bc\n" * 3


@pytest.mark.parametrize(("data", "end", "kept"), [
    (b"x\ny\npart", None, b"x\ny\n"),
    (b"x\ny\n", None, b"x\ny\n"),
    (b"no newline", None, b""),
    (b"", None, b""),
    (b"x\n" + b"t" * 200_000, None, b"x\n"),  # a torn tail longer than one backward read
    (b"member-1member-2-trunc", 8, b"member-1"),  # where the caller knows the end (gzip members)
])
def test_a_torn_tail_is_cut_back_to_the_last_whole_record(tmp_path, data, end, kept):
    path = tmp_path / "log"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        assert cut_torn_tail(fd, end=end) == len(data) - len(kept)
    finally:
        os.close(fd)
    assert path.read_bytes() == kept

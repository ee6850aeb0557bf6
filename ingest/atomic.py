"""Replace a file atomically: write a temporary file beside it, fsync, rename over it (and
several files together: ``staged_files``); replace a directory in one step (``staged_directory``,
built on ``exchange``)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import re
import secrets
import shutil
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


# A directory replaced in one step -------------------------------------------------------------

_STAGING, _ASIDE = ".tmp-", ".old-"
_SUFFIX = re.compile(r"\.(?:tmp|old)-[0-9a-f]{8}")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


class ExchangeRefused(OSError):
    """The kernel or filesystem cannot swap two paths in one step."""


def exchange(a: str | Path, b: str | Path) -> None:
    """Swap the directory entries ``a`` and ``b`` in one step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``): a reader sees one or the other at each path, never none.

    Raises:
        FileNotFoundError: ``a`` or ``b`` does not exist.
        ExchangeRefused: no ``renameat2`` (not Linux, or glibc before 2.28), or the kernel
            (before 3.15) or the filesystem (NFS, many FUSE ones) does not implement the exchange.
    """
    if _renameat2 is None:
        raise ExchangeRefused(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise ExchangeRefused(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


_renameat2 = _libc_renameat2()


@contextmanager
def staged_directory(out: str | Path) -> Iterator[Path]:
    """Replace the directory ``out`` (or create it) with one built in the block.

    Yields a new empty directory ``<out>.tmp-<random>`` beside ``out``, locked (``flock``) so
    that no other writer mistakes it for a leftover. Leaving the block fsyncs what was written
    there and swaps it with ``out`` in one step (``exchange``), then deletes the old directory;
    an error in the block removes the new one and leaves ``out`` as it was. Leftovers of writers
    that were killed (unlocked ``<out>.tmp-*`` and ``<out>.old-*``) are removed first
    (``remove_stale``).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    new, lock = _locked_directory(out)
    try:
        try:
            yield new
            _fsync_tree(new)
            old = _swap(new, out)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        _fsync(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(lock)


def remove_stale(out: str | Path) -> list[Path]:
    """Remove what killed writers of ``out`` left beside it: ``<out>.tmp-<8 hex>`` and
    ``<out>.old-<8 hex>`` directories that no live writer holds (their ``flock`` is free), and
    nothing else. Where ``out`` itself is missing (a writer killed between the two renames of the
    fallback in ``staged_directory``), the directory set aside is renamed back first.
    Returns the paths removed."""
    out = Path(out)
    found = sorted((p for p in out.parent.glob(glob.escape(out.name) + ".*")
                    if p.name.startswith(out.name) and _SUFFIX.fullmatch(p.name[len(out.name):])),
                   key=lambda p: p.name)
    removed = []
    for path in found:
        fd = _lock_if_free(path)
        if fd is None:
            continue
        try:
            if path.name[len(out.name):].startswith(_ASIDE) and not os.path.lexists(out):
                os.rename(path, out)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _swap(new: Path, out: Path) -> Path | None:
    """Put ``new`` at ``out``; returns where the old ``out`` is now (to delete), None if none."""
    try:
        exchange(new, out)
        return new
    except FileNotFoundError:
        os.rename(new, out)
        return None
    except ExchangeRefused:
        pass
    # Where the filesystem refuses the exchange: two renames. A kill between them leaves no
    # directory at ``out``; the next ``remove_stale`` renames the one set aside back. It is
    # locked meanwhile, so that no other writer's ``remove_stale`` deletes it.
    held = _lock_if_free(out)
    try:
        old = out.with_name(f"{out.name}{_ASIDE}{secrets.token_hex(4)}")
        os.rename(out, old)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise
        return old
    finally:
        if held is not None:
            os.close(held)


def _locked_directory(out: Path) -> tuple[Path, int]:
    """A new directory ``<out>.tmp-<random>`` and an open descriptor holding its ``flock``.

    Another writer's ``remove_stale`` may lock and delete the directory between its creation and
    our lock: then it is gone or locked, and another name is tried."""
    for _ in range(100):
        path = out.with_name(f"{out.name}{_STAGING}{secrets.token_hex(4)}")
        try:
            path.mkdir()  # not tempfile.mkdtemp: its 0o700 would become the final directory's mode
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileExistsError, FileNotFoundError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:
            pass  # a filesystem without locks: remove_stale cannot lock either, so leaves it alone
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"{out}: cannot create a temporary directory beside it")


def _lock_if_free(path: Path) -> int | None:
    """An open descriptor of directory ``path`` holding its ``flock``; None where it is held by
    another process, is gone, or cannot be locked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root``): durable before it is renamed."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync(Path(folder))


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

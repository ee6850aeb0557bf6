"""Writes that a kill, a full disk or a second process cannot leave half done.

- Replace a file atomically: write a temporary file beside it, fsync, rename over it (and several
  files together: ``staged_files``); replace a directory in one step (``staged_directory``, built
  on ``exchange``).
- Append to a file whole records only (``append_whole``), and cut off the torn tail a killed
  writer left (``cut_torn_tail``).
- Hold a file or directory for one process at a time (``locked``, an exclusive ``flock``).
"""

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
from contextlib import ExitStack, contextmanager
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
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # named by the file meant, not by its temporary twin
            raise OSError(err.errno, err.strerror, str(path)) from None
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
_TAIL_CHUNK = 1 << 16


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
    with _new_directory(out) as new:
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


def remove_stale(out: str | Path) -> list[Path]:
    """Remove what killed writers of ``out`` left beside it: ``<out>.tmp-<8 hex>`` and
    ``<out>.old-<8 hex>`` directories that no live writer holds (their ``flock`` is free), and
    nothing else. Where ``out`` itself is missing (a writer killed between the two renames of the
    fallback in ``staged_directory``), the directory set aside is renamed back first.
    Returns the paths removed."""
    out = Path(out)
    found = sorted((p for p in out.parent.glob(glob.escape(out.name) + ".*")
                    if p.name.startswith(out.name) and _SUFFIX.fullmatch(p.name[len(out.name):])
                    and p.is_dir()), key=lambda p: p.name)
    removed = []
    for path in found:
        with ExitStack() as held:
            if not _hold_if_free(held, path):
                continue
            if path.name[len(out.name):].startswith(_ASIDE) and not os.path.lexists(out):
                os.rename(path, out)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
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
    with ExitStack() as held:
        _hold_if_free(held, out)
        old = out.with_name(f"{out.name}{_ASIDE}{secrets.token_hex(4)}")
        os.rename(out, old)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise
        return old


@contextmanager
def _new_directory(out: Path) -> Iterator[Path]:
    """A new empty directory ``<out>.tmp-<random>``, its ``flock`` held for the block.

    Another writer's ``remove_stale`` may lock and delete the directory between its creation and
    our lock: then it is gone or locked, and another name is tried."""
    for _ in range(100):
        path = out.with_name(f"{out.name}{_STAGING}{secrets.token_hex(4)}")
        try:
            path.mkdir()  # not tempfile.mkdtemp: its 0o700 would become the final directory's mode
        except FileExistsError:
            continue
        with ExitStack() as held:
            try:
                fd = held.enter_context(locked(path, blocking=False))
                mine = fd is not None and _same_inode(path, fd)
            except FileNotFoundError:
                mine = False
            except OSError:
                mine = True  # a filesystem without locks: remove_stale cannot lock either, so leaves it alone
            if mine:
                yield path
                return
    raise OSError(f"{out}: cannot create a temporary directory beside it")


def _same_inode(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open at ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _hold_if_free(held: ExitStack, path: Path) -> bool:
    """Take ``path``'s ``flock`` into ``held`` where it is free; False (nothing held) where
    another process holds it, ``path`` is gone, or it cannot be locked."""
    try:
        return held.enter_context(locked(path, blocking=False)) is not None
    except OSError:
        return False


# Locks and whole appends ----------------------------------------------------------------------


@contextmanager
def locked(path: str | Path, *, blocking: bool, create: bool = False) -> Iterator[int | None]:
    """Hold an exclusive ``flock`` on the file or directory ``path`` for the block.

    Yields the open descriptor that holds it (a file's read-write and appending, a directory's
    read-only), closed when the block ends; or, at once, None where ``blocking`` is False and
    another process (or another open descriptor) holds the lock. ``flock`` orders only the
    processes that take it: readers and other programs are not held back.

    create: ``path`` is a file, created empty where missing (mode 0o644 less the umask).

    Raises:
        OSError: ``path`` cannot be opened (FileNotFoundError where it is missing and ``create``
            is False, IsADirectoryError where it is a directory and ``create`` is True), or its
            filesystem cannot lock.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
    except IsADirectoryError:
        if create:
            raise
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield fd if held else None
    finally:
        os.close(fd)


def append_whole(fd: int, data: bytes) -> int:
    """Append ``data`` (whole records: lines, gzip members) to the file open at ``fd`` for
    appending, all of it or nothing, fsynced; returns the file's new size. The caller keeps other
    writers out meanwhile (``locked``).

    One ``os.write`` loop, not a buffered file: where a write or the fsync fails (a full disk, a
    file size limit, an I/O error), the file is cut back to where it ended and the error raised.
    Where even the cut fails, the part written stays as a torn tail, which ``cut_torn_tail``
    removes before the next append.

    Raises:
        OSError: the append failed; the file ends where it did.
    """
    end = os.fstat(fd).st_size
    try:
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest):]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        except OSError:
            pass
        raise
    return end + len(data)


def cut_torn_tail(fd: int, *, end: int | None = None) -> int:
    """Cut off what follows the last whole record of the file open at ``fd`` (a writer killed
    midway through ``append_whole`` left it), fsynced; returns the bytes cut, 0 where none. The
    caller keeps writers out meanwhile (``locked``).

    end: where the whole records end, where the caller knows (a gzip file's last whole member,
    ``ingest.jsonl.Extent.complete``); by default after the file's last newline, so that a file
    of lines keeps its whole lines (a file without a newline is cut to nothing).
    """
    size = os.fstat(fd).st_size
    if end is None:
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
    if end < size:
        os.ftruncate(fd, end)
        os.fsync(fd)
    return size - end


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

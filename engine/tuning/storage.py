"""Where a study lives: in memory, a journal file, or an RDB URL (``open_storage``), and what keeps
it whole when a disk fills up or several processes open it at once.

- A journal file (``JournalFile``) is appended in whole lines only (``ingest.atomic.append_whole``):
  one write per record batch, fsynced; a write that fails (a full disk) is cut back off, so the
  journal ends where it did. A torn last line (a writer killed mid-write) is an append that never
  completed: it is cut off (``ingest.atomic.cut_torn_tail``), with a notice, before anything is
  read or appended. A damaged line elsewhere is refused, naming the line.
- ``storage_errors`` turns what a full disk makes an RDB storage raise (SQLite: "database or disk
  is full") into one ``StorageError`` line.
- ``creation_lock`` serializes opening a study across processes, in a journal or SQLite file
  (``ingest.atomic.locked``) and in a PostgreSQL database (a session advisory lock on the
  server), so that creating the study (and a fresh database's tables) and recording what it tunes
  happen before anyone else uses it.
- Every message names a storage with ``shown``: an RDB URL's password never reaches a message.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.pool import NullPool

from ingest.atomic import append_whole, cut_torn_tail, locked

__all__ = ["StorageError", "JournalFile", "open_storage", "storage_errors", "creation_lock", "shown"]

SQLITE_TIMEOUT = 60.0
"""Seconds a SQLite connection waits for another process's write (sqlite3's default is 5)."""

APPEND_LOCK_SUFFIX = ".append-lock"
"""The file beside a journal whose ``flock`` its appends hold (``JournalFile``); not Optuna's
``.lock`` symlink, which a stale one would make a second name of the journal itself, locked
already while a study is created (``creation_lock``)."""

CREATION_LOCK_KEY = 0x61707078667401
"""The PostgreSQL advisory lock (a bigint) that approxft's study openings take on a server."""


class StorageError(ValueError):
    """A study's storage cannot be opened, read or written; names it, with the reason."""


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """``None`` -> in memory; ``scheme://...`` -> RDB storage; anything else -> a journal file
    (``JournalFile``).

    Raises:
        StorageError: the storage cannot be opened (named, with the reason).
    """
    if url is None:
        return None
    try:
        if "://" in url:
            sqlite = url.startswith("sqlite:")
            kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if sqlite else None
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        path = Path(url)
        if path.parent and not path.parent.is_dir():
            raise FileNotFoundError(f"no directory {path.parent}")
        return optuna.storages.JournalStorage(JournalFile(str(path)))
    except StorageError:
        raise
    except Exception as err:  # optuna/sqlalchemy raise many types; the user needs one line
        raise StorageError(f"storage {shown(url)} cannot be opened: {_reason(err)}") from None


def shown(url: str | None) -> str:
    """``url`` quoted as messages name it, with an RDB URL's password (if any) as ``***``."""
    if url is None or "://" not in url:
        return repr(url)
    parsed = _rdb_url(url)
    if parsed is None:
        return repr(re.sub(r"://[^/@]*@", "://***@", url))
    return repr(parsed.render_as_string(hide_password=True))


def _rdb_url(url: str | None) -> sqlalchemy.engine.URL | None:
    """``url`` parsed as an RDB URL; None for memory, a journal path, or a URL SQLAlchemy cannot read."""
    if url is None or "://" not in url:
        return None
    try:
        return sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None


@contextmanager
def storage_errors(url: str | None) -> Iterator[None]:
    """Turn an RDB storage's failure (a full disk, a lost connection) inside the block into one
    ``StorageError`` line naming ``url``. Each trial is written in a transaction, so the study
    keeps every trial told before the failure."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise StorageError(f"storage {shown(url)}: {_reason(err)}; the study keeps every trial finished "
                           "before this, and a rerun resumes it") from None


def _reason(err: BaseException) -> str:
    """The database's own words where ``err`` wraps a driver error, else ``err``'s."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            return str(seen.orig)
        seen = seen.__cause__ or seen.__context__
    return str(err).strip() or type(err).__name__


@contextmanager
def creation_lock(url: str | None) -> Iterator[bool]:
    """Hold an exclusive lock for the block and yield True: a ``flock`` on the storage's file (a
    journal, or a SQLite database, created empty if missing), or a PostgreSQL server's session
    advisory lock ``CREATION_LOCK_KEY``; yield False, locking nothing, for memory or another
    server database. Neither SQLite, Optuna's journal lock nor Optuna's RDB storage takes these
    locks, so they only order the processes that take them: approxft's study openings."""
    path = _storage_file(url)
    if path is None and not _is_postgresql(url):
        yield False
        return
    with ExitStack() as held:
        try:
            held.enter_context(locked(path, blocking=True, create=True) if path else _advisory_lock(url))
        except OSError as err:
            raise StorageError(f"storage {shown(url)} cannot be opened: {err.strerror}") from None
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:  # ImportError: no psycopg2
            raise StorageError(f"storage {shown(url)} cannot be opened: {_reason(err)}") from None
        yield True


def _is_postgresql(url: str | None) -> bool:
    parsed = _rdb_url(url)
    return parsed is not None and parsed.get_backend_name() == "postgresql"


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """Hold ``CREATION_LOCK_KEY`` on the server in a connection of its own; the server releases
    it when that connection closes, also when this process is killed."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": CREATION_LOCK_KEY})
            yield
    finally:
        engine.dispose()


def _storage_file(url: str | None) -> Path | None:
    if url is None:
        return None
    if "://" not in url:
        return Path(url)
    parsed = _rdb_url(url)
    if parsed is None or parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


class JournalFile(JournalFileBackend):
    """Optuna's journal file backend, appended in whole lines only.

    Optuna's own appends a batch with a buffered write: on a full disk part of a line reaches
    the file, and the next append is glued onto it, so that no process can read the journal
    again. Here an append is ``ingest.atomic.append_whole`` under the journal's lock: whole lines,
    fsynced, cut back to where the file ended if anything fails; a torn last line left by a
    killed writer is cut off (``ingest.atomic.cut_torn_tail``) when the journal is opened and
    before each append.

    The lock is an ``flock`` on ``<journal>.append-lock`` (``APPEND_LOCK_SUFFIX``), which the
    kernel releases when its holder dies: with Optuna's symlink lock, a writer killed while it
    held the lock made the next one wait out a 30 s grace period. Plain Optuna processes take the
    symlink lock, so they must not append to a journal that approxft appends to.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        super().__init__(path)  # Optuna's own lock object is left unused: append_logs is ours
        with self._locked():
            fd = os.open(path, os.O_RDWR)
            try:
                self._repair(fd)
            finally:
                os.close(fd)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        read = 0
        try:
            for log in super().read_logs(log_number_from):
                read += 1
                yield log
        except ValueError as err:  # json.JSONDecodeError or Optuna's "Invalid log format."
            line = log_number_from + read + 1
            raise StorageError(
                f"journal {self._path}: line {line} is not one whole record ({err}): a write was cut off and "
                "another appended after it (approxft before whole-line appends); cut that line back to its last "
                "complete record to read the journal again") from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with self._locked():
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
            try:
                self._repair(fd)
                try:
                    append_whole(fd, data)
                except OSError as err:
                    raise StorageError(f"journal {self._path}: cannot append ({err.strerror}); the journal "
                                       "keeps every record before this, and a rerun resumes it") from None
            finally:
                os.close(fd)

    def _repair(self, fd: int) -> None:
        """Cut a torn last line off, with a notice on stderr."""
        cut = cut_torn_tail(fd)
        if cut:
            print(f"approxft: {self._path}: removed a torn last line ({cut} bytes) left by an interrupted "
                  "write; every complete record is kept", file=sys.stderr)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._path + APPEND_LOCK_SUFFIX
        with ExitStack() as held:
            try:
                held.enter_context(locked(lock, blocking=True, create=True))
            except OSError as err:
                raise StorageError(f"journal {self._path}: cannot lock {lock} ({err.strerror})") from None
            yield

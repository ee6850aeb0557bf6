"""The error types of ingest: a problem in an input file, located by file, line and field
(``IngestError``), and a store that cannot be read (``StoreError``); and the one way to put a
message, or a bad value, on one line."""

from __future__ import annotations

from typing import Any

MESSAGE_LIMIT = 300
"""Characters of a server's message kept in one line of approxft's output."""
VALUE_LIMIT = 40
"""Characters of a bad value an error message shows (its repr)."""


def one_line(text: Any, limit: int | None = MESSAGE_LIMIT) -> str:
    """``text`` on one line, at most ``limit`` characters (None: all of it): each line break, with
    the white space around it, becomes one space (spaces within a line stay: a token's repr in a
    message keeps its own)."""
    line = " ".join(filter(None, (part.strip() for part in str(text).splitlines())))
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def shown(value: Any) -> str:
    """A bad value as an error message shows it: its repr on one line, at most ``VALUE_LIMIT``
    characters (a JSON integer can have thousands of digits)."""
    return one_line(repr(value), VALUE_LIMIT)


class IngestError(ValueError):
    """An input cannot be ingested.

    The message is one line, ``<file> line <n>: field '<field>' <problem>``, with the parts that
    are known (a parser that sees one response knows the field but not the file).
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where = f"{where} line {self.line}".lstrip()
        what = f"field '{self.field}' {self.problem}" if self.field else self.problem
        return f"{where}: {what}" if where else what

    def located(self, *, file: str, line: int | None) -> IngestError:
        """The same problem, placed in ``file`` at 1-based ``line``."""
        return IngestError(self.problem, file=file, line=line, field=self.field)

    def __reduce__(self):  # keyword-only arguments: pickle (process pools) needs the recipe
        return _rebuild, (self.problem, self.file, self.line, self.field)


def _rebuild(problem: str, file: str | None, line: int | None, field: str | None) -> IngestError:
    return IngestError(problem, file=file, line=line, field=field)


class StoreError(ValueError):
    """A store is missing, incomplete or not one this reader understands; names the path."""

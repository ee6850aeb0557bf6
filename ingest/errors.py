"""The one error type of ingest: a problem in an input file, located by file, line and field."""

from __future__ import annotations


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

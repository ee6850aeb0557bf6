"""The request manifest (``requests.jsonl``): one line per request, in the order of the responses
in every model file: ``request_index``, ``split``, ``story`` (the document), ``params``; a
prepared one also has ``tokens`` and ``tokenizer`` (the preparing tokenizer's name, which
``approxft collect --calibration-k all`` needs). Where a line has the prompt text
(``params.prompt``) or ``tokens``, responses are checked against it and matched to it by content
(``ingest.parse.matching``); elsewhere line order is all there is.

``read_manifest`` is the one validator of a manifest, for ``ingest`` and ``collect`` alike
(``ingest.collect.jobs.read_requests``): a manifest collect would send is one ingest takes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import IngestError
from ingest.jsonl import read_json_lines


@dataclass(frozen=True)
class Manifest:
    """R requests in response order."""

    path: Path
    line: list[int]
    """(R,) the 1-based line of ``path`` each request is on."""
    request_index: np.ndarray
    """int32 (R,), strictly increasing."""
    split: list[str]
    """(R,) e.g. ``val`` / ``test``."""
    document: list[str]
    """(R,) the document (story) each request's text comes from."""
    params: list[dict[str, Any]]
    """(R,) request parameters (``logprobs``, ``max_tokens``, optionally ``prompt``)."""
    tokens: list[list[str] | None]
    """(R,) the request's token strings as the API writes them (a prepared manifest's
    ``tokens``), None where the line has none."""
    tokenizer: list[str | None]
    """(R,) the name of the tokenizer that prepared the line's ``tokens`` (``gpt2``), None where
    the line names none."""
    k: int | None
    """``params.logprobs``, the same on every line that gives it; None when none does."""

    def __len__(self) -> int:
        return len(self.split)


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate ``requests.jsonl``; IngestError names the line and field at fault."""
    return parse_manifest(read_json_lines(path), path=path)


def parse_manifest(lines: Iterable[tuple[int, Any]], *, path: str | Path) -> Manifest:
    """Validate a manifest's lines, ``(1-based line number, JSON value)`` (``read_manifest``
    reads them from ``path``; a dry run checks lines it has not written there yet); IngestError
    names ``path``, the line and the field at fault."""
    path = Path(path)
    numbers: list[int] = []
    request_index: list[int] = []
    split: list[str] = []
    document: list[str] = []
    params: list[dict[str, Any]] = []
    tokens: list[list[str] | None] = []
    tokenizer: list[str | None] = []
    k_lines: dict[int, int] = {}
    for line, record in lines:
        if not isinstance(record, dict):
            raise IngestError("is not a JSON object", file=str(path), line=line, field="request")
        try:
            index = _required(record, "request_index", int)
            if not 0 <= index < 2**31:
                raise IngestError(f"is {index}, not in 0 .. 2**31-1", field="request_index")
            if request_index and index <= request_index[-1]:
                raise IngestError(
                    f"is {index}, not greater than the previous line's {request_index[-1]}",
                    field="request_index",
                )
            request_index.append(index)
            split.append(_required(record, "split", str))
            document.append(_required(record, "document" if "document" in record else "story", str))
            request_params = record.get("params", {})
            if not isinstance(request_params, dict):
                raise IngestError("is not an object", field="params")
            for name in ("logprobs", "max_tokens"):
                value = request_params.get(name)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise IngestError(f"is {value!r}, not an integer", field=f"params.{name}")
                if value is not None and value < 0:
                    raise IngestError(f"is {value}, not a non-negative integer", field=f"params.{name}")
            prompt = request_params.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise IngestError("is not a string (the prompt text)", field="params.prompt")
            if request_params.get("logprobs") is not None:
                k_lines[line] = request_params["logprobs"]
            params.append(request_params)
            tokens.append(_tokens(record.get("tokens")))
            name = record.get("tokenizer")
            if name is not None and (not isinstance(name, str) or not name):
                raise IngestError(f"is {name!r}, not a tokenizer's name", field="tokenizer")
            tokenizer.append(name)
            numbers.append(line)
        except IngestError as err:
            raise err.located(file=str(path), line=line) from None
    return Manifest(
        path=path,
        line=numbers,
        request_index=np.array(request_index, dtype=np.int32),
        split=split,
        document=document,
        params=params,
        tokens=tokens,
        tokenizer=tokenizer,
        k=_common_k(path, k_lines),
    )


def _required(record: dict[str, Any], name: str, kind: type) -> Any:
    value = record.get(name)
    if value is None:
        raise IngestError("missing", field=name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise IngestError(f"is {value!r}, not {'an integer' if kind is int else 'a string'}", field=name)
    return value


def _tokens(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise IngestError("is not a list of non-empty token strings", field="tokens")
    return value


def _common_k(path: Path, k_lines: dict[int, int]) -> int | None:
    if not k_lines:
        return None
    k, _ = Counter(k_lines.values()).most_common(1)[0]
    for line, value in k_lines.items():
        if value != k:
            raise IngestError(
                f"is {value}, other requests have {k}: one k per dataset",
                file=str(path),
                line=line,
                field="params.logprobs",
            )
    return k

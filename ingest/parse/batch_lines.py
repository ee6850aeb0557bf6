"""Batch-API-shaped files (OpenAI Batch output, ``approxft collect`` raw files): lines
``{"custom_id", "response": {"status_code", "body"}, "error"}`` in any order, failures included.

``custom_id`` names what was asked: ``request-<i>`` for manifest request ``i``, or
``request-<i>-position-<p>`` for next-token mode (the token at position ``p`` predicted from the
tokens before it). In next-token mode a line ``request-<i>-positions`` whose body is
``{"positions": [...]}`` says which positions were sampled (the others stay unobserved); without
it every position whose context can be sent as text is required. The last successful line for an
id wins; failed lines are skipped. A next-token line's list is checked where it is read
(``ingest.parse.completions.check_top_list``), so that an error names its own line and field.
Pure functions over parsed lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ingest.errors import IngestError, shown
from ingest.parse.completions import check_top_list
from ingest.tokens import token_bytes
from ingest.values import is_integer

_ID = re.compile(r"request-(\d+)(?:-position-(\d+)|-(positions))?")
#: The position key of a next-token request's sample line.
_PLAN = -1
#: Where a next-token line holds its list.
_NEXT_TOKEN_LIST = "response.body.choices[0].logprobs.top_logprobs[0]"


def request_id(index: int, position: int | None = None) -> str:
    """The custom id of manifest request ``index`` (at ``position`` in next-token mode)."""
    return f"request-{index}" if position is None else f"request-{index}-position-{position}"


def sample_id(index: int) -> str:
    """The custom id of the line naming request ``index``'s sampled positions (next-token mode)."""
    return f"request-{index}-positions"


def is_wrapped(record: Any) -> bool:
    return isinstance(record, Mapping) and "custom_id" in record


def requestable_positions(tokens: Sequence[str]) -> list[int]:
    """Positions ``p >= 1`` whose preceding tokens end on a character boundary, so that their
    context can be sent as text (next-token mode); the others stay unobserved."""
    pieces = [token_bytes(t) for t in tokens]
    raw = b"".join(pieces)
    positions = []
    end = 0
    for p in range(1, len(tokens)):
        end += len(pieces[p - 1])
        if end == len(raw) or (raw[end] & 0xC0) != 0x80:  # not a UTF-8 continuation byte
            positions.append(p)
    return positions


def unwrap(
    records: Iterable[tuple[int, Any]],
    request_index: Sequence[int],
    *,
    tokens: Sequence[Sequence[str] | None] | None = None,
    file: str,
    digest: Callable[[int, Mapping[str, Any], int], Any] | None = None,
) -> tuple[list[tuple[int, Any]], dict[str, int]]:
    """One ``(line, response body)`` per manifest request, in manifest order, and the counts of
    the quirks tolerated (``ingest.quirks``): ``failed_lines`` skipped, ``repeated_lines``
    (a request answered by a successful line before) whose earlier answer was replaced,
    ``unasked_lines`` (successful lines for requests the manifest does not have) ignored.

    ``records`` are consumed as they come (a file streamed). ``digest(line, body, row)``, where
    given, is what is kept of a body that answers manifest row ``row``, in place of the body: it
    is made as the line is read, so that a file's bodies are never all held at once (a later
    line for the same request replaces it). Next-token lines are kept whole; the body assembled
    from them is digested in its turn.

    ``tokens``: the manifest's token strings per request, needed for next-token lines. A request
    without a successful response is an IngestError naming it.
    """
    row_of = {index: row for row, index in enumerate(request_index)}
    bodies: dict[tuple[int, int | None], tuple[int, Any]] = {}
    counts = {"failed_lines": 0, "repeated_lines": 0}
    for number, record in records:
        if not is_wrapped(record):
            raise IngestError("is not a Batch-API-shaped line like the file's first", file=file, line=number, field="custom_id")
        match = _ID.fullmatch(str(record["custom_id"]))
        if match is None:
            raise IngestError(f"is {shown(record['custom_id'])}, not request-<i>[-position-<p>]", file=file, line=number, field="custom_id")
        response = record.get("response")
        if record.get("error") or not isinstance(response, Mapping) or response.get("status_code") != 200:
            counts["failed_lines"] += 1
            continue
        body = response.get("body")
        if not isinstance(body, Mapping):
            raise IngestError("is not an object", file=file, line=number, field="response.body")
        position = _PLAN if match.group(3) else None if match.group(2) is None else int(match.group(2))
        key = (int(match.group(1)), position)
        counts["repeated_lines"] += key in bodies
        row = row_of.get(key[0])
        bodies[key] = (number, digest(number, body, row) if digest and position is None and row is not None else body)
    out = []
    for row, index in enumerate(request_index):
        if (index, None) in bodies:
            out.append(bodies[(index, None)])
            continue
        request_tokens = tokens[row] if tokens is not None else None
        if request_tokens is None or not any(key[0] == index for key in bodies):
            raise IngestError(f"has no successful response for request {index}: rerun approxft collect", file=file)
        number, body = assemble_next_token(index, request_tokens, bodies, file=file)
        out.append((number, digest(number, body, row) if digest else body))
    asked = set(request_index)
    counts["unasked_lines"] = sum(index not in asked for index, _ in bodies)
    return out, counts


def assemble_next_token(
    index: int, tokens: Sequence[str], bodies: Mapping[tuple[int, int | None], tuple[int, Any]], *, file: str
) -> tuple[int, Mapping[str, Any]]:
    """A legacy-shaped echo response for request ``index`` from its next-token answers: per
    position the top-k list (checked on its line: ``check_top_list``), and the actual token's value
    where it is in the list (else null, i.e. unobserved; so are positions whose context cannot be
    sent as text)."""
    token_lps: list[float | None] = [None] * len(tokens)
    tops: list[dict[str, float] | None] = [None] + [{} for _ in tokens[1:]]
    first_line = None
    model = None
    plan = bodies.get((index, _PLAN))
    positions = requestable_positions(tokens) if plan is None else plan[1].get("positions")
    if not isinstance(positions, list) or not all(is_integer(p) and 0 < p < len(tokens) for p in positions):
        raise IngestError(f"is not a list of positions in 1..{len(tokens) - 1}", file=file, line=plan[0] if plan else None, field="response.body.positions")
    for position in positions:
        found = bodies.get((index, position))
        if found is None:
            raise IngestError(
                f"has no successful response for {request_id(index, position)}: rerun approxft collect", file=file
            )
        number, body = found
        if first_line is not None and body.get("model") != model:
            raise IngestError(f"is {shown(body.get('model'))} but line {first_line} has {shown(model)}: one model per file",
                              file=file, line=number, field="response.body.model")
        first_line = number if first_line is None else min(first_line, number)
        model = body.get("model")
        try:
            listed = body["choices"][0]["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError):
            raise IngestError("missing", file=file, line=number, field=_NEXT_TOKEN_LIST) from None
        try:
            top = check_top_list(listed, field=_NEXT_TOKEN_LIST)
        except IngestError as err:
            raise err.located(file=file, line=number) from None
        tops[position] = top
        token_lps[position] = top.get(tokens[position])
    logprobs = {"tokens": list(tokens), "token_logprobs": token_lps, "top_logprobs": tops}
    body = {"model": model, "choices": [{"logprobs": logprobs}], "usage": {"prompt_tokens": len(tokens)}}
    return (first_line or 1, body)

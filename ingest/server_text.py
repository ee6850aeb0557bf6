"""Server text entering approxft: the one place it comes in, and the one place it is redacted.

Every request approxft sends to an OpenAI-compatible server goes through a client made by
``openai_client``. Its HTTP layer reads each answer whole and redacts its body and headers
before the ``openai`` client parses them, so that nothing downstream (parsed responses, raw logs,
exception texts, transcripts, printed names) can hold a key: redaction happens once, on the whole
body, before anything is cut or parsed. ``server_message`` and ``server_error`` are the one way
to turn a server's error into a line of text (``error.message``, a top-level ``message``, or
FastAPI's ``detail``).

Redacted: every key the process holds (each key given to ``openai_client``, and the value of
``OPENAI_API_KEY``), in every shape a server could echo it: as sent (``Bearer <key>``),
JSON-escaped (also with ``\\/``), Python-repr-escaped, HTML-escaped, URL-quoted (``quote``,
``quote_plus``, either case of hex) and base64 (standard and URL-safe, at any byte alignment).
Any run of ``GRAM`` (8) or more characters of one of these shapes becomes ``***``, so that a key
cut short (by the server, or by a message's length limit) is caught too. A key shorter than
``GRAM`` characters (a placeholder such as vLLM's ``EMPTY``) is replaced only where it stands
whole, in error answers (status >= 400) and headers: replacing it in a successful answer would
change the scored text.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

import numpy as np
import openai

from ingest.errors import MESSAGE_LIMIT, one_line
from ingest.jsonl import loads_unique

__all__ = ["GRAM", "MESSAGE_LIMIT", "body_message", "one_line", "openai_client", "redact", "redact_bytes",
           "server_error", "server_message", "shapes"]

GRAM = 8
"""Shortest run of a key's characters that is redacted (and the shortest key redacted everywhere)."""
MASK = b"***"
_BODY_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}

_held: set[str] = set()
_held_lock = threading.Lock()


def _hold(key: str | None) -> None:
    if key:
        with _held_lock:
            _held.add(key)


def _keys() -> frozenset[str]:
    with _held_lock:
        keys = set(_held)
    if os.environ.get("OPENAI_API_KEY"):
        keys.add(os.environ["OPENAI_API_KEY"])
    return frozenset(keys)


def shapes(key: str) -> set[bytes]:
    """The forms of ``key`` a server could echo (UTF-8): see the module docstring."""
    escaped = json.dumps(key)[1:-1]
    urls = {quote(key, safe=""), quote(key), quote_plus(key, safe="")}
    urls |= {re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), u) for u in urls}
    texts = {key, escaped, escaped.replace("/", "\\/"), json.dumps(key, ensure_ascii=False)[1:-1], repr(key)[1:-1],
             html.escape(key), *urls}
    raw = key.encode("utf-8")
    for before in range(3):  # the key at any byte alignment inside a longer base64 text
        n = before + len(raw)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * before + raw).decode("ascii")
            # Keep the characters that only the key's bytes decide: not the first group where
            # bytes come before the key, not a last group it does not fill.
            texts.add(text[4 if before else 0: 4 * (n // 3)])
    return {t.encode("utf-8") for t in texts if t}


class _Redactor:
    """Finds and masks the shapes of a set of keys in bytes."""

    def __init__(self, keys: Iterable[str]) -> None:
        long_shapes: set[bytes] = set()
        short: set[bytes] = set()
        for key in keys:
            (long_shapes if len(key) >= GRAM else short).update(shapes(key))
        grams = {s[i:i + GRAM] for s in long_shapes for i in range(len(s) - GRAM + 1)}
        self._grams = np.array(sorted(int.from_bytes(g, "little") for g in grams), dtype=np.uint64)
        self._pairs = np.zeros(1 << 16, dtype=bool)  # the first two bytes of some gram: a cheap first filter
        for g in grams:
            self._pairs[g[0] | g[1] << 8] = True
        self._short = (re.compile(b"(?<![A-Za-z0-9])(?:" + b"|".join(map(re.escape, sorted(short, key=len, reverse=True)))
                                  + b")(?![A-Za-z0-9])") if short else None)

    def __call__(self, data: bytes, *, whole_short_keys: bool) -> bytes:
        """``data`` masked. A JSON body is parsed and each string (keys too) masked, then written
        again, so that no mask cuts an escape sequence or a string apart; other text is masked as
        bytes, and so is a JSON body that repeats a key (``loads_unique``), so that the repeat
        stays for the reader to refuse (a parsed object would keep only its last value). Bytes
        without a key come back as they are (the common case, one vectorized scan)."""
        if not self._spans(data, whole_short_keys):
            return data
        try:
            parsed = loads_unique(data)
        except ValueError:  # not JSON, or a repeated key (IngestError)
            return self._mask(data, whole_short_keys)
        return json.dumps(self._walk(parsed, whole_short_keys)).encode("ascii")

    def _walk(self, value: Any, whole_short_keys: bool) -> Any:
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
            masked = self._mask(data, whole_short_keys)
            return value if masked == data else masked.decode("utf-8", "replace")
        if isinstance(value, list):
            return [self._walk(v, whole_short_keys) for v in value]
        if isinstance(value, dict):
            return {self._walk(k, whole_short_keys): self._walk(v, whole_short_keys) for k, v in value.items()}
        return value

    def _mask(self, data: bytes, whole_short_keys: bool) -> bytes:
        if whole_short_keys and self._short is not None:
            data = self._short.sub(MASK, data)
        pieces, last = [], 0
        for start, stop in self._spans(data, False):
            pieces += [data[last:start], MASK]
            last = stop
        pieces.append(data[last:])
        return b"".join(pieces)

    def _spans(self, data: bytes, whole_short_keys: bool) -> list[tuple[int, int]]:
        """The byte spans of ``data`` to mask: runs of ``GRAM`` bytes or more of a long key's
        shapes (merged), and where ``whole_short_keys``, a short key's shapes standing whole."""
        spans = [m.span() for m in self._short.finditer(data)] if whole_short_keys and self._short is not None else []
        n = len(data) - GRAM + 1
        if n <= 0 or not self._grams.size:
            return spans
        pairs = np.ndarray((n,), dtype="<u2", buffer=data, strides=(1,))
        at = np.flatnonzero(self._pairs[pairs])
        if at.size:
            windows = np.ndarray((n,), dtype="<u8", buffer=data, strides=(1,))[at]
            at = at[self._grams[np.searchsorted(self._grams, windows).clip(max=self._grams.size - 1)] == windows]
        return spans + _merge(at.tolist())


def _merge(starts: list[int]) -> list[tuple[int, int]]:
    """The byte spans covered by runs of ``GRAM`` bytes starting at sorted ``starts``, overlapping
    and touching runs merged (each masked once)."""
    spans: list[tuple[int, int]] = []
    for start in starts:
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], start + GRAM))
        else:
            spans.append((start, start + GRAM))
    return spans


@lru_cache(maxsize=8)
def _redactor(keys: frozenset[str]) -> _Redactor:
    return _Redactor(keys)


def redact_bytes(data: bytes, *, error: bool = True) -> bytes:
    """``data`` with every held key masked (``error``: an error answer, where short keys are
    masked too)."""
    keys = _keys()
    return _redactor(keys)(bytes(data), whole_short_keys=error) if keys else bytes(data)


def redact(text: str, *, error: bool = True) -> str:
    """``redact_bytes`` of a string."""
    data = text.encode("utf-8", "surrogatepass")
    masked = redact_bytes(data, error=error)
    return text if masked == data else masked.decode("utf-8", "replace")


def _redacted(response: Any) -> Any:
    """A copy of a read ``httpx`` response with its body and header values redacted."""
    error = response.status_code >= 400
    headers = [(k, redact(v, error=True)) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    clean = type(response)(response.status_code, headers=headers, content=redact_bytes(response.content, error=error),
                           request=response.request, extensions=response.extensions, history=response.history)
    clean.elapsed = response.elapsed
    return clean


class _AsyncHttp(openai.DefaultAsyncHttpxClient):
    """The openai client's default async HTTP client, each answer read whole and redacted."""

    async def send(self, request: Any, **kwargs: Any) -> Any:  # every request goes through send
        response = await super().send(request, **kwargs)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _redacted(response)


class _Http(openai.DefaultHttpxClient):
    """The openai client's default HTTP client, each answer read whole and redacted."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        try:
            response.read()
        finally:
            response.close()
        return _redacted(response)


def openai_client(*, api_key: str | None, asynchronous: bool = True, **options: Any) -> Any:
    """An ``openai.AsyncOpenAI`` (``openai.OpenAI`` where not ``asynchronous``) whose every
    answer is redacted before it is parsed; ``api_key`` is held from now on (None: a server that
    needs none). ``options``: the client's own (``base_url``, ``timeout``, ``max_retries``)."""
    _hold(api_key)
    if asynchronous:
        return openai.AsyncOpenAI(api_key=api_key or "unused", http_client=_AsyncHttp(), **options)
    return openai.OpenAI(api_key=api_key or "unused", http_client=_Http(), **options)


def server_message(err: BaseException) -> str:
    """The server's own message for an ``openai`` exception, one line: ``body_message`` of its
    body, a body that is not JSON as its text, else the exception's text. Already redacted
    (``openai_client``)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        return body_message(body)
    return one_line(body if isinstance(body, str) and body.strip() else str(err))


def body_message(body: dict[str, Any]) -> str:
    """The message of a JSON error body, one line: ``error.message`` (OpenAI), ``message`` (vLLM),
    ``error`` as a string, and ``detail`` (FastAPI: a string, or pydantic's
    ``[{"loc": [...], "msg": ..., "type": ...}]`` as ``loc: msg (type)``); else the body itself."""
    parts: list[str] = []
    inner = body.get("error", body)
    message = inner.get("message") if isinstance(inner, dict) else inner
    if isinstance(message, str) and message.strip():
        parts.append(message)
    detail = body.get("detail", inner.get("detail") if isinstance(inner, dict) else None)
    if detail is not None:
        parts.append(_detail(detail))
    return one_line("; ".join(parts) if parts else json.dumps(body, ensure_ascii=False))


def server_error(err: BaseException) -> str:
    """``server_message`` after the answer's HTTP status (``HTTP 422: ...``), where there is one."""
    status = getattr(err, "status_code", None)
    return f"HTTP {status}: {server_message(err)}" if status is not None else server_message(err)


def _detail(detail: Any) -> str:
    """FastAPI's ``detail``: a string, or pydantic's list of validation errors."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        items = []
        for d in detail:
            where = ".".join(str(part) for part in d.get("loc", ()) if part is not None)
            text = f"{where}: {d.get('msg', '')}" if where else str(d.get("msg", ""))
            items.append(text + (f" ({d['type']})" if d.get("type") else ""))
        return "; ".join(items)
    return json.dumps(detail, ensure_ascii=False)

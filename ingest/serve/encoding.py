"""JSON for responses that can be large (a full-vocabulary top-k list is about 1.5 MB per
position), encoded in pieces: ``json.dumps`` holds the interpreter lock for the whole of one call
(over three seconds for 36 MB), which would stall every other request's thread. Here no call
encodes more than about ``PIECE`` items of a container, so the server's other threads run between
pieces. The text is what ``json.dumps`` writes, spacing included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from typing import Any

PIECE = 4096
"""Most items of one container encoded by one ``json.dumps`` call."""


def encode_json(value: Any) -> bytes:
    """``json.dumps(value)`` as UTF-8, built from pieces."""
    return "".join(_pieces(value)).encode("utf-8")


def _pieces(value: Any) -> Iterator[str]:
    if not isinstance(value, dict | list) or not _heavy(value, PIECE):
        yield json.dumps(value)
        return
    items = iter(value.items() if isinstance(value, dict) else value)
    yield "{" if isinstance(value, dict) else "["
    if len(value) > PIECE:  # a long container: slices of PIECE items, each encoded at once
        first = True
        while chunk := list(islice(items, PIECE)):
            text = json.dumps(dict(chunk) if isinstance(value, dict) else chunk)
            yield ("" if first else ", ") + text[1:-1]
            first = False
    else:  # a short container with heavy items: each item on its own
        for index, item in enumerate(items):
            if index:
                yield ", "
            if isinstance(value, dict):
                yield json.dumps(item[0]) + ": "
                item = item[1]
            yield from _pieces(item)
    yield "}" if isinstance(value, dict) else "]"


def _heavy(value: Any, budget: int) -> bool:
    """Whether ``value`` holds more than ``budget`` items, nested ones counted (stops counting there)."""
    return _count(value, budget) > budget


def _count(value: Any, budget: int) -> int:
    if not isinstance(value, dict | list):
        return 1
    if len(value) > budget:
        return len(value)
    total = 0
    for item in value.values() if isinstance(value, dict) else value:
        total += _count(item, budget - total)
        if total > budget:
            break
    return total

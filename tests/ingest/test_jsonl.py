"""ingest.jsonl.loads_unique: orjson's value where it reads the text, with every repeated key
found as the standard library's hook finds it (the same error, the same field), and the
standard library's value or error wherever orjson refuses the text.

``strict`` below is the obviously correct twin: ``json.loads`` with the hook."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import IngestError
from ingest.jsonl import _loads_strict, _read_strictly, loads_unique


def strict(data: bytes | str) -> tuple[str, Any]:
    """("value", v) or ("error", message) as the standard library's reader gives them."""
    try:
        return "value", _loads_strict(data)
    except IngestError as err:
        return "error", str(err)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:  # the last: as today
        return type(err).__name__, str(err)


def fast(data: bytes | str) -> tuple[str, Any]:
    try:
        return "value", loads_unique(data)
    except IngestError as err:
        return "error", str(err)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:  # the last: as today
        return type(err).__name__, str(err)


def same(a: Any, b: Any) -> bool:
    """Equal values, floats to the bit (NaN equal to NaN, -0.0 apart from 0.0), types alike."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex() if not math.isnan(a) else math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def may_repeat(text: bytes) -> bool:
    return bool(_read_strictly(np.frombuffer(text, dtype=np.uint8)))


# Two spellings of one key, and keys that only look alike.
SPELLINGS = [
    (b'"a"', b'"\\u0061"'),
    (b'"j"', b'"\\u006A"'),  # upper-case hex
    (b'"\\u00e9"', '"é"'.encode()),
    (b'"\\u00E9"', b'"\\u00e9"'),
    (b'"\\ud83d\\ude00"', '"😀"'.encode()),
    (b'"\\/"', b'"/"'),
    (b'"\\n"', b'"\\u000a"'),
    (b'"\\""', b'"\\u0022"'),
    (b'"\\\\"', b'"\\u005c"'),
    (b'"a\\"b"', b'"a\\u0022b"'),
    (b'"x:y"', b'"x\\u003ay"'),
    (b'"\\ud800"', b'"\\ud800"'),  # a lone surrogate: only the standard library reads it
]
DIFFERENT = [
    (b'"a"', b'"b"'),
    (b'"a"', b'"a "'),
    (b'"\\\\"', b'"\\""'),
    (b'"\\\\\\""', b'"\\"\\\\"'),
    (b'"\\n"', b'"\\\\n"'),
    (b'"\\ud83d\\ude00"', b'"\\ude00\\ud83d"'),
    (b'"\\u00e9"', b'"e\\u0301"'),  # the same glyph, not the same string
    (b'""', b'" "'),
]


def nest(obj: bytes, depth: int) -> bytes:
    """``obj`` as the value at ``depth`` levels of objects and arrays, after keys of its own."""
    for level in range(depth):
        obj = (b'{"k%d": 1, "v": [0, {"in": "x:\\"}{"}, ' % level) + obj + b"]}"
    return obj


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
@pytest.mark.parametrize(("one", "two"), SPELLINGS)
def test_two_spellings_of_one_key_are_a_repeat_at_every_depth(one, two, depth):
    text = nest(b"{" + one + b": 1, " + b'"z": {"q": [1, "\\\\"]}, ' + two + b" : 2}", depth)
    expected = strict(text)
    assert expected[0] == "error" and "repeats the key" in expected[1]
    assert fast(text) == expected
    assert may_repeat(text) or b"\\ud800" in text  # orjson refuses a lone surrogate before the scan


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize(("one", "two"), DIFFERENT)
def test_keys_that_differ_are_no_repeat(one, two, depth):
    text = nest(b"{" + one + b": 1, " + two + b": [" + one + b", " + two + b"]}", depth)
    kind, value = fast(text)
    assert kind == "value" and same(value, json.loads(text))
    assert not may_repeat(text)


def test_the_error_names_the_first_object_that_repeats_and_its_key():
    text = b'{"a": [{"b": 1}, {"c": {"d": 1, "e": 2, "\\u0064": 3}}], "a\\u0000": 0}'
    with pytest.raises(IngestError, match=r"^field 'a\[1\]\.c' repeats the key 'd': a JSON object holds each key once$"):
        loads_unique(text)
    with pytest.raises(IngestError, match=r"^repeats the key 'a'"):
        loads_unique('{"a": 1, "b": {}, "a": 1}')


def test_a_key_repeated_in_another_object_is_no_repeat():
    # the same key in sibling and nested objects, in arrays, and as a string value
    text = b'{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}], "c": "a", "d": {"x": "a", "y": "\\"a\\":"}}'
    assert not may_repeat(text)
    assert loads_unique(text) == json.loads(text)


def test_a_large_object_is_checked_by_sorting():
    keys = [f'"k{i}": {i}' for i in range(500)]
    assert not may_repeat(("{" + ", ".join(keys) + "}").encode())
    assert may_repeat(("{" + ", ".join(keys) + ', "k\\u0031\\u0037": 0}').encode())


@pytest.mark.parametrize("text", [
    b'{"a": NaN}', b'{"a": -Infinity}', b'[1e400, -1e400]', b"1" + b"0" * 30, b'"\\udc00"', b'{"a": 1,}',
    b'{"a" 1}', b"", b"   ", b'{"a": 1} x', b'{"a": "\xff"}', b"\xef\xbb\xbf{}", '{"a": 1}'.encode("utf-16"),
    b'{"a": "\t"}', b"[" * 200 + b"]" * 200, b"[" * 2000 + b"]" * 2000, b"-0", b"-0.0", b"1E-400", b"0.1", b"2.5e-5",
    b"9223372036854775807", b"-9223372036854775808", b"18446744073709551615", b"18446744073709551616",
    b'{"n": [-123456789012345678901234567890]}', b"0.000123456789012345678901234", b"1234567890123456789012.5",
    b"2.4703282292062328e-324", b"2.4703282292062327e-324", b"1.7976931348623158e308", b"9007199254740993",
])
def test_what_orjson_refuses_or_reads_otherwise_is_read_as_the_standard_library_does(text):
    a, b = fast(text), strict(text)
    assert a[0] == b[0] and (same(a[1], b[1]) if a[0] == "value" else a[1] == b[1])


def test_str_and_bytes_alike():
    assert loads_unique('{"é": [1.5, null, true]}') == {"é": [1.5, None, True]}
    with pytest.raises(IngestError, match="repeats the key 'é'"):
        loads_unique('{"é": 1, "\\u00e9": 2}')
    assert fast('{"a": "\ud800"}') == strict('{"a": "\ud800"}')  # not UTF-8 encodable
    assert loads_unique(bytearray(b'{"a": [1]}')) == {"a": [1]}
    with pytest.raises(IngestError, match="repeats the key 'a'"):
        loads_unique(bytearray(b'{"a": 1, "a": 2}'))


@settings(max_examples=400, deadline=None)
@given(st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?\Z"))
def test_numbers_read_as_the_standard_library_reads_them(number):
    data = ('{"x": [' + number + "]}").encode()
    a, b = fast(data), strict(data)
    assert a[0] == b[0] and (same(a[1], b[1]) if a[0] == "value" else a[1] == b[1])


def test_only_long_integers_are_read_strictly():
    assert may_repeat(b"[1234567890123456789]") and may_repeat(b'{"a": -1234567890123456789}')
    assert not may_repeat(b"[123456789012345678, -0.1234567890123456789012, 1.5e-1234567890123456789]")


# Random JSON texts: keys from a small alphabet (so that objects repeat keys often) written
# with random escapes, floats as Python and other servers write them.
KEY_CHARS = st.sampled_from(list('aé"\\/:{}[], \n\t😀\x00\u2028') + ["\ud83d"])


def spell(key: str, escapes: list[bool]) -> str:
    out = []
    for ch, escape in zip(key, escapes + [False] * len(key), strict=False):
        if ch in '"\\' or ord(ch) < 0x20 or escape or 0xD800 <= ord(ch) <= 0xDFFF:
            if ord(ch) > 0xFFFF:
                hi, lo = divmod(ord(ch) - 0x10000, 0x400)
                out.append(f"\\u{0xD800 + hi:04x}\\u{0xDC00 + lo:04X}")
            else:
                out.append(f"\\u{ord(ch):04x}" if escape or ch not in '"\\' else "\\" + ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@st.composite
def json_texts(draw, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["object", "object", "array", "scalar"] if depth < 4 else ["scalar"]))
    if kind == "scalar":
        return draw(st.sampled_from(["1", "-0", "null", "true", '"s:\\"{"', "1e-7", "-0.0"])
                    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
                    | st.floats(-50, 0).map(lambda x: f"{x:.17g}"))
    if kind == "array":
        return "[" + ", ".join(draw(st.lists(json_texts(depth + 1), max_size=3))) + "]"
    keys = draw(st.lists(st.text(KEY_CHARS, max_size=3), max_size=5))
    members = [spell(k, draw(st.lists(st.booleans(), max_size=3))) + draw(st.sampled_from([":", " : ", "\n:"]))
               + draw(json_texts(depth + 1)) for k in keys]
    return "{" + ",".join(members) + "}"


@settings(max_examples=400, deadline=None)
@given(json_texts())
def test_random_texts_read_as_the_standard_library_reads_them(text):
    data = text.encode("utf-8", "surrogatepass")
    a, b = fast(data), strict(data)
    assert a[0] == b[0]
    assert same(a[1], b[1]) if a[0] == "value" else a[1] == b[1]

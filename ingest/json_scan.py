"""Which JSON texts the standard library must read (``ingest.jsonl.loads_unique``): one pass
of compiled code over the bytes that orjson has parsed, for objects that may repeat a key
(orjson keeps the last value silently) and for integers that may lie past 64 bits (orjson
reads a float). The GIL is released, so ``ingest.jsonl.read_json_lines`` scans lines on its
reading thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ingest.jit import EXACT

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
#: What a one-character escape (the byte after a backslash) stands for; 0: not one (``u``).
_ESCAPED = np.zeros(256, dtype=np.uint8)
for _c, _v in zip(b'"\\/bfnrt', b'"\\/\b\f\n\r\t', strict=True):
    _ESCAPED[_c] = _v
_LONG_INTEGER = 19
"""Digits from which an integer may lie past 64 bits (2**63 has 19)."""
_SMALL_OBJECT = 32
"""Objects with at most this many keys compare their hashes pairwise; larger ones sort them."""


@njit(**EXACT, nogil=True)
def read_strictly(text: np.ndarray) -> bool:  # pragma: no cover (compiled)
    """Whether ``text`` (uint8 (L,): one JSON value that orjson has accepted, UTF-8) must be
    read by the standard library: some object may repeat a key (two of its keys, decoded:
    escapes, surrogate pairs, hash to the same 64-bit FNV-1a of their UTF-8 bytes), or an integer
    has 19 digits or more (past 64 bits orjson reads a float, ``json`` the exact integer). Equal
    keys hash alike, so False proves that no object repeats a key; True may be a hash collision
    (the caller reads the text again, and finds none).

    A string is a key where the next byte after it but whitespace is a colon; each object's
    key hashes lie on a stack from its ``{`` on (an object nested in a value is checked and
    popped at its ``}`` before its parent's next key is pushed).

    Any bytes may be scanned (``ingest.jsonl.read_json_lines`` scans a line before orjson reads
    it): what valid JSON cannot hold (an unmatched brace, an escape cut off, more keys or objects
    than its bytes allow) gives True, and nothing is read or written outside ``text`` and the
    stacks. The GIL is released.
    """
    n = text.size
    # Stacks allocated once at bounds valid JSON cannot pass (an array that grows inside the loop
    # costs Numba 7 times the scan's time): a member takes 4 bytes at least ('"":0,'), an object
    # 2 ('{}'); other bytes that reach one end the scan. Pages of an np.empty that are never
    # written take no memory.
    hashes = np.empty(n // 4 + 1, dtype=np.uint64)
    starts = np.empty(n // 2 + 1, dtype=np.int64)
    top = depth = 0
    i = 0
    while i < n:
        c = text[i]
        if c == 123:  # {
            if depth == starts.size:
                return True
            starts[depth] = top
            depth += 1
        elif c == 125:  # }
            if depth == 0:
                return True
            depth -= 1
            start = starts[depth]
            if _has_equal(hashes[start:top]):
                return True
            top = start
        elif c == 34:  # a string: hash its decoded bytes
            h = _FNV_OFFSET
            i += 1
            while i < n and text[i] != 34:
                c = text[i]
                if c != 92:
                    h = (h ^ np.uint64(c)) * _FNV_PRIME
                    i += 1
                    continue
                if i + 1 >= n:
                    return True  # an escape cut off
                e = _ESCAPED[text[i + 1]]
                if e != 0:
                    h = (h ^ np.uint64(e)) * _FNV_PRIME
                    i += 2
                    continue
                if i + 6 > n:
                    return True  # a \u escape cut off
                cp = _hex4(text, i + 2)
                i += 6
                if 0xD800 <= cp <= 0xDBFF and i + 5 < n and text[i] == 92 and text[i + 1] == 117:
                    low = _hex4(text, i + 2)
                    if 0xDC00 <= low <= 0xDFFF:  # a surrogate pair is one character
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                        i += 6
                h = _hash_utf8(h, cp)
            i += 1
            j = i
            while j < n and (text[j] == 32 or text[j] == 9 or text[j] == 10 or text[j] == 13):
                j += 1
            if j < n and text[j] == 58:  # a key
                if top == hashes.size:
                    return True
                hashes[top] = h
                top += 1
            continue
        elif c == 45 or 48 <= c <= 57:  # a number
            i += c == 45
            start = i
            while i < n and 48 <= text[i] <= 57:
                i += 1
            if i < n and (text[i] == 46 or text[i] | 32 == 101):  # a fraction or an exponent: a float
                i += 1
                while i < n and (48 <= text[i] <= 57 or text[i] | 32 == 101 or text[i] == 43 or text[i] == 45):
                    i += 1
            elif i - start >= _LONG_INTEGER:
                return True
            continue
        i += 1
    return False


@njit(**EXACT)
def _hex4(text: np.ndarray, i: int) -> int:  # pragma: no cover (compiled)
    """The value of the 4 hex digits at ``text[i:i + 4]`` (a ``\\u`` escape's)."""
    cp = 0
    for j in range(i, i + 4):
        c = text[j]
        cp = cp * 16 + (c - 48 if c <= 57 else (c | 32) - 87)
    return cp


@njit(**EXACT)
def _hash_utf8(h: np.uint64, cp: int) -> np.uint64:  # pragma: no cover (compiled)
    """``h`` (FNV-1a) continued over the UTF-8 bytes of code point ``cp`` (a lone surrogate
    encoded like any other: it cannot meet its raw bytes, which are not UTF-8)."""
    if cp < 0x80:
        return (h ^ np.uint64(cp)) * _FNV_PRIME
    if cp < 0x800:
        h = (h ^ np.uint64(0xC0 | (cp >> 6))) * _FNV_PRIME
    else:
        if cp < 0x10000:
            h = (h ^ np.uint64(0xE0 | (cp >> 12))) * _FNV_PRIME
        else:
            h = (h ^ np.uint64(0xF0 | (cp >> 18))) * _FNV_PRIME
            h = (h ^ np.uint64(0x80 | ((cp >> 12) & 0x3F))) * _FNV_PRIME
        h = (h ^ np.uint64(0x80 | ((cp >> 6) & 0x3F))) * _FNV_PRIME
    return (h ^ np.uint64(0x80 | (cp & 0x3F))) * _FNV_PRIME


@njit(**EXACT)
def _has_equal(hashes: np.ndarray) -> bool:  # pragma: no cover (compiled)
    """Whether two of ``hashes`` (uint64 (k,)) are equal."""
    k = hashes.size
    if k <= _SMALL_OBJECT:
        for a in range(1, k):
            for b in range(a):
                if hashes[a] == hashes[b]:
                    return True
        return False
    ordered = np.sort(hashes)
    return bool((ordered[1:] == ordered[:-1]).any())


@njit(**EXACT, nogil=True)
def read_each_strictly(texts: np.ndarray, ends: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """``read_strictly`` of each of the texts joined in ``texts`` (uint8), text i ending at
    ``ends[i]`` (int64 (B,), ascending); bool (B,)."""
    answers = np.empty(ends.size, dtype=np.bool_)
    start = 0
    for i in range(ends.size):
        answers[i] = read_strictly(texts[start:ends[i]])
        start = ends[i]
    return answers

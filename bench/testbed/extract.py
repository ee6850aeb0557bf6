"""Pure extractors: the text of a Debian package's files -> documents (``ingest.prepare.corpus.Document``).

Each reads what the package ships (fortune cookie files, dictd databases, ``bible``'s printout,
an R data package's lazy-load database) and is tested on small fake inputs; ``sources`` does the
installing and calls them.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.testbed.errors import BuildError
from ingest.prepare.corpus import Document

FORTUNE_SKIP = frozenset({"ascii-art", "art"})
"""Fortune files of pictures and TV-listing jokes drawn in whitespace, not prose."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_OVERSTRIKE = re.compile(r".\x08")


def clean_text(text: str) -> str:
    """Remove backspace overstrikes (``_\\bx`` underlining) and control characters other than
    newline and tab; strip trailing spaces of lines and blank lines at both ends."""
    text = _CONTROL.sub("", _OVERSTRIKE.sub("", text))
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def reflow(lines: Iterable[str]) -> str:
    """Hard-wrapped lines -> paragraphs: non-blank lines joined by spaces, paragraphs by a
    blank line."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


# -- fortunes ---------------------------------------------------------------------------------


def fortune_documents(text: str, *, source: str) -> list[Document]:
    """The fortunes of one cookie file (entries separated by lines holding only ``%``), named
    ``<source> <n>``."""
    documents = []
    for entry in re.split(r"(?m)^%\s*$", text):
        entry = clean_text(entry)
        if entry.strip():
            documents.append(Document(name=f"{source} {len(documents) + 1}", text=entry))
    return documents


def fortune_files(directory: Path) -> list[Path]:
    """The cookie files of a fortunes directory: those with a ``.dat`` index, minus
    ``FORTUNE_SKIP``, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.with_name(p.name + ".dat").exists() and p.name not in FORTUNE_SKIP)


# -- dictd databases --------------------------------------------------------------------------

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(text: str) -> int:
    """dictd's offsets and lengths: base-64 digits, most significant first."""
    value = 0
    for c in text:
        value = value * 64 + _B64[c]
    return value


def dict_entries(index: str, data: bytes) -> list[tuple[str, str]]:
    """``(headword, entry text)`` of a dictd database: ``index`` is the ``.index`` file
    (headword, offset, length; tab-separated, base-64 numbers), ``data`` the uncompressed
    ``.dict``. Entries are in file order, each once (several headwords may share one); the
    ``00-database-*`` metadata entries are left out."""
    seen: set[tuple[int, int]] = set()
    entries = []
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith(("00-database", "00database")):
            continue
        span = (_b64_number(parts[1]), _b64_number(parts[2]))
        if span in seen:
            continue
        seen.add(span)
        entries.append((span, parts[0]))
    entries.sort()
    return [(word, data[start : start + length].decode("utf-8", errors="replace")) for (start, length), word in entries]


def dict_documents(index: str, data: bytes) -> list[Document]:
    """One document per dictd entry, named by its headword, text cleaned (``clean_text``)."""
    documents = []
    for word, text in dict_entries(index, data):
        text = clean_text(text)
        if text.strip():
            documents.append(Document(name=word, text=text))
    return documents


_GCIDE_TAG_LINE = re.compile(r"(?m)^[ \t]*\[[^\]\n]*\][ \t]*\n?")
_GCIDE_PRONUNCIATION = re.compile(r"[ \t]*\\[^\\\n]*\\,?")
_GCIDE_NAMED = {"eth": "th", "thorn": "th", "imac": "i", "aum": "a", "asl": "a", "deg": "°", "root": "√", "ng": "ng"}
_GCIDE_CODE = re.compile(r"\[(?:[=\-'\"`~^.,]?)([A-Za-z]{1,5})\^?\]")


def _gcide_letter(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _GCIDE_NAMED:
        return _GCIDE_NAMED[code]
    # Accented letters and ligatures are their letters with a mark: [=a], ['e], [i^], [ae], ["o].
    return code if len(code) <= 2 and code.islower() else match.group(0)


def gcide_text(entry: str) -> str:
    """A GCIDE entry, lightly cleaned: source-tag lines (``[1913 Webster]``) dropped, ``{x}``
    cross-reference braces and ``\\Pro*nun"ci*a`tion\\`` marks removed, accent codes (``[=a]``,
    ``[ae]``, ``[eth]``) made plain letters, hard-wrapped lines joined into paragraphs."""
    text = _GCIDE_TAG_LINE.sub("", entry)
    text = _GCIDE_PRONUNCIATION.sub("", text).replace("{", "").replace("}", "")
    text = _GCIDE_CODE.sub(_gcide_letter, text)
    return reflow(text.splitlines())


def sample_documents(documents: Sequence[Document], max_chars: int, *, seed: int) -> list[Document]:
    """A seeded random subset of ``documents`` (kept in their order) holding at most
    ``max_chars`` characters."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for i in order:
        if total + len(documents[i].text) > max_chars:
            break
        chosen.append(i)
        total += len(documents[i].text)
    return [documents[i] for i in sorted(chosen)]


# -- King James Bible -------------------------------------------------------------------------

_CHAPTER = re.compile(r"^(?P<book>(?:[1-3] )?[A-Z][A-Za-z ]*?) (?P<chapter>\d+)$")
_VERSE = re.compile(r"^\s+\d+ (?P<text>.*\S)\s*$")


def kjv_chapters(printed: str) -> list[Document]:
    """Chapters of ``bible``'s output (a "Book N" heading line, then indented, numbered verses,
    one per line): one document per chapter, named "Book N", text = the heading, then the verses
    one per line without their numbers."""
    documents: list[Document] = []
    heading, verses = None, []

    def close() -> None:
        if heading is not None:
            if not verses:
                raise BuildError(f"the KJV chapter {heading!r} has no verses")
            documents.append(Document(name=heading, text="\n".join([heading, *verses])))

    for line in printed.splitlines():
        if not line.strip():
            continue
        verse = _VERSE.match(line)
        if verse:
            if heading is None:
                raise BuildError(f"the KJV text has a verse before any chapter heading: {line[:60]!r}")
            verses.append(verse.group("text"))
            continue
        if not _CHAPTER.match(line.strip()):
            raise BuildError(f"the KJV text has a line that is neither a heading nor a verse: {line[:60]!r}")
        close()
        heading, verses = line.strip(), []
    close()
    return documents


# -- Jane Austen (R data) ---------------------------------------------------------------------

_R_STRSXP, _R_CHARSXP = 16, 9
_R_LATIN1 = 1 << 2
"""CHARSXP encoding bit (in the 'levels' part of the flags)."""


def r_character_vectors(rdb: bytes) -> list[list[str]]:
    """Every object of an R lazy-load database (``.rdb``) that is a character vector, in file
    order. Each object is a 4-byte big-endian length and a zlib stream of R's XDR serialization;
    other object types are an error (this reads data packages of text, nothing more)."""
    vectors = []
    rest = rdb
    while rest:
        inflate = zlib.decompressobj()
        try:
            blob = inflate.decompress(rest[4:])
        except zlib.error as err:
            raise BuildError(f"R database: not a zlib-compressed object ({err})") from None
        rest = inflate.unused_data
        vectors.append(_r_strings(blob))
    return vectors


def _r_strings(blob: bytes) -> list[str]:
    if blob[:2] != b"X\n":
        raise BuildError("R database: an object is not in XDR serialization")
    version = int.from_bytes(blob[2:6], "big")
    pos = 14  # format, writer version, minimal reader version
    if version == 3:
        pos += 4 + int.from_bytes(blob[pos : pos + 4], "big")  # the native encoding's name
    flags = int.from_bytes(blob[pos : pos + 4], "big")
    if flags & 0xFF != _R_STRSXP:
        raise BuildError(f"R database: an object of type {flags & 0xFF}, not a character vector")
    n = int.from_bytes(blob[pos + 4 : pos + 8], "big")
    pos += 8
    strings = []
    for _ in range(n):
        flags = int.from_bytes(blob[pos : pos + 4], "big")
        length = int.from_bytes(blob[pos + 4 : pos + 8], "big", signed=True)
        pos += 8
        if flags & 0xFF != _R_CHARSXP:
            raise BuildError("R database: a character vector holds a non-string")
        if length < 0:  # NA
            strings.append("")
            continue
        raw = blob[pos : pos + length]
        pos += length
        strings.append(raw.decode("latin-1" if (flags >> 12) & _R_LATIN1 else "utf-8"))
    return strings


_AUSTEN_CHAPTER = re.compile(r"^(?:CHAPTER|Chapter) [0-9IVXLC]+\.?$")
_AUSTEN_VOLUME = re.compile(r"^(?:VOLUME|Volume) [IVX]+$")


def austen_chapters(lines: Sequence[str]) -> list[Document]:
    """One novel's lines (``janeaustenr``: the title first, blank strings between paragraphs)
    -> one document per chapter, named "<Title>, [<VOLUME n>, ]<CHAPTER n>", text reflowed; the
    front matter before the first chapter heading is dropped."""
    title = next((line.strip() for line in lines if line.strip()), "").title()
    documents: list[Document] = []
    volume, heading, body = "", None, []

    def close() -> None:
        if heading is not None and reflow(body):
            documents.append(Document(name=f"{title}, {heading}", text=reflow(body)))

    for line in lines:
        if _AUSTEN_VOLUME.match(line.strip()):
            close()
            volume, heading, body = f"{line.strip()}, ", None, []
        elif _AUSTEN_CHAPTER.match(line.strip()):
            close()
            heading, body = volume + line.strip(), []
        else:
            body.append(line)
    close()
    if not documents:
        raise BuildError(f"the novel {title!r} has no chapter headings")
    return documents

"""Corpus preparation: documents -> fine-tuning share + held-out ``val``/``test`` chunks -> manifest.

A corpus is a text file whose documents are separated by a regular expression (default: two or
more blank lines; a document is named by its first line), or a JSONL file of objects with
``text`` and optionally ``title``/``name``/``id``. The first ``finetune_share`` of the characters
(whole documents, the prefix nearest that share) is kept for fine-tuning; the held-out rest is
divided by document, the first ``val_share`` of them ``val`` and the others ``test``, and each
held-out document is cut into consecutive chunks of at most ``chunk_tokens`` tokens, cut only
between tokens that are also character boundaries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.atomic import write_text_atomic
from ingest.errors import IngestError
from ingest.jsonl import read_json_lines
from ingest.tokens import api_token

#: A tokenizer maps text to its tokens' raw bytes (concatenated, they are the text's UTF-8).
TokenBytes = Callable[[str], list[bytes]]

DEFAULT_SEPARATOR = r"\n[ \t]*\n(?:[ \t]*\n)+"
MANIFEST = "requests.jsonl"
FINETUNE = "finetune.jsonl"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """One request: a held-out document's consecutive tokens."""

    split: str
    document: str
    text: str
    tokens: list[str]
    """The chunk's tokens as the API writes them (text, or ``bytes:\\xNN``)."""


@dataclass(frozen=True)
class Prepared:
    finetune: list[Document]
    val: list[Document]
    test: list[Document]
    chunks: list[Chunk]


def read_documents(path: str | Path, *, separator: str = DEFAULT_SEPARATOR) -> list[Document]:
    """Documents of a ``.jsonl`` file (one object per line) or a text file split by ``separator``."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise IngestError(f"cannot be read as UTF-8 text: {err}", file=str(path)) from None
    documents = []
    for text in re.split(separator, raw):
        text = text.strip()
        if text:
            documents.append(Document(name=text.splitlines()[0].strip()[:80], text=text))
    if not documents:
        raise IngestError("holds no documents", file=str(path))
    return documents


def _jsonl_documents(path: Path) -> list[Document]:
    documents = []
    for number, record in read_json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise IngestError("missing or not a string", file=str(path), line=number, field="text")
        name = next((record[k] for k in ("title", "name", "id") if record.get(k) is not None), f"doc-{len(documents)}")
        documents.append(Document(name=str(name), text=record["text"]))
    if not documents:
        raise IngestError("holds no documents", file=str(path))
    return documents


def split_documents(
    documents: Sequence[Document], *, finetune_share: float = 0.6, val_share: float = 0.5
) -> tuple[list[Document], list[Document], list[Document]]:
    """``(finetune, val, test)``: the prefix of whole documents nearest ``finetune_share`` of the
    characters (at least one document held out), the held-out rest split by document count."""
    if not 0 <= finetune_share < 1:
        raise IngestError(f"is {finetune_share}, not in [0, 1)", field="finetune_share")
    if not 0 <= val_share <= 1:
        raise IngestError(f"is {val_share}, not in [0, 1]", field="val_share")
    total = sum(len(d.text) for d in documents)
    cumulative = [0]
    for d in documents:
        cumulative.append(cumulative[-1] + len(d.text))
    n_tune = min(range(len(documents)), key=lambda k: abs(cumulative[k] - finetune_share * total))
    held = list(documents[n_tune:])
    n_val = round(val_share * len(held))
    return list(documents[:n_tune]), held[:n_val], held[n_val:]


def chunk_document(text: str, tokenize: TokenBytes, chunk_tokens: int) -> list[tuple[str, list[bytes]]]:
    """Consecutive ``(chunk text, its tokens' bytes)`` of at most ``chunk_tokens`` tokens each
    (more only where no character boundary falls within that many tokens)."""
    if chunk_tokens < 1:
        raise IngestError(f"is {chunk_tokens}, not a positive integer", field="chunk_tokens")
    pieces = tokenize(text)
    raw = text.encode("utf-8")
    if b"".join(pieces) != raw:
        raise IngestError("the tokenizer's tokens do not spell the text", field="tokenizer")
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))
    # A cut between tokens is allowed where it falls on a character boundary.
    cuttable = [i for i, end in enumerate(ends) if end == len(raw) or (raw[end] & 0xC0) != 0x80]
    chunks = []
    start = 0
    while start < len(pieces):
        fits = [i for i in cuttable if start < i <= start + chunk_tokens]
        stop = fits[-1] if fits else next(i for i in cuttable if i > start)
        chunks.append((raw[ends[start] : ends[stop]].decode("utf-8"), pieces[start:stop]))
        start = stop
    return chunks


def prepare(
    documents: Sequence[Document],
    tokenize: TokenBytes,
    *,
    chunk_tokens: int = 512,
    finetune_share: float = 0.6,
    val_share: float = 0.5,
) -> Prepared:
    """Split ``documents`` and chunk the held-out ones (val chunks first, then test)."""
    finetune, val, test = split_documents(documents, finetune_share=finetune_share, val_share=val_share)
    chunks = [
        Chunk(split=split, document=doc.name, text=text, tokens=[api_token(p) for p in pieces])
        for split, docs in (("val", val), ("test", test))
        for doc in docs
        for text, pieces in chunk_document(doc.text, tokenize, chunk_tokens)
    ]
    return Prepared(finetune=finetune, val=val, test=test, chunks=chunks)


def manifest_lines(prepared: Prepared, *, logprobs: int, max_tokens: int = 0, tokenizer: str | None = None) -> list[dict[str, Any]]:
    """The request manifest: one echo-scoring request per chunk (``params.prompt`` = its text),
    plus ``tokens`` (the chunk's tokens as the API writes them, by the preparing tokenizer) and,
    where given, ``tokenizer`` (that tokenizer's name, e.g. ``gpt2``: ``--tokenizer``)."""
    named = {} if tokenizer is None else {"tokenizer": tokenizer}
    return [
        {
            "request_index": i,
            "split": chunk.split,
            "story": chunk.document,
            "params": {"echo": True, "max_tokens": max_tokens, "logprobs": logprobs, "prompt": chunk.text},
            "tokens": chunk.tokens,
            **named,
        }
        for i, chunk in enumerate(prepared.chunks)
    ]


def write_prepared(out: str | Path, prepared: Prepared, *, logprobs: int, max_tokens: int = 0, tokenizer: str | None = None) -> Path:
    """Write ``requests.jsonl`` (``manifest_lines``) and ``finetune.jsonl`` into directory ``out``
    (each atomically); return the manifest's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = manifest_lines(prepared, logprobs=logprobs, max_tokens=max_tokens, tokenizer=tokenizer)
    manifest = out / MANIFEST
    write_text_atomic(manifest, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    write_text_atomic(
        out / FINETUNE,
        "".join(json.dumps({"document": d.name, "text": d.text}, ensure_ascii=False) + "\n" for d in prepared.finetune),
    )
    return manifest


def prepared_summary(prepared: Prepared, manifest: Path) -> dict[str, Any]:
    """Documents, requests and tokens per split of a preparation (what ``approxft prepare`` prints)."""
    return {
        "manifest": str(manifest),
        "documents": {"finetune": len(prepared.finetune), "val": len(prepared.val), "test": len(prepared.test)},
        "requests": {s: sum(c.split == s for c in prepared.chunks) for s in ("val", "test")},
        "tokens": {s: sum(len(c.tokens) for c in prepared.chunks if c.split == s) for s in ("val", "test")},
    }

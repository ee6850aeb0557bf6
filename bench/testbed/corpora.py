"""Corpora: reading and checking the input files, choosing the domain subset and the general
held-out documents, and packing documents into token streams.

A corpus file is what ``ingest.prepare.corpus.read_documents`` reads: a text file whose documents are
separated by two or more blank lines (named by their first line), or a ``.jsonl`` file of
``{"text", "title"}`` objects. Token ids come from the GPT-2 tokenizer the models are saved with
(``ingest.prepare.tokenizer.hf_gpt2_tokenizer``), the same one ``approxft serve`` encodes prompts with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.testbed.errors import BuildError
from bench.testbed.train import EOS_ID
from ingest.errors import IngestError
from ingest.prepare.corpus import Document, read_documents

SNIFF_BYTES = 1 << 16
"""Bytes read to tell text from binary before parsing a whole file."""


def read_corpus(path: Path) -> list[Document]:
    """The documents of one corpus file; BuildError naming the file when it is missing, empty,
    binary (NUL bytes) or not UTF-8."""
    if not path.is_file():
        raise BuildError(f"{path}: corpus file not found")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head.strip():
        raise BuildError(f"{path}: the corpus file is empty")
    if b"\x00" in head:
        raise BuildError(f"{path}: not a text file (it holds NUL bytes)")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BuildError(f"{path}: not UTF-8 text (invalid byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        documents = read_documents(path)
    except IngestError as err:
        raise BuildError(str(err)) from None
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise BuildError(f"{path}: holds no documents with text")
    return documents


def encode(tokenizer: Any, documents: Sequence[Document]) -> list[list[int]]:
    """Token ids of each document's text (no special tokens)."""
    if not documents:
        return []
    return tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]


def pack(token_lists: Sequence[Sequence[int]]) -> np.ndarray:
    """One stream: every list followed by EOS; uint16 (n,) (GPT-2 ids fit in 16 bits)."""
    total = sum(len(t) + 1 for t in token_lists)
    stream = np.empty(total, dtype=np.uint16)
    at = 0
    for tokens in token_lists:
        stream[at : at + len(tokens)] = tokens
        stream[at + len(tokens)] = EOS_ID
        at += len(tokens) + 1
    return stream


def leading_documents(token_counts: Sequence[int], max_tokens: int) -> int:
    """How many documents from the start fit in ``max_tokens`` tokens (at least one)."""
    total, n = 0, 0
    for count in token_counts:
        if n and total + count > max_tokens:
            break
        total += count
        n += 1
    return n


def held_out_documents(token_counts: Sequence[int], tokens: int, *, seed: int) -> list[int]:
    """Indices (sorted) of a seeded random set of whole documents holding at least ``tokens``
    tokens, or every document but one when there are not that many. BuildError for fewer than
    two documents (nothing would be left to train on)."""
    if len(token_counts) < 2:
        raise BuildError("the general corpus needs at least two documents: one to train on, one held out")
    order = np.random.default_rng(seed).permutation(len(token_counts))
    chosen, total = [], 0
    for i in order[:-1]:
        if total >= tokens:
            break
        chosen.append(int(i))
        total += token_counts[i]
    return sorted(chosen)


def chunks(tokens: Sequence[int], length: int) -> list[list[int]]:
    """Consecutive pieces of at most ``length`` tokens (scored with the context restarting at
    each piece, as the domain chunks are)."""
    return [list(tokens[i : i + length]) for i in range(0, len(tokens), length)]


@dataclass(frozen=True)
class Corpus:
    """Documents with their token ids and where they came from."""

    documents: list[Document]
    tokens: list[list[int]]
    files: list[str]
    """Per document, the path of the file it was read from."""

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def subset(self, indices: Sequence[int]) -> Corpus:
        return Corpus([self.documents[i] for i in indices], [self.tokens[i] for i in indices], [self.files[i] for i in indices])

    def per_file(self) -> dict[str, dict[str, int]]:
        """file path -> {documents, tokens}."""
        out: dict[str, dict[str, int]] = {}
        for file, tokens in zip(self.files, self.tokens, strict=True):
            entry = out.setdefault(file, {"documents": 0, "tokens": 0})
            entry["documents"] += 1
            entry["tokens"] += len(tokens)
        return out

    def sha256(self) -> str:
        """Of the documents' texts in order (what a model trained on this saw)."""
        digest = hashlib.sha256()
        for d in self.documents:
            digest.update(d.text.encode("utf-8") + b"\x00")
        return digest.hexdigest()


def load_corpus(paths: Sequence[Path], tokenizer: Any) -> Corpus:
    """Every document of ``paths`` in order, encoded."""
    documents, files = [], []
    for path in paths:
        read = read_corpus(path)
        documents.extend(read)
        files.extend([str(path)] * len(read))
    return Corpus(documents, encode(tokenizer, documents), files)

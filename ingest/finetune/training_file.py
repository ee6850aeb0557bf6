"""The fine-tuning training file: the corpus's fine-tuning share cut into examples, validated.

Only the fine-tuning share (``ingest.prepare.corpus.split_documents``: the first ``finetune_share`` of
the characters, whole documents) is used; the held-out documents never reach the file. Each
document is cut into chunks of about ``words`` whitespace-separated words (the prototype's
500), cut only between words and keeping the text's own spacing and newlines; a last piece
shorter than a quarter chunk joins the one before it. Formats:

- ``completions``: ``{"prompt": "", "completion": " <chunk>"}`` (the prototype's, for the legacy
  completions fine-tuning endpoint and ``approxft finetune local``);
- ``chat``: ``{"messages": [{"role": "user", "content": INSTRUCTION}, {"role": "assistant",
  "content": "<chunk>"}]}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.atomic import write_text_atomic
from ingest.errors import IngestError
from ingest.jsonl import read_json_lines
from ingest.prepare.corpus import Document, split_documents

FORMATS = ("completions", "chat")
CHAT_INSTRUCTION = "Continue the text."
"""The user message of every chat example (the assistant's reply is the chunk)."""
MIN_EXAMPLES = 10
"""OpenAI's minimum number of training examples; fewer is reported as a warning."""

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class TrainingFile:
    """Examples ready to write, with what validation found.

    Attributes:
        examples: one JSON object per line.
        texts: each example's training text (the completion or the assistant reply).
        summary: counts for the summary line (documents, examples, words, characters, GPT-2
            tokens, duplicates dropped, warnings).
    """

    examples: list[dict[str, Any]]
    texts: list[str]
    summary: dict[str, Any]


def chunk_words(text: str, words: int) -> list[str]:
    """``text`` cut between words into pieces of ``words`` words (the last one up to 1.25×)."""
    if words < 1:
        raise IngestError(f"is {words}, not a positive integer", field="words")
    starts = [m.start() for m in _WORD.finditer(text)]
    if not starts:
        return []
    cuts = list(range(0, len(starts), words))
    if len(cuts) > 1 and len(starts) - cuts[-1] < words / 4:
        cuts.pop()
    pieces = []
    for j, w in enumerate(cuts):
        end = starts[cuts[j + 1]] if j + 1 < len(cuts) else len(text)
        pieces.append(text[starts[w]:end].strip())
    return pieces


def _example(chunk: str, fmt: str) -> dict[str, Any]:
    if fmt == "completions":
        return {"prompt": "", "completion": " " + chunk}
    return {"messages": [{"role": "user", "content": CHAT_INSTRUCTION}, {"role": "assistant", "content": chunk}]}


def training_file(
    documents: Sequence[Document], *, fmt: str = "completions", words: int = 500, finetune_share: float = 0.6
) -> TrainingFile:
    """Examples of the fine-tuning share of ``documents``, exact duplicates dropped.

    Raises:
        IngestError: an unknown format, or no fine-tuning share (too few documents, or a share
            so small that no whole document fits in it).
    """
    if fmt not in FORMATS:
        raise IngestError(f"is {fmt!r}: expected one of {', '.join(FORMATS)}", field="format")
    finetune, val, test = split_documents(documents, finetune_share=finetune_share)
    if not finetune:
        raise IngestError(
            f"has no fine-tuning share: {len(documents)} document(s), and the first {finetune_share:.0%} of the "
            "characters holds no whole document (documents are split by blank lines; use more, shorter documents "
            "or a larger --finetune-share)", field="corpus")
    from ingest.prepare.bpe import gpt2

    bpe = gpt2()
    seen: set[str] = set()
    examples, texts, tokens, duplicates = [], [], [], 0
    for doc in finetune:
        for chunk in chunk_words(doc.text, words):
            if chunk in seen:
                duplicates += 1
                continue
            seen.add(chunk)
            example = _example(chunk, fmt)
            examples.append(example)
            texts.append(example["completion"] if fmt == "completions" else chunk)
            tokens.append(len(bpe.encode(texts[-1])))
    if not examples:
        raise IngestError("has no words in its fine-tuning share", field="corpus")
    warnings = []
    if len(examples) < MIN_EXAMPLES:
        warnings.append(f"{len(examples)} examples: OpenAI fine-tuning needs at least {MIN_EXAMPLES}")
    if duplicates:
        warnings.append(f"{duplicates} duplicate chunk(s) dropped")
    n_words = [len(_WORD.findall(t)) for t in texts]
    summary = {
        "format": fmt,
        "documents": {"finetune": len(finetune), "held_out": len(val) + len(test)},
        "examples": len(examples),
        "words": {"total": sum(n_words), "min": min(n_words), "max": max(n_words)},
        "characters": sum(len(t) for t in texts),
        "gpt2_tokens": {"total": sum(tokens), "min": min(tokens), "max": max(tokens),
                        "mean": round(sum(tokens) / len(tokens), 1)},
        "duplicates_dropped": duplicates,
        "warnings": warnings,
    }
    return TrainingFile(examples=examples, texts=texts, summary=summary)


def write_training_file(path: str | Path, prepared: TrainingFile) -> Path:
    """Write the examples as JSON lines, atomically."""
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in prepared.examples)
    return write_text_atomic(path, text)


def read_training_texts(path: str | Path) -> list[str]:
    """The training texts of a file ``training_file`` wrote (either format); IngestError names
    the line at fault."""
    path = Path(path)
    texts = []
    for number, record in read_json_lines(path):
        if isinstance(record, dict) and isinstance(record.get("completion"), str):
            texts.append(record.get("prompt", "") + record["completion"])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            texts.append("\n".join(str(m.get("content", "")) for m in record["messages"]
                                   if isinstance(m, dict) and m.get("role") == "assistant"))
        else:
            raise IngestError("neither a completions ({prompt, completion}) nor a chat ({messages}) example",
                              file=str(path), line=number)
    if not texts:
        raise IngestError("holds no training examples", file=str(path))
    return texts

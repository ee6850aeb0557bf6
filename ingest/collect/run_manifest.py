"""A collection run's request manifest: the corpus itself where it already is one, else the
corpus prepared into ``OUT/requests.jsonl``. A rerun must prepare the same manifest as the run it
resumes (same corpus, same options), so that two corpora never mix in one run directory. Every
line of it is validated (``ingest.manifest``) before a request is sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingest.jsonl import read_json_lines
from ingest.manifest import Manifest, parse_manifest, read_manifest
from ingest.prepare.corpus import (
    MANIFEST,
    Prepared,
    TokenBytes,
    manifest_lines,
    write_prepared,
)

__all__ = ["RunManifest", "run_manifest", "is_manifest"]


@dataclass(frozen=True)
class RunManifest:
    """The run's manifest: its path, its validated lines, and the preparation this call wrote
    (None where the corpus was a manifest already, the run's own was reused, or nothing was
    written)."""

    path: Path
    manifest: Manifest
    written: Prepared | None


def run_manifest(
    corpus: str | Path,
    out: Path,
    *,
    prepare: Callable[[TokenBytes], Prepared],
    tokenizer: Callable[[], TokenBytes],
    logprobs: int,
    tokenizer_name: str | None = None,
    reuse_without_checking: bool = False,
    write: bool = True,
) -> RunManifest:
    """The manifest of a run writing into ``out``.

    Args:
        corpus: a text or JSONL corpus, or a prepared ``requests.jsonl``.
        prepare: prepares the corpus with a tokenizer (``ingest.prepare.corpus.prepare``).
        tokenizer: makes the tokenizer (called only where the corpus must be prepared).
        logprobs: top-k asked for, written into the manifest's params.
        tokenizer_name: the tokenizer's name, written into the manifest (``tokenizer``).
        reuse_without_checking: take ``out``'s manifest as it is where there is one (a server
            tokenizer would have to be asked again to check it).
        write: write a new manifest (False for a dry run).

    Raises:
        ValueError: ``out`` holds a manifest prepared from another corpus or with other options.
        IngestError: a line of the manifest is invalid (``ingest.manifest``), naming the file,
            line and field.
    """
    corpus = Path(corpus)
    if corpus.suffix == ".jsonl" and is_manifest(corpus):
        return RunManifest(corpus, read_manifest(corpus), None)
    target = out / MANIFEST
    if reuse_without_checking and target.exists():
        return RunManifest(target, read_manifest(target), None)
    prepared = prepare(tokenizer())
    fresh = manifest_lines(prepared, logprobs=logprobs, tokenizer=tokenizer_name)
    checked = parse_manifest(enumerate(fresh, start=1), path=target)  # before anything is written or sent
    if target.exists():
        if [record for _, record in read_json_lines(target)] != fresh:
            raise ValueError(f"{target}: prepared from a different corpus or options; use another --out to start a new run")
        return RunManifest(target, checked, None)
    if not write:
        return RunManifest(target, checked, None)
    write_prepared(out, prepared, logprobs=logprobs, tokenizer=tokenizer_name)
    return RunManifest(target, checked, prepared)


def is_manifest(path: Path) -> bool:
    """Whether a JSONL file is meant as a request manifest (its first record has
    ``request_index``); ``read_manifest`` then checks every line."""
    for _, record in read_json_lines(path):
        return isinstance(record, dict) and "request_index" in record
    return False


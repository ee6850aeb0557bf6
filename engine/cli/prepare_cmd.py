"""``approxft prepare``: a corpus -> fine-tuning share + the request manifest of held-out chunks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ingest.corpus import DEFAULT_SEPARATOR, Prepared, TokenBytes, prepare, read_documents, write_prepared


def add_prepare_options(p: argparse.ArgumentParser) -> None:
    """The corpus options ``prepare`` and ``collect`` share."""
    g = p.add_argument_group("corpus preparation")
    g.add_argument("--tokenizer", default="gpt2", help="gpt2 (bundled vocabulary), gpt2:DIR, tiktoken:ENCODING, or server (the big role's echo)")
    g.add_argument("--chunk-tokens", type=int, default=512, help="most tokens per request (default 512)")
    g.add_argument("--finetune-share", type=float, default=0.6, help="share of characters kept for fine-tuning, whole documents (default 0.6)")
    g.add_argument("--val-share", type=float, default=0.5, help="share of held-out documents in val, the rest test (default 0.5)")
    g.add_argument("--logprobs", type=int, default=5, help="top-k per position asked for (default 5, OpenAI's maximum for completions)")
    g.add_argument("--separator", default=DEFAULT_SEPARATOR, help="regex between documents of a text corpus (default: two or more blank lines)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="split a corpus into fine-tuning and held-out val/test chunks; write the request manifest",
        description="Split a text file (documents separated by blank lines) or a JSONL file of "
        "documents ({\"text\", \"title\"}): the first 60%% of the characters (whole documents) are "
        "kept for fine-tuning (finetune.jsonl), the rest held out, split into val and test by "
        "document and cut into chunks of at most --chunk-tokens tokens (requests.jsonl).",
        epilog="Example: approxft prepare grimm.txt --out grimm-run --tokenizer gpt2 --chunk-tokens 512",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("corpus", metavar="CORPUS", help="text file or JSONL of documents")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for requests.jsonl and finetune.jsonl")
    add_prepare_options(p)
    p.set_defaults(run=run)


def prepare_corpus(args: argparse.Namespace, tokenize: TokenBytes) -> Prepared:
    return prepare(
        read_documents(args.corpus, separator=args.separator),
        tokenize,
        chunk_tokens=args.chunk_tokens,
        finetune_share=args.finetune_share,
        val_share=args.val_share,
    )


def summary(prepared: Prepared, manifest: Path) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "documents": {"finetune": len(prepared.finetune), "val": len(prepared.val), "test": len(prepared.test)},
        "requests": {s: sum(c.split == s for c in prepared.chunks) for s in ("val", "test")},
        "tokens": {s: sum(len(c.tokens) for c in prepared.chunks if c.split == s) for s in ("val", "test")},
    }


def run(args: argparse.Namespace) -> int:
    from ingest.tokenizer import local_tokenizer

    if args.tokenizer == "server":
        raise ValueError("--tokenizer server needs an endpoint: use approxft collect, which asks the big role")
    prepared = prepare_corpus(args, local_tokenizer(args.tokenizer))
    manifest = write_prepared(args.out, prepared, logprobs=args.logprobs)
    print(json.dumps(summary(prepared, manifest), indent=2))
    return 0


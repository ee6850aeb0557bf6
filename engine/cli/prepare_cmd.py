"""``approxft prepare``: a corpus -> fine-tuning share + the request manifest of held-out chunks."""

from __future__ import annotations

import argparse
import json

from ingest.prepare.corpus import prepared_summary, write_prepared

from .options import add_prepare_options, prepare_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="split a corpus into fine-tuning and held-out val/test chunks; write the request manifest",
        description="Split a text file (documents separated by blank lines) or a JSONL file of "
        "documents ({\"text\", \"title\"}): the first 60% of the characters (whole documents) are "
        "kept for fine-tuning (finetune.jsonl), the rest held out, split into val and test by "
        "document and cut into chunks of at most --chunk-tokens tokens (requests.jsonl).",
        epilog="Example: approxft prepare grimm.txt --out grimm-run --tokenizer gpt2 --chunk-tokens 512",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("corpus", metavar="CORPUS", help="text file or JSONL of documents")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for requests.jsonl and finetune.jsonl")
    add_prepare_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ingest.prepare.tokenizer import local_tokenizer

    if args.tokenizer == "server":
        raise ValueError("--tokenizer server needs an endpoint: use approxft collect, which asks the big role")
    prepared = prepare_from_args(args, local_tokenizer(args.tokenizer))
    manifest = write_prepared(args.out, prepared, logprobs=args.logprobs, tokenizer=args.tokenizer)
    print(json.dumps(prepared_summary(prepared, manifest), indent=2))
    return 0

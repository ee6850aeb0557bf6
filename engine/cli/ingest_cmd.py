"""``approxft ingest``: raw responses -> columnar store."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from ingest import ingest_responses, open_store
from ingest.parse.formats import FORMATS, load_token_strings
from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from ingest.quirks import summary
from ingest.store_write import CalibrationDropped

from .options import positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="convert echo logprob responses (one file per model) into a columnar store",
        description="Read logprob responses (legacy completions echo, vLLM prompt_logprobs, chat "
        "logprobs, Batch API output, approxft collect raw files; JSON lines, gzip or plain), one file per model, align them request by request and "
        "position by position, and write a Parquet store.",
        epilog="Example: approxft ingest data/grimm/grimm-*.jsonl.gz --requests data/grimm/requests.jsonl --out grimm.store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("responses", nargs="+", metavar="RESPONSES", help="response files, one per model")
    p.add_argument("--requests", required=True, metavar="MANIFEST", help="request manifest (JSON lines: request_index, split, story, params)")
    p.add_argument("--out", required=True, metavar="STORE", help="store directory to write (replaced atomically), or "
                   "to grow with --append")
    p.add_argument("--k", type=int, default=None, help="top-k list length (default: the manifest's params.logprobs)")
    p.add_argument("--vocab-size", type=int, default=None, metavar="V",
                   help=f"the tokenizer's vocabulary size (e.g. {GPT2_VOCAB_SIZE} for GPT-2), used by tail estimators")
    p.add_argument("--format", default=None, choices=sorted(FORMATS),
                   help="response format (default: detected per line; Batch API output and approxft collect raw files are recognized by custom_id)")
    p.add_argument("--token-strings", default=None, metavar="gpt2|FILE",
                   help="name id-keyed tokens (vLLM prompt_logprobs) exactly: gpt2 (the bundled vocabulary) or a JSON list of token strings by id")
    p.add_argument("--shard-positions", type=positive(int), default=None, metavar="N",
                   help="write a sharded store: shards of whole requests, at most N positions each (e.g. 1000000), "
                   "evaluated alike, streamed by eval|tune --stream, grown by --append")
    p.add_argument("--append", action="store_true",
                   help="add these responses to the store --out as new shards (same models; their requests are "
                   "numbered after the store's); the store is replaced in one step")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationDropped)
        out = ingest_responses(
            args.responses,
            requests=args.requests,
            out=args.out,
            k=args.k,
            vocab_size=args.vocab_size,
            format=args.format,
            token_strings=load_token_strings(args.token_strings) if args.token_strings else None,
            shard_positions=args.shard_positions,
            append=args.append,
        )
    for warning in caught:
        if issubclass(warning.category, CalibrationDropped):
            print(f"approxft ingest: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s; tolerated in the responses (store.json, quirks):",
          file=sys.stderr)
    for line in summary(open_store(out).quirks):
        print(f"  {line}", file=sys.stderr)
    print(out)
    return 0

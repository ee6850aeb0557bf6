"""``approxft serve``: an OpenAI-compatible completions endpoint over local Hugging Face models."""

from __future__ import annotations

import argparse
import sys

from .options import positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve local Hugging Face causal LMs as an OpenAI-compatible /v1/completions endpoint",
        description="Answer /v1/completions and /v1/chat/completions (echo, logprobs up to the vocabulary\n"
        "size, max_tokens including 0, temperature, seed, n, stop, stream), /v1/models, the Batch API, and\n"
        "vLLM's /tokenize, /detokenize and /tokenizer_info, for each model directory, named by the\n"
        "directory's name or NAME=DIR. A bad request gets a 4xx with an OpenAI-style JSON error.\n"
        "Needs the local extra: pip install 'approxft[local]'.",
        epilog="Example: approxft serve models/small models/small-tuned --port 8000\n"
        "  then point collect at it in models.toml: base_url = \"http://127.0.0.1:8000/v1\"\n"
        "  or lm-evaluation-harness: lm_eval --model local-completions \\\n"
        "    --model_args model=small,base_url=http://127.0.0.1:8000/v1/completions,tokenizer_backend=remote ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="model directory (config, weights, tokenizer), or NAME=DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-body-mb", type=positive(int), default=32, help="largest request body, in MiB (default 32; 413 beyond)")
    p.add_argument("--max-prompts", type=positive(int), default=256, help="most prompts in one completions request (default 256)")
    p.add_argument("--max-n", type=positive(int), default=16, help="largest n, choices per prompt (default 16)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ingest.serve.http import make_server
    from ingest.serve.model import load_model
    from ingest.serve.params import Limits

    models = []
    for spec in args.model_dirs:
        name, _, directory = spec.rpartition("=")
        try:
            models.append(load_model(directory, name or None))
        except RuntimeError as err:  # the local extra is not installed
            print(f"approxft serve: error: {err}", file=sys.stderr)
            return 1
    limits = Limits(max_body_bytes=args.max_body_mb * 2**20, max_prompts=args.max_prompts, max_n=args.max_n)
    server = make_server(models, host=args.host, port=args.port, limits=limits)
    host, port = server.server_address[:2]
    names = ", ".join(m.name for m in models)
    # The line a caller waits for: the address actually bound (``--port 0`` picks one).
    print(f"approxft serve: listening on http://{host}:{port}/v1 ({names})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0

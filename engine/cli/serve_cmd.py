"""``approxft serve``: an OpenAI-compatible completions endpoint over local Hugging Face models."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve local Hugging Face causal LMs as an OpenAI-compatible /v1/completions endpoint",
        description="Answer /v1/completions (echo, logprobs up to the vocabulary size, max_tokens "
        "including 0, temperature, seed) and /v1/models for each model directory, named by the "
        "directory's name or NAME=DIR. Needs the local extra: pip install 'approxft[local]'.",
        epilog="Example: approxft serve models/small models/small-tuned --port 8000\n"
        "  then: OPENAI_BASE_URL=http://127.0.0.1:8000/v1 approxft collect ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="model directory (config, weights, tokenizer), or NAME=DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ingest.serve.http import make_server
    from ingest.serve.model import load_model

    models = []
    for spec in args.model_dirs:
        name, _, directory = spec.rpartition("=")
        try:
            models.append(load_model(directory, name or None))
        except RuntimeError as err:  # the local extra is not installed
            print(f"approxft serve: error: {err}", file=sys.stderr)
            return 1
    server = make_server(models, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    names = ", ".join(m.name for m in models)
    # The line a caller waits for: the address actually bound (``--port 0`` picks one).
    print(f"approxft serve: listening on http://{host}:{port}/v1 ({names})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0

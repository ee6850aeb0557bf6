"""``approxft generate``: sample text from a tuned blend, token by token, over live endpoints."""

from __future__ import annotations

import argparse
import codecs
import json
import sys

from ingest.atomic import write_text_atomic
from ingest.prepare.bpe import GPT2_VOCAB_SIZE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a tuned blend (any number of models, a plausibility mask) over live endpoints",
        description="Token by token: ask every model of the blend in TUNED.json (each at the models.toml entry "
        "that serves it, by model name) for the next token's top-k (completions, max_tokens=1, logprobs=k, all at "
        "once), blend them with its weights and estimator through the engine's estimator code, restricted by its "
        "plausibility mask if it has one, sample (pseudo-tokens are never sampled: the real tokens are "
        "renormalized), append, repeat. The text streams to stdout; --transcript saves every step for "
        "inspection and --replay re-derives it offline.",
        epilog="Example: approxft generate --models models.toml --params tuned.json --prompt 'Once upon a time' "
        "--max-tokens 50 --temperature 0.8 --top-p 0.95 --seed 1 --compare --transcript gen.json",
    )
    p.add_argument("--models", metavar="TOML", help="models.toml, serving every model of the blend")
    p.add_argument("--params", metavar="TUNED.json",
                   help="approxft tune --format json output (best: terms, estimator, mask) or eval's (blend)")
    p.add_argument("--prompt", help="the text to continue")
    p.add_argument("--max-tokens", type=int, default=50, help="tokens to generate (default 50)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0 = most probable (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    p.add_argument("--seed", type=int, default=0, help="numpy Generator seed (default 0)")
    p.add_argument("--logprobs", type=int, default=None, metavar="K",
                   help="top-k asked of each model (default: models.toml's logprobs, else 5)")
    p.add_argument("--compare", action="store_true",
                   help="also generate from the blend's first model (the big one) alone, same seed")
    p.add_argument("--transcript", metavar="FILE", help="write the transcript (JSON) here, atomically")
    p.add_argument("--vocab-size", type=int, default=None,
                   help=f"tokenizer vocabulary size for the estimator (default: --store's, else {GPT2_VOCAB_SIZE:,}, GPT-2)")
    p.add_argument("--store", default=None,
                   help="a store with a calibration fit for these models (calibrated-tail needs it) and the vocabulary size")
    p.add_argument("--replay", metavar="FILE", help="re-derive a transcript's tokens offline and check they match")
    p.set_defaults(run=run)


def _replay(path: str) -> int:
    from ..generation.transcript import check_replay, read_transcript

    transcript = read_transcript(path)
    try:
        replayed = check_replay(transcript)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    print(json.dumps({"replayed": replayed, "identical": True}))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.replay:
        return _replay(args.replay)
    for name in ("models", "params", "prompt"):
        if getattr(args, name) is None:
            raise ValueError(f"--{name} is required (or --replay FILE)")
    from ingest.tokens import token_bytes

    from ..generation.generate import run_generation, setup
    from ..terms import format_blend

    ready = setup(args.models, args.params, store=args.store, vocab_size=args.vocab_size, logprobs=args.logprobs)
    for note in ready.notes:
        print(f"approxft generate: note: {note}", file=sys.stderr)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = sys.stdout
    out.write(args.prompt)
    out.flush()

    def show(which: str, token: str) -> None:
        if which == "blend":  # the compared model's own text is printed after the blend's
            out.write(decoder.decode(token_bytes(token)))
            out.flush()

    try:
        transcript = run_generation(ready, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed, compare=args.compare, on_token=show)
    finally:
        out.write("\n")
    if args.compare:
        out.write(f"--- {transcript['compare']['model']} alone (same seed) ---\n{args.prompt}{transcript['compare']['text']}\n")
    out.flush()
    if args.transcript:
        write_text_atomic(args.transcript, json.dumps(transcript, ensure_ascii=False, indent=1) + "\n")
    tuned = ready.tuned
    mask = f", mask {tuned.mask.describe()}" if tuned.mask is not None else ""
    print(f"approxft generate: {len(transcript['tokens'])} tokens from {format_blend(tuned.models, tuned.weights)} "
          f"(estimator {tuned.estimator}{mask}); {transcript['sampling']}", file=sys.stderr)
    return 0

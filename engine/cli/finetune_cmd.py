"""``approxft finetune prepare|openai|local``: the training file, and fine-tuning on it."""

from __future__ import annotations

import argparse
import json
import sys

from ingest.prepare.corpus import DEFAULT_SEPARATOR


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="write a fine-tuning file from a corpus's fine-tuning share; fine-tune via an API or locally",
        description="prepare: the training file from the corpus's fine-tuning share only (the held-out "
        "text never enters it). openai: upload it and run a fine-tuning job on an OpenAI-compatible API. "
        "local: fine-tune a Hugging Face causal LM on it (CPU works for small models).",
        epilog="Example: approxft finetune prepare grimm.txt --out train.jsonl && "
        "approxft finetune local models/small train.jsonl --out models/small-tuned --steps 200",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    prep = actions.add_parser(
        "prepare", help="corpus -> training JSONL (fine-tuning share only), validated, summary on stderr",
        description="Cut the fine-tuning share of CORPUS (the first --finetune-share of its characters, whole "
        "documents, as `approxft prepare` splits it) into chunks of about --words words, drop exact "
        "duplicates, count GPT-2 tokens, and write one example per line atomically.",
        epilog="Example: approxft finetune prepare grimm.txt --out train.jsonl --format completions --words 500",
    )
    prep.add_argument("corpus", metavar="CORPUS", help="text file (documents separated by blank lines) or JSONL of documents")
    prep.add_argument("--out", required=True, metavar="FILE", help="the training file to write (JSONL)")
    prep.add_argument("--format", default="completions", choices=("completions", "chat"),
                      help='completions: {"prompt": "", "completion": " ..."} (default); chat: {"messages": [...]}')
    prep.add_argument("--words", type=int, default=500, help="words per example (default 500, as the prototype)")
    prep.add_argument("--finetune-share", type=float, default=0.6, help="share of characters kept for fine-tuning (default 0.6)")
    prep.add_argument("--separator", default=DEFAULT_SEPARATOR, help="regex between documents of a text corpus")
    prep.set_defaults(run=run_prepare)

    api = actions.add_parser(
        "openai", help="upload a training file, run a fine-tuning job, print the fine-tuned model's name",
        description="Upload TRAIN (purpose fine-tune), create a fine-tuning job for --model, poll it until it "
        "succeeds, fails or is cancelled (progress on stderr), and print the fine-tuned model's name on stdout.",
        epilog="Example: OPENAI_API_KEY=... approxft finetune openai train.jsonl --model babbage-002",
    )
    api.add_argument("train", metavar="TRAIN", help="training JSONL (approxft finetune prepare)")
    api.add_argument("--model", required=True, help="the base model to fine-tune")
    api.add_argument("--base-url", default=None, help="API base URL (default: the openai client's, https://api.openai.com/v1)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the variable holding the key (default OPENAI_API_KEY)")
    api.add_argument("--suffix", default=None, help="suffix for the fine-tuned model's name")
    api.add_argument("--poll-seconds", type=float, default=10.0, help="seconds between status checks (default 10)")
    api.set_defaults(run=run_openai)

    loc = actions.add_parser(
        "local", help="fine-tune a local Hugging Face causal LM on a training file",
        description="A few steps of causal-LM training (AdamW, one example per step) of the model in "
        "BASE_MODEL_DIR on TRAIN; saved with save_pretrained into --out (written beside it, then renamed). "
        "Needs pip install 'approxft[local]'.",
        epilog="Example: approxft finetune local models/small train.jsonl --out models/small-tuned --steps 200 --lr 5e-4",
    )
    loc.add_argument("base", metavar="BASE_MODEL_DIR", help="a save_pretrained directory (model and tokenizer)")
    loc.add_argument("train", metavar="TRAIN", help="training JSONL (approxft finetune prepare)")
    loc.add_argument("--out", required=True, metavar="DIR", help="directory for the fine-tuned model (must not exist)")
    loc.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    loc.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    loc.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    loc.set_defaults(run=run_local)


def run_prepare(args: argparse.Namespace) -> int:
    from ingest.finetune.training_file import training_file, write_training_file
    from ingest.prepare.corpus import read_documents

    prepared = training_file(read_documents(args.corpus, separator=args.separator), fmt=args.format,
                             words=args.words, finetune_share=args.finetune_share)
    write_training_file(args.out, prepared)
    s = prepared.summary
    print(f"wrote {args.out}: {s['examples']} {s['format']} examples from {s['documents']['finetune']} document(s) "
          f"({s['documents']['held_out']} held out, not used); {s['words']['total']} words, "
          f"{s['gpt2_tokens']['total']} GPT-2 tokens (per example {s['gpt2_tokens']['min']}-{s['gpt2_tokens']['max']}, "
          f"mean {s['gpt2_tokens']['mean']}); {s['duplicates_dropped']} duplicates dropped", file=sys.stderr)
    for warning in s["warnings"]:
        print(f"approxft finetune prepare: warning: {warning}", file=sys.stderr)
    print(json.dumps(s), file=sys.stderr)
    return 0


def run_openai(args: argparse.Namespace) -> int:
    from ingest.finetune.openai_job import finetune_openai

    name = finetune_openai(args.train, model=args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                           suffix=args.suffix, poll_seconds=args.poll_seconds,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(name)
    return 0


def run_local(args: argparse.Namespace) -> int:
    from ingest.finetune.local import finetune_local
    from ingest.finetune.training_file import read_training_texts

    texts = read_training_texts(args.train)
    every = max(1, args.steps // 10)

    def show(step: int, loss: float) -> None:
        if step % every == 0 or step == 1 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {loss:.4f}", file=sys.stderr, flush=True)

    done = finetune_local(args.base, texts, args.out, steps=args.steps, lr=args.lr, seed=args.seed, progress=show)
    print(json.dumps({"out": str(done.out), "steps": len(done.losses), "first_loss": done.losses[0],
                      "last_loss": done.losses[-1], "seconds": round(done.seconds, 2)}))
    return 0

"""lm-evaluation-harness against ``approxft serve``: the interoperability check.

lm-eval runs from its own virtual environment (it never enters approxft's), as a user would run it:

    python3 -m venv /tmp/lmeval-venv && /tmp/lmeval-venv/bin/pip install "lm-eval[api]"
    python -m bench.interop.lm_eval_check --lm-eval /tmp/lmeval-venv/bin/lm_eval

Over a testbed model (``data/testbed/models/small`` by default) served by ``approxft serve``'s own
server, and the first ``--docs`` requests of ``data/testbed/requests.jsonl``, each split at a
token boundary in the middle into a context and a continuation:

1. approxft's store: ``approxft collect`` (echo mode) and ``approxft ingest``; a continuation's
   log-likelihood is the sum of its positions' stored log-probabilities;
2. lm-eval's ``local-completions`` model with its tokenizer backend left on "auto" (it must detect
   the server's ``/tokenizer_info`` and ``/tokenize`` and use them: no hub tokenizer is loaded) runs
   two tasks written here: ``loglikelihood`` of each continuation given its context, and
   ``generate_until`` (greedy, ``until`` = ``UNTIL``, ``max_gen_toks`` tokens) scored by
   ``exact_match`` against the greedy text of transformers' own ``generate`` (not approxft's
   sampler), cut here before the first stop sequence.

It passes when every log-likelihood agrees with the store within ``--tolerance`` (nats), lm-eval
said it used the remote tokenizer, and every generation equals its reference. It prints a markdown
table and writes ``results.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.interop.commands import REPO, run, work_folder

UNTIL = [".", ";"]
TASKS = """\
task: approxft_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
---
task: approxft_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{reference}}}}"
target_delimiter: ""
generation_kwargs:
  until: {until}
  max_gen_toks: {max_gen_toks}
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.interop.lm_eval_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--lm-eval", default=os.environ.get("LM_EVAL", "/tmp/lmeval-venv/bin/lm_eval"), help="the lm_eval command of its own venv")
    p.add_argument("--model-dir", type=Path, default=REPO / "data/testbed/models/small")
    p.add_argument("--requests", type=Path, default=REPO / "data/testbed/requests.jsonl")
    p.add_argument("--docs", type=int, default=8, help="requests used (default 8)")
    p.add_argument("--max-gen-toks", type=int, default=16)
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest |lm-eval - store| log-likelihood, nats (default 1e-5)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if not Path(args.lm_eval).exists():
        print(f"lm_eval_check: error: {args.lm_eval} not found; create its venv: python3 -m venv /tmp/lmeval-venv && "
              "/tmp/lmeval-venv/bin/pip install 'lm-eval[api]'", file=sys.stderr)
        return 1
    with work_folder(args.work, "lm-eval-check-") as work:
        results = check(args, work)
    print(table(results))
    return 0 if results["passed"] else 1


def check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ingest.serve.http import make_server
    from ingest.serve.model import load_model

    model = load_model(args.model_dir, "small")
    server = make_server([model], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        requests = [json.loads(line) for line in args.requests.read_text().splitlines()[: args.docs]]
        docs = [split_document(model, r) for r in requests]
        for doc in docs:
            doc["reference"], doc["cut"] = greedy_reference(model, doc["context"], args.max_gen_toks)
        timings = {}
        start = time.perf_counter()
        stored = store_loglikelihoods(requests, docs, url, work)
        timings["collect_and_ingest_s"] = time.perf_counter() - start
        start = time.perf_counter()
        harness = run_lm_eval(args, docs, url, work)
        timings["lm_eval_s"] = time.perf_counter() - start
    finally:
        server.shutdown()
        server.server_close()
    diffs = [abs(a - b) for a, b in zip(harness["loglikelihoods"], stored, strict=True)]
    generated_ok = [g == d["reference"] for g, d in zip(harness["generations"], docs, strict=True)]
    return {
        "model": str(args.model_dir.relative_to(REPO) if args.model_dir.is_relative_to(REPO) else args.model_dir),
        "docs": len(docs),
        "continuation_tokens": sum(len(d["ids"]) - d["split"] for d in docs),
        "max_abs_diff": max(diffs),
        "tolerance": args.tolerance,
        "remote_tokenizer": harness["remote_tokenizer"],
        "exact_match": harness["exact_match"],
        "generations_equal": sum(generated_ok),
        "stopped_by_until": sum(d["cut"] for d in docs),
        "lm_eval_version": harness["version"],
        **timings,
        "passed": max(diffs) <= args.tolerance and harness["remote_tokenizer"] and all(generated_ok),
        "per_doc": [{"store": s, "lm_eval": h, "generated": g, "reference": d["reference"]}
                    for s, h, g, d in zip(stored, harness["loglikelihoods"], harness["generations"], docs, strict=True)],
    }


def split_document(model: Any, request: dict[str, Any]) -> dict[str, Any]:
    """A request's text as (context, continuation) at the middle token boundary where the context
    re-tokenizes to the same tokens and ends in no space (lm-eval moves trailing spaces over)."""
    text = request["params"]["prompt"]
    ids = model.encode(text)
    for split in range(len(ids) // 2, 0, -1):
        context = model.text(ids[:split])
        if model.encode(context) == ids[:split] and context == context.rstrip():
            return {"context": context, "continuation": text[len(context):], "ids": ids, "split": split,
                    "request": request["request_index"]}
    raise ValueError(f"request {request['request_index']}: no token boundary re-tokenizes to itself")


def greedy_reference(model: Any, context: str, max_tokens: int) -> tuple[str, bool]:
    """Greedy text after ``context`` from transformers' ``generate``, cut before the first of
    ``UNTIL`` or the end-of-text token's text; and whether it was cut."""
    import torch

    ids = model.encode(context)
    eos = model.tokenizer.eos_token_id
    with torch.no_grad():
        out = model.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                   do_sample=False, pad_token_id=eos)
    text = model.text(out[0, len(ids):].tolist())
    found = [i for i in (text.find(s) for s in [*UNTIL, model.tokenizer.eos_token]) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def store_loglikelihoods(requests: list[dict[str, Any]], docs: list[dict[str, Any]], url: str, work: Path) -> list[float]:
    """Each continuation's log-likelihood from approxft's own store (collect, then ingest)."""
    import engine

    manifest = work / "requests.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in requests))
    config = work / "models.toml"
    config.write_text(f'[defaults]\nbase_url = "{url}"\nlogprobs = 5\n[models.big]\nmodel = "small"\n'
                      '[models.tuned]\nmodel = "unused-tuned"\n[models.untuned]\nmodel = "unused-untuned"\n')
    approxft = [sys.executable, "-m", "engine"]
    run([*approxft, "collect", "--models", config, "--corpus", manifest, "--out", work / "run", "--roles", "big"])
    run([*approxft, "ingest", work / "run/raw/big.jsonl", "--requests", manifest, "--out", work / "store"])
    store = engine.open_dataset(work / "store").store
    positions = store.positions
    lp = store.target_lp(store.models[0])  # named by the model the server reported
    by_request: dict[tuple[int, int], float] = {
        (r, p): float(v) for r, p, v in zip(positions["request"].to_list(), positions["position"].to_list(), lp, strict=True)
    }
    return [sum(by_request[(d["request"], p)] for p in range(d["split"], len(d["ids"]))) for d in docs]


def run_lm_eval(args: argparse.Namespace, docs: list[dict[str, Any]], url: str, work: Path) -> dict[str, Any]:
    """lm-eval's ``local-completions`` over the two tasks; its per-document answers."""
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    (work / "docs.jsonl").write_text("".join(json.dumps({k: d[k] for k in ("context", "continuation", "reference")}) + "\n" for d in docs))
    for part in TASKS.format(docs=work / "docs.jsonl", until=json.dumps(UNTIL), max_gen_toks=args.max_gen_toks).split("---\n"):
        (tasks / f"{part.split()[1]}.yaml").write_text(part)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": "unused", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    out = work / "lm-eval"
    done = run([args.lm_eval, "run", "--model", "local-completions", "--tasks", "approxft_ll", "approxft_gen",
                "--model_args", f"model=small,base_url={url}/completions,max_length=1024,num_concurrent=1,max_retries=1",
                "--include_path", tasks, "--output_path", out, "--log_samples", "--batch_size", "1"], env=env)
    samples = {task: _samples(out, task) for task in ("approxft_ll", "approxft_gen")}
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    return {
        "loglikelihoods": [float(s["resps"][0][0][0]) for s in samples["approxft_ll"]],
        "generations": [s["resps"][0][0] for s in samples["approxft_gen"]],
        "exact_match": results["results"]["approxft_gen"]["exact_match,none"],
        "remote_tokenizer": "Auto-detected remote tokenizer support" in done.stderr + done.stdout,
        "version": results["lm_eval_version"],
    }


def _samples(out: Path, task: str) -> list[dict[str, Any]]:
    path = next(out.rglob(f"samples_{task}_*.jsonl"))
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def table(results: dict[str, Any]) -> str:
    rows = [
        ("model, documents", f"{results['model']}, {results['docs']} ({results['continuation_tokens']} continuation tokens)"),
        ("lm-eval", f"{results['lm_eval_version']}, local-completions, tokenizer backend auto -> "
                    f"{'remote (the server)' if results['remote_tokenizer'] else 'NOT remote'}"),
        ("loglikelihood: max abs(lm-eval - store)", f"{results['max_abs_diff']:.2e} nats (tolerance {results['tolerance']:g})"),
        ("generate_until: exact_match", f"{results['exact_match']:.3f} ({results['generations_equal']}/{results['docs']} equal "
                                        f"to the reference, {results['stopped_by_until']} cut by until)"),
        ("collect + ingest", f"{results['collect_and_ingest_s']:.1f} s"),
        ("lm-eval run", f"{results['lm_eval_s']:.1f} s"),
        ("result", "passed" if results["passed"] else "FAILED"),
    ]
    return "\n".join(["| check | result |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)])


if __name__ == "__main__":
    sys.exit(main())

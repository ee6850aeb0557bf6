"""The testbed's records: ``build.json`` (everything, machine-readable; the marker),
``sources.json`` and the data card ``README.md`` (laid out like data/grimm/README.md). Every
figure in the card comes from these records: the model perplexities as ``approxft eval`` prints
them from the ingested store, the blend and general-text figures from the exact pass."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench.testbed import layout
from bench.testbed.exact import TOP_K
from bench.testbed.settings import Settings


def write(records: dict[str, Any], stage: Path) -> None:
    """Write build.json, sources.json and README.md into ``stage``."""
    (stage / layout.SOURCES).write_text(json.dumps(records["sources"], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (stage / layout.MARKER).write_text(json.dumps({"format": layout.FORMAT, "version": layout.VERSION, **records}, indent=2) + "\n", encoding="utf-8")
    (stage / layout.CARD).write_text(render(records), encoding="utf-8")


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads()}


def _mb(x: float | None) -> str:
    return "unknown" if x is None else f"{x:,.0f} MB"


def _ppl(x: float) -> str:
    return f"{x:,.2f}"  # as approxft eval prints it


def render(r: dict[str, Any]) -> str:
    s = Settings(**{k: v for k, v in r["settings"].items() if k not in ("small", "big")})
    ev = r["collection"]["eval"]
    exact = r["exact"]["figures"]
    training = r["training"]
    prepared = r["corpora"]["prepare"]
    name = layout.served_name
    rows = [
        (name("small"), "small untuned", f"trained from scratch on {training['small']['record']['tokens_seen']:,} tokens of general English"),
        (name("small-tuned"), "small tuned", f"{name('small')} fine-tuned on the domain's fine-tuning share"),
        (name("big"), "big", f"trained from scratch like {name('small')}, same text and tokens"),
        (name("big-tuned"), "reference only", f"{name('big')} fine-tuned like {name('small-tuned')}: what fine-tuning the big model itself gives"),
    ]
    out = [
        "# Testbed: four small GPT-2 models trained on CPU, their top-20 logprob responses, and the models",
        "",
        "What `approxft serve` answers for `completions.create(model=M, prompt=chunk, echo=True, max_tokens=0, "
        f"logprobs={s.logprobs})`, collected by `approxft collect` (one JSON response per line, one gzip file per model) "
        "for every chunk of held-out domain text, and the four models themselves (`models/<name>/`, float16), so that "
        "every figure the top-k data leaves out can be computed exactly from the full 50,257-token distributions.",
        "",
        "| file | role in a blend | model |",
        "| --- | --- | --- |",
    ]
    model_of = {name(m): m for m in layout.MODELS}
    for file, role, what in rows:
        t = training[model_of[file]]
        out.append(f"| {file}.jsonl.gz | {role} | GPT-2 architecture, {t['layers']} layers, width {t['width']} "
                   f"({t['parameters'] / 1e6:.1f}M parameters), {what} |")
    domain = r["corpora"]["domain"]
    general = r["corpora"]["general"]
    out += [
        "",
        f"- Domain text: {domain['description']} The first {domain['used']:,} of its {domain['total']:,} documents "
        f"({domain['tokens']:,} tokens) were split by `approxft prepare --finetune-share {s.finetune_share} --val-share {s.val_share} "
        f"--chunk-tokens {s.chunk_tokens}`: the first {prepared['documents']['finetune']:,} documents (about "
        f"{s.finetune_share:.0%} of the characters, {r['corpora']['finetune_tokens']:,} tokens) for fine-tuning; the other "
        f"{prepared['documents']['val'] + prepared['documents']['test']:,} are scored here.",
        f"- General text: {general['description']} {general['documents']:,} documents, {general['tokens']:,} tokens; "
        f"{general['heldout_documents']:,} random whole documents ({general['heldout_tokens']:,} tokens) are held out and "
        "never trained on (the general-text figures below).",
        "- Tokenizer: the GPT-2 byte-level BPE vocabulary (50257 tokens), see ../gpt2.",
        f"- `requests.jsonl`: one line per request, in the same order as the lines of every model file: `request_index`, "
        f"`split` (`val`: the first {prepared['documents']['val']} held-out documents, for tuning; `test`: the last "
        f"{prepared['documents']['test']}, for the final score), `story` (the document's name), the request parameters and "
        "`tokens` (the chunk's tokens as the API writes them).",
        f"- {prepared['requests']['val'] + prepared['requests']['test']} requests per model, chunks of at most {s.chunk_tokens} "
        f"tokens (a longer document is cut into consecutive chunks, so the context restarts at each chunk), "
        f"{ev['models'][name('big')]['details']['val']['positions'] + ev['models'][name('big')]['details']['test']['positions']:,} "
        f"scored positions per model ({ev['models'][name('big')]['details']['val']['positions']:,} val, "
        f"{ev['models'][name('big')]['details']['test']['positions']:,} test).",
        "",
        "## Format facts that matter to a parser",
        "- Each line is what `approxft collect` appends: `{\"custom_id\": \"request-<i>\", \"response\": {\"status_code\": 200, "
        "\"body\": <the completion>}, \"error\": null}`; `approxft ingest` reads these files as they are.",
        "- Echo semantics: `tokens` are the prompt's tokens; the first entry of `token_logprobs` and of `top_logprobs` is "
        "`null` (no context to predict it from).",
        f"- `token_logprobs[i]` is the exact log-probability of the actual token; `top_logprobs[i]` is a dict of exactly "
        f"{s.logprobs} token strings to log-probabilities, and often does not contain the actual token (see the table below).",
        "- Token strings are what OpenAI returns: text, or `bytes:\\xNN...` for a token whose bytes are not valid UTF-8 on their own.",
        "- Values are float32 log-softmax values, printed as Python prints them as doubles (up to 17 significant digits).",
        "",
        "## Reference figures (computed from `token_logprobs`, so any correct reader must reproduce them)",
        "Perplexity = exp(mean negative log-likelihood over scored positions), per split, as `approxft eval` prints it from "
        "the store that `approxft ingest` makes of these files; bits per byte beside it:",
        "",
        f"| model | val | test | bpb val | bpb test | actual token outside the top {s.logprobs} (val / test) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    outside = r["collection"]["outside_top_k"]
    for m in layout.MODELS:
        e = ev["models"][name(m)]
        out.append(f"| {name(m)} | {_ppl(e['val'])} | {_ppl(e['test'])} | {e['details']['val']['bits_per_byte']:.3f} | "
                   f"{e['details']['test']['bits_per_byte']:.3f} | {outside[name(m)]['val']:.0%} / {outside[name(m)]['test']:.0%} |")
    proxy = exact["proxy-tuning"]
    blend = ev["blend"]
    out += [
        "",
        "One figure needs the full 50,257-token distributions, which the top-20 data does not hold, and was computed "
        "from the saved models (torch, float64 log-sum-exp at every scored position): the log-linear blend with weights "
        f"big 1, small tuned 1, small untuned -1 (proxy-tuning), renormalized over the whole vocabulary, has perplexity "
        f"{_ppl(proxy['val']['perplexity'])} on val and {_ppl(proxy['test']['perplexity'])} on test. From the top-{s.logprobs} "
        f"data, `approxft eval` estimates {_ppl(blend['val'])} and {_ppl(blend['test'])} (estimator `{blend['estimator']}`"
        f"{', fitted on deep/' if blend['estimator'] == 'calibrated-tail' else ''}).",
        "",
        f"The same models on the {general['heldout_tokens']:,} held-out general tokens ({exact['big']['general']['positions']:,} "
        "scored positions, chunks as above), exact:",
        "",
        "| model | general held-out perplexity | outside the top 20 |",
        "| --- | --- | --- |",
        *(f"| {name(m)} | {_ppl(exact[m]['general']['perplexity'])} | {exact[m]['general']['outside_top_k']:.0%} |" for m in layout.MODELS),
        "",
        "What the testbed must show, checked on the saved models when it was built:",
        "",
        *(f"- {c['condition']}: {'holds' if c['holds'] else 'FAILS'}" for c in r["exact"]["conditions"]),
        f"- the store's perplexities agree with the exact float64 ones to {r['collection']['agreement']['perplexity']:.1e} "
        f"relative at most (and the outside-top-{TOP_K} shares to {r['collection']['agreement']['outside']:.1e})",
        "",
        *_training_section(r, s),
        *_deep_section(r, s),
        *_sources_section(r),
        *_build_section(r),
    ]
    return "\n".join(out) + "\n"


def _training_section(r: dict[str, Any], s: Settings) -> list[str]:
    t = r["training"]
    lines = [
        "## models/: the four models",
        "Hugging Face folders (`config.json`, `model.safetensors` in float16 with tied input and output embeddings, "
        "`tokenizer.json`); `transformers.AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)` and "
        "`approxft serve NAME=DIR` load them. Every figure here was computed from these float16 files loaded as float32.",
        "",
        f"Training (`bench/testbed/train.py`): AdamW (betas 0.9, 0.95; weight decay 0.1 on matrices), batch {s.batch_size} x "
        f"{s.seq_len} tokens, 5% linear warm-up then cosine decay to 10% of the peak rate, gradient clip 1.0, no dropout; "
        "documents packed with `<|endoftext|>` between them, windows in a seeded random order; bfloat16 autocast for the "
        f"transformer, a chunked float32-logit cross-entropy; seed {s.seed}.",
        "",
        "| model | shape | parameters | trained from | peak lr | tokens seen | epochs of its text | first / last loss (nats) | wall time | tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in layout.MODELS:
        rec = t[m]["record"]
        curve = rec["curve"]
        lines.append(
            f"| {layout.served_name(m)} | {t[m]['layers']} x {t[m]['width']} ({t[m]['heads']} heads) | {t[m]['parameters']:,} | "
            f"{'scratch (general text)' if t[m]['from'] == 'scratch' else layout.served_name(t[m]['from']) + ' (domain fine-tuning share)'} | "
            f"{t[m]['lr']:.2g} | {rec['tokens_seen']:,} | {rec['epochs']:.2f} | {curve[0][1]:.3f} / {curve[-1][1]:.3f} | "
            f"{rec['seconds'] / 60:.1f} min | {rec['tokens_seen'] / rec['seconds']:,.0f} |"
        )
    lines += ["", "The loss columns are mean training losses over the first and the last logging interval (about 30 s each).", ""]
    return lines


def _deep_section(r: dict[str, Any], s: Settings) -> list[str]:
    if not s.calibration:
        return []
    roles = ", ".join(f"`{role}.npz` ({layout.served_name(layout.ROLES[role])})" for role in layout.BLEND_ROLES)
    return [
        "## deep/: deeper lists for measuring estimators",
        f"`approxft collect --calibration {s.calibration} --calibration-k {s.calibration_k}`: for {s.calibration:,} positions drawn at "
        f"random (seeded) among all scored positions, top-{s.calibration_k} lists of the three blend models, {roles}, as collect "
        "writes them (`ingest/collect/deep.py`): `ids` (int32, N x K, indices into `token_strings.json`, sorted by "
        "log-probability), `lp` (float32, natural log), `target_lp` (float32, the actual token's value where it is in the list, "
        "else NaN), `request` and `position` (int32: which manifest request and token position). The arrays are bit for bit "
        "collect's; the files are re-saved as LZMA-compressed zips (numpy.load reads them as they are) to take a third of the space. "
        "`approxft calibrate STORE --deep deep --big testbed-big=big.npz --tuned testbed-small-tuned=tuned.npz "
        "--untuned testbed-small=untuned.npz` fits `calibrated-tail` on them. The exact distributions are in `models/`.",
        "",
    ]


def _sources_section(r: dict[str, Any]) -> list[str]:
    lines = ["## Sources (`sources.json`)", "", "| file | from | documents | tokens | how chosen | sha256 |", "| --- | --- | --- | --- | --- | --- |"]
    for src in r["sources"]:
        origin = ", ".join(f"{p} {v}" for p, v in src["packages"].items()) or src["inputs"][0]
        lines.append(f"| {src['output']} | {origin} | {src.get('documents', 0):,} | {src.get('tokens', 0):,} | {src['selection']} | `{src['sha256'][:16]}` |")
    return [*lines, ""]


def _build_section(r: dict[str, Any]) -> list[str]:
    b = r["build"]
    m = b["machine"]
    lines = [
        "## How it was made",
        "",
        "```bash",
        b["command"],
        "```",
        "",
        f"On {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, torch {m['torch']} ({m['threads']} threads). "
        f"Total wall time {b['seconds'] / 60:.1f} min; peak resident memory {b['usage']['peak_rss_mb']:,.0f} MB in the build "
        f"process, {_mb(b['usage']['server_peak_rss_mb'])} in `approxft serve` (the largest of its subprocesses).",
        "",
        "| stage | wall time | load average before (1, 5, 15 min) | after |",
        "| --- | --- | --- | --- |",
    ]
    for st in b["stages"]:
        lines.append(f"| {st['stage']} | {st['seconds'] / 60:.1f} min | {', '.join(map(str, st['load_before']))} | {', '.join(map(str, st['load_after']))} |")
    return [*lines, ""]

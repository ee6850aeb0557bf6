"""The build's stages, in order; each returns what the later ones and the data card need.

Everything after training reads the models back from their saved float16 files (as float32),
never the in-memory training weights; a tuned model is fine-tuned from its base as saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.testbed import exact as exact_mod
from bench.testbed import layout, pipeline
from bench.testbed.corpora import (
    Corpus,
    chunks,
    held_out_documents,
    leading_documents,
    load_corpus,
    pack,
)
from bench.testbed.errors import BuildError
from bench.testbed.models import load_model, save_model
from bench.testbed.settings import Settings
from bench.testbed.sources import extract_defaults, write_documents
from bench.testbed.train import TrainSettings, new_model, train
from ingest.prepare.corpus import Document
from ingest.prepare.tokenizer import hf_gpt2_tokenizer

TRAINING_SETTINGS = ("small", "big", "base_tokens", "tune_tokens", "small_lr", "big_lr", "tune_lr_factor", "seed", "seq_len", "batch_size")
"""The settings trained models depend on (with the texts): reused models must match them."""


class Log:
    """Progress lines on stderr, and each stage's wall time and load averages."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: list[dict[str, Any]] = []

    def __call__(self, message: str) -> None:
        print(f"testbed [{(time.perf_counter() - self.start) / 60:5.1f} min]: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        load = os.getloadavg()
        self(f"{name} ...")
        began = time.perf_counter()
        yield
        seconds = time.perf_counter() - began
        self.stages.append({"stage": name, "seconds": round(seconds, 1), "load_before": [round(x, 2) for x in load],
                            "load_after": [round(x, 2) for x in os.getloadavg()]})
        self(f"{name} done in {seconds:.0f} s")


# -- sources ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Sources:
    general: list[Path]
    domain: Path
    records: list[dict[str, Any]]
    """One per file, ``general`` then ``domain``: where it came from (``sources.SourceRecord``)."""

    @property
    def files(self) -> list[Path]:
        return [*self.general, self.domain]


def sources(general: Sequence[Path] | None, domain: Path | None, work: Path, log: Log) -> Sources:
    """The corpus files: the given ones, else the default Debian corpora (installed and
    extracted into ``work/sources``)."""
    with log.stage("sources"):
        extracted: dict[Path, dict[str, Any]] = {}
        if general is None or domain is None:
            default_general, default_domain, records = extract_defaults(work / "sources", log)
            extracted = {work / "sources" / r.output: asdict(r) for r in records}
            general = general or default_general
            domain = domain or default_domain
        given = {"packages": {}, "selection": "given on the command line"}
        chosen = Sources(list(general), domain, [])
        chosen.records = [extracted.get(p) or {"name": p.stem, **given, "inputs": [str(p.resolve())], "output": p.name, "sha256": _sha256(p)}
                          for p in chosen.files]
        return chosen


# -- corpora ----------------------------------------------------------------------------------


@dataclass
class Corpora:
    tokenizer: Any
    general_train: Corpus
    general_heldout: Corpus
    general_stream: np.ndarray
    """uint16: the training documents in a seeded random order, EOS after each."""
    general_chunks: list[list[int]]
    domain_used: int
    """Leading domain documents used (of ``domain_total``)."""
    domain_total: int
    domain_used_tokens: int
    finetune: Corpus
    finetune_stream: np.ndarray
    domain_chunks: dict[str, list[list[int]]]
    """split -> the manifest's requests' token ids, as the server encodes their prompts."""
    prepared: dict[str, Any]
    """``approxft prepare``'s summary."""

    def summary(self, src: Sources) -> dict[str, Any]:
        """The counts the data card reports."""
        def described(records: Sequence[dict[str, Any]]) -> str:
            parts = [f"`{r['output']}` ({r['selection']})" for r in records]
            return ("the files " if len(parts) > 1 else "") + "; ".join(parts) + " (see Sources)."

        general_docs = len(self.general_train.documents) + len(self.general_heldout.documents)
        return {
            "general": {"description": described(src.records[:-1]), "documents": general_docs,
                        "tokens": self.general_train.n_tokens + self.general_heldout.n_tokens,
                        "heldout_documents": len(self.general_heldout.documents), "heldout_tokens": self.general_heldout.n_tokens},
            "domain": {"description": described(src.records[-1:]), "used": self.domain_used, "total": self.domain_total,
                       "tokens": self.domain_used_tokens},
            "finetune_tokens": self.finetune.n_tokens,
            "prepare": self.prepared,
        }

    def fingerprint(self) -> dict[str, str]:
        """What trained models depend on: reused models must have been trained on the same text."""
        return {"general_train": self.general_train.sha256(), "general_heldout": self.general_heldout.sha256(),
                "finetune": self.finetune.sha256()}


def corpora(src: Sources, s: Settings, stage: Path, work: Path, log: Log) -> Corpora:
    with log.stage("corpora"):
        tokenizer = hf_gpt2_tokenizer()
        general = load_corpus(src.general, tokenizer)
        held = held_out_documents([len(t) for t in general.tokens], s.general_heldout_tokens, seed=s.seed)
        held_set = set(held)
        train_part = general.subset([i for i in range(len(general.documents)) if i not in held_set])
        heldout = general.subset(held)
        order = np.random.default_rng(s.seed).permutation(len(train_part.documents))
        stream = pack([train_part.tokens[i] for i in order])
        log(f"general: {len(general.documents):,} documents, {general.n_tokens:,} tokens; held out {len(heldout.documents):,} "
            f"documents ({heldout.n_tokens:,} tokens)")

        domain = load_corpus([src.domain], tokenizer)
        n_used = leading_documents([len(t) for t in domain.tokens], s.domain_tokens)
        subset = work / "domain.jsonl"
        write_documents(subset, domain.documents[:n_used])
        prepared_dir = work / "prepared"
        summary = json.loads(pipeline.engine_command(
            ["prepare", str(subset), "--out", str(prepared_dir), "--tokenizer", "gpt2", "--chunk-tokens", str(s.chunk_tokens),
             "--finetune-share", str(s.finetune_share), "--val-share", str(s.val_share), "--logprobs", str(s.logprobs)],
            log=work / "logs" / "prepare.log"))
        shutil.copyfile(prepared_dir / layout.MANIFEST, stage / layout.MANIFEST)
        tune_docs = [Document(r["document"], r["text"]) for r in map(json.loads, (prepared_dir / "finetune.jsonl").read_text(encoding="utf-8").splitlines())]
        finetune = Corpus(tune_docs, tokenizer([d.text for d in tune_docs], add_special_tokens=False)["input_ids"] if tune_docs else [],
                          [str(src.domain)] * len(tune_docs))
        if not finetune.documents:
            raise BuildError(f"{src.domain}: no document left for fine-tuning (raise --finetune-share or --domain-tokens)")
        domain_chunks: dict[str, list[list[int]]] = {"val": [], "test": []}
        for line in (stage / layout.MANIFEST).read_text(encoding="utf-8").splitlines():
            request = json.loads(line)
            ids = tokenizer.encode(request["params"]["prompt"], add_special_tokens=False)
            if len(ids) != len(request["tokens"]):
                raise BuildError(f"request {request['request_index']}: the model tokenizer gives {len(ids)} tokens, "
                                 f"approxft prepare {len(request['tokens'])}")
            domain_chunks[request["split"]].append(ids)
        for split, pieces in domain_chunks.items():
            if not pieces:
                raise BuildError(f"{src.domain}: the {split} split is empty (the domain subset needs more documents)")
        log(f"domain: {n_used:,} of {len(domain.documents):,} documents; prepare: {json.dumps({k: summary[k] for k in ('documents', 'tokens')})}")
        counts = {**general.per_file(), str(src.domain): {"documents": len(domain.documents), "tokens": domain.n_tokens}}
        for path, record in zip(src.files, src.records, strict=True):
            record.update(counts[str(path)])
        return Corpora(tokenizer, train_part, heldout, stream, [c for t in heldout.tokens for c in chunks(t, s.chunk_tokens)],
                       n_used, len(domain.documents), sum(len(t) for t in domain.tokens[:n_used]), finetune, pack(finetune.tokens), domain_chunks, summary)


# -- training ---------------------------------------------------------------------------------


def _model_info(model: Any) -> dict[str, Any]:
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    return {"layers": model.config.n_layer, "width": model.config.n_embd, "heads": model.config.n_head, "parameters": sum(unique.values())}


def training(c: Corpora, s: Settings, stage: Path, models_from: Path | None, log: Log) -> dict[str, Any]:
    """Train (or reuse) the four models into ``stage/models``; returns per model its shape,
    settings and ``TrainRecord``."""
    root = stage / layout.MODELS_DIR
    out = _reuse(c, s, models_from, root, log) if models_from is not None else _train_all(c, s, root, log)
    # A first marker, so that a build that fails later can lend its models to --models-from;
    # the card stage writes the whole record over it.
    (stage / layout.MARKER).write_text(json.dumps({"format": layout.FORMAT, "version": layout.VERSION, "training": out}, indent=2) + "\n")
    return out


def _train_all(c: Corpora, s: Settings, root: Path, log: Log) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sizes = {"small": (s.small, s.small_lr), "big": (s.big, s.big_lr)}
    for name in layout.MODELS:
        base = layout.BASE.get(name)
        size, lr = sizes[base or name]
        with log.stage(f"train {name}"):
            if base is None:
                model, stream, tokens = new_model(size, seed=s.seed), c.general_stream, s.base_tokens
            else:
                model, stream, tokens, lr = load_model(root / base), c.finetune_stream, s.tune_tokens, lr * s.tune_lr_factor
            settings = TrainSettings(tokens=tokens, lr=lr, batch_size=s.batch_size, seq_len=s.seq_len, seed=s.seed)
            record = train(model, stream, settings, label=name)
            save_model(model, c.tokenizer, root / name)
        out[name] = {**_model_info(model), "from": base or "scratch", "lr": lr, "record": asdict(record)}
    out["fingerprint"] = _fingerprint(c, s)
    return out


def _fingerprint(c: Corpora, s: Settings) -> dict[str, Any]:
    settings = s.as_json()
    return {**c.fingerprint(), **{key: settings[key] for key in TRAINING_SETTINGS}}


def _reuse(c: Corpora, s: Settings, previous: Path, root: Path, log: Log) -> dict[str, Any]:
    with log.stage("reuse models"):
        if not layout.is_testbed(previous):
            raise BuildError(f"{previous}: not a testbed (no {layout.MARKER}); --models-from takes an earlier build's --out")
        build = json.loads((previous / layout.MARKER).read_text(encoding="utf-8"))
        for key, value in _fingerprint(c, s).items():
            if build.get("training", {}).get("fingerprint", {}).get(key) != value:
                raise BuildError(f"{previous}: its models were trained on other text or settings ({key} differs); "
                                 "rebuild them without --models-from")
        for name in layout.MODELS:
            load_model(previous / layout.MODELS_DIR / name)  # BuildError for a missing or corrupt folder
            shutil.copytree(previous / layout.MODELS_DIR / name, root / name)
        log(f"reused the models of {previous}")
        return build["training"]


# -- exact figures ----------------------------------------------------------------------------


def _figures(scores: exact_mod.Scores) -> dict[str, Any]:
    return {"perplexity": scores.perplexity, "positions": scores.positions, "outside_top_k": scores.outside_share}


def exact(c: Corpora, s: Settings, stage: Path, log: Log, *, strict: bool = True) -> dict[str, Any]:
    """Exact per-split figures of every saved model and of the proxy-tuning blend; with
    ``strict``, BuildError listing the testbed's conditions that fail."""
    with log.stage("exact figures"):
        models = {name: load_model(stage / layout.MODELS_DIR / name) for name in layout.MODELS}
        figures: dict[str, dict[str, Any]] = {}
        for split, pieces in c.domain_chunks.items():
            for name, scores in exact_mod.score(models, pieces, blend=("big", "small-tuned", "small")).items():
                figures.setdefault(name, {})[split] = _figures(scores)
        for name, scores in exact_mod.score(models, c.general_chunks).items():
            figures[name]["general"] = _figures(scores)
        for name, per_split in figures.items():
            log(f"{name}: " + ", ".join(f"{split} {f['perplexity']:.2f}" for split, f in per_split.items()))
        checks = conditions(figures)
        failed = [check["condition"] for check in checks if not check["holds"]]
        for condition in failed:
            log(f"condition fails: {condition}")
        if failed and strict:
            raise BuildError("the testbed's conditions fail: " + "; ".join(failed) + " (change sizes, tokens or learning rates)")
        return {"figures": figures, "conditions": checks}


def conditions(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What every testbed must show, on the saved models: each tuned model beats its base on the
    held-out domain text, big beats small on held-out general text, proxy-tuning beats big."""
    def ppl(model: str, split: str) -> float:
        return figures[model][split]["perplexity"]

    pairs = [(f"{tuned} beats {base}", tuned, base, split) for tuned, base in layout.BASE.items() for split in ("val", "test")]
    pairs += [("big beats small", "big", "small", "general")]
    pairs += [("proxy-tuning beats big", "proxy-tuning", "big", split) for split in ("val", "test")]
    return [{"condition": f"{label} on {split} ({ppl(a, split):.2f} vs {ppl(b, split):.2f})", "holds": ppl(a, split) < ppl(b, split)}
            for label, a, b, split in pairs]

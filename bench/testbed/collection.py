"""The collection stage: the product's own path over the saved models (``approxft serve``,
``collect``, ``ingest``, ``calibrate``, ``eval`` as subprocesses), the committed responses and
deep sample, and the check that the store reproduces the exact figures."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.testbed import layout, pipeline
from bench.testbed.errors import BuildError
from bench.testbed.settings import Settings
from bench.testbed.stages import Corpora, Log

AGREEMENT = 1e-4
"""Largest relative difference allowed between the store's perplexities (float32 values from
the server's JSON) and the float64 ones computed here."""
OUTSIDE_AGREEMENT = 1e-3
"""Largest difference allowed between the store's and the exact outside-top-k shares: a target
tied with the k-th value within float32 rounding may fall on either side (1 in 1,000 positions)."""
GZIP_LEVEL = 9
"""The responses are written once and read many times."""


def _save_lzma_npz(source: Path, target: Path) -> None:
    """Re-save an ``.npz`` with the same arrays (bit for bit) in an LZMA-compressed zip, which
    ``numpy.load`` reads as it is: a third of the size of numpy's uncompressed one here."""
    with np.load(source) as arrays:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_LZMA) as archive:
            for key in arrays.files:
                with archive.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, arrays[key])


def run(c: Corpora, s: Settings, stage: Path, work: Path, exact_result: dict[str, Any], log: Log) -> dict[str, Any]:
    """Serve, collect, ingest, calibrate, eval (the product's command line); write the responses
    and the deep sample into ``stage``; check the store against the exact figures."""
    run, logs = work / "run", work / "logs"
    manifest = stage / layout.MANIFEST
    models = {layout.served_name(m): stage / layout.MODELS_DIR / m for m in layout.MODELS}
    roles = {role: layout.served_name(model) for role, model in layout.ROLES.items()}
    summaries = {}
    with log.stage("collect"):
        with pipeline.served(models, log=logs / "serve.log") as server:
            config = work / "models.toml"
            config.write_text(pipeline.models_toml(server.url, roles), encoding="utf-8")
            calibration = (s.calibration, s.calibration_k) if s.calibration else None
            summaries["blend"] = pipeline.collect(config, manifest, run, roles=layout.BLEND_ROLES, calibration=calibration, log=logs / "collect-blend.log")
            extra = [r for r in roles if r not in layout.BLEND_ROLES]
            summaries["extra"] = pipeline.collect(config, manifest, run, roles=extra, calibration=None, log=logs / "collect-extra.log")
            server_rss = server.peak_rss_mb()
        responses = []
        for role, model in layout.ROLES.items():
            target = stage / f"{layout.served_name(model)}.jsonl.gz"
            with open(run / "raw" / f"{role}.jsonl", "rb") as raw, open(target, "wb") as f:
                with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=GZIP_LEVEL, mtime=0) as gz:
                    shutil.copyfileobj(raw, gz)
            responses.append(target)
        if calibration:
            (stage / layout.DEEP_DIR).mkdir()
            for role in layout.BLEND_ROLES:
                _save_lzma_npz(run / "deep" / f"{role}.npz", stage / layout.DEEP_DIR / f"{role}.npz")
            shutil.copyfile(run / "deep" / "token_strings.json", stage / layout.DEEP_DIR / "token_strings.json")
    with log.stage("ingest, calibrate, eval"):
        store = work / "testbed.store"
        pipeline.engine_command(["ingest", *map(str, responses), "--requests", str(manifest), "--out", str(store), "--vocab-size", str(c.tokenizer.vocab_size)],
                                log=logs / "ingest.log")
        if calibration:
            pipeline.engine_command(["calibrate", str(store), "--deep", str(stage / layout.DEEP_DIR),
                                     *(f"--{role}={roles[role]}={role}.npz" for role in layout.BLEND_ROLES)], log=logs / "calibrate.log")
        evaluated = pipeline.evaluate(store, roles, log=logs / "eval.log")
        outside = _store_outside_top_k(store)
        agreement = _check_agreement(evaluated, exact_result["figures"], outside)
        log(f"the store reproduces the exact figures: perplexities within {agreement['perplexity']:.1e} relative")
    return {"eval": evaluated, "outside_top_k": outside, "agreement": agreement, "server_peak_rss_mb": server_rss,
            "requests": {name: {role: part["total"] for role, result in summary["roles"].items() for part in [result["main"]]}
                         for name, summary in summaries.items()}}


def _store_outside_top_k(store: Path) -> dict[str, dict[str, float]]:
    """Per stored model and split, the share of positions whose actual token is outside its list
    (the engine's public API over the ingested store)."""
    import engine

    ds = engine.open_dataset(store)
    return {m: {split: float(ds.target_outside_topk(m)[ds.split_mask(split)].mean()) for split in ds.splits} for m in ds.store.models}


def _check_agreement(evaluated: dict[str, Any], figures: dict[str, Any], outside: dict[str, dict[str, float]]) -> dict[str, float]:
    """The largest differences between the store and the exact pass; BuildError past the limits."""
    worst = {"perplexity": 0.0, "outside": 0.0}
    for model in layout.MODELS:
        stored = evaluated["models"][layout.served_name(model)]
        for split in ("val", "test"):
            mine = figures[model][split]
            if stored["details"][split]["positions"] != mine["positions"]:
                raise BuildError(f"{model} {split}: the store has {stored['details'][split]['positions']} positions, the exact pass {mine['positions']}")
            worst["perplexity"] = max(worst["perplexity"], abs(stored[split] / mine["perplexity"] - 1))
            worst["outside"] = max(worst["outside"], abs(outside[layout.served_name(model)][split] - mine["outside_top_k"]))
            if worst["perplexity"] > AGREEMENT or worst["outside"] > OUTSIDE_AGREEMENT:
                raise BuildError(f"{model} {split}: the store (perplexity {stored[split]:.6f}, outside top-k "
                                 f"{outside[layout.served_name(model)][split]:.5f}) disagrees with the exact pass "
                                 f"({mine['perplexity']:.6f}, {mine['outside_top_k']:.5f})")
    return worst

"""The main job on the bundled Grimm data: ingest and calibrate once, evaluate, compare, plot.

``run_demo`` returns the numbers and paths it produced so tests can check them; the CLI prints.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest import ingest_responses
from ingest.prepare.bpe import GPT2_VOCAB_SIZE

from .dataset import Dataset, open_dataset
from .params import ROLES, get_parametrization
from .plot import context_curves, draw_context_plot, draw_search_history
from .report import Report
from .tuning import newton_search, tpe_search

__all__ = ["GRIMM", "DemoResult", "run_demo", "bundled_data_dir"]

GRIMM = {"big": "grimm-big", "tuned": "grimm-small-tuned", "untuned": "grimm-small", "reference": "grimm-big-tuned"}
"""Roles of the bundled models (see data/grimm/README.md)."""

GRIMM_DEEP_FILES = {"big": "top1000_big.npz", "tuned": "top1000_small_tuned.npz", "untuned": "top1000_small.npz"}
"""The bundled calibration sample, ``data/grimm/deep/``: each role's top-1000 lists (data card)."""

GRIMM_VOCAB_SIZE = GPT2_VOCAB_SIZE
"""The bundled models' tokenizer: the GPT-2 byte-level BPE vocabulary (data card)."""

PROXY_TUNING = (1.0, 1.0, -1.0)

PUBLISHED_TEMPERATURES = (1.67, 2.23, 8.83)
"""The prototype's published tuned temperatures (T_big, T_tuned, T_untuned), w = 1."""

DEMO_TRIALS = 200

EXACT_PROXY_TUNING = {"val": 104.72, "test": 107.45}
"""The proxy-tuning blend's exact perplexity over the full vocabulary, from data/grimm/README.md
(computed from full distributions when the data was made; not derivable from the top-20 data)."""


def bundled_data_dir() -> Path:
    """``data/grimm`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "data" / "grimm"


def _fingerprint(paths: list[Path]) -> dict[str, list[int]]:
    return {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


def cached_store(data_dir: Path, cache_dir: Path) -> Path:
    """Ingest ``data_dir`` into ``cache_dir/grimm.store`` and fit ``calibrated-tail`` on its deep
    sample (``data_dir/deep``, where present) unless an up-to-date store is there."""
    responses = sorted(data_dir.glob("grimm-*.jsonl.gz"))
    requests = data_dir / "requests.jsonl"
    if not responses or not requests.exists():
        raise FileNotFoundError(f"{data_dir}: expected grimm-*.jsonl.gz and requests.jsonl")
    deep = data_dir / "deep"
    deep_files = [deep / f for f in GRIMM_DEEP_FILES.values()]
    calibrated = all(p.is_file() for p in deep_files)
    store = cache_dir / "grimm.store"
    stamp = cache_dir / "grimm.store.sources.json"
    want = _fingerprint([*responses, requests, *(deep_files if calibrated else [])])
    if store.is_dir() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return store
    print(f"ingesting {len(responses)} response files from {data_dir} into {store} (once) ...", file=sys.stderr)
    ingest_responses(responses, requests=requests, out=store, vocab_size=GRIMM_VOCAB_SIZE)
    if calibrated:
        print(f"calibrating calibrated-tail on {deep} ...", file=sys.stderr)
        calibrate_grimm(open_dataset(store), deep)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(want))
    tmp.replace(stamp)
    return store


def calibrate_grimm(ds: Dataset, deep: Path) -> Path:
    """Fit ``calibrated-tail`` for the Grimm roles on the bundled deep sample; the fit's path."""
    return ds.calibrate(deep, models=[GRIMM[r] for r in ROLES], files=[GRIMM_DEEP_FILES[r] for r in ROLES]).path


@dataclass(frozen=True)
class DemoResult:
    """What the demo computed.

    Attributes:
        dataset: the opened bundled dataset.
        models: each model's exact report.
        outside_topk: per model, the share of positions whose target is outside its top-k.
        blends: the proxy-tuning blend's report under each estimator the store allows.
        default_estimator: the store's default estimator for the Grimm roles.
        plot: where the perplexity-by-context PNG was written.
        tuned: ``(label, report)`` rows of the tuning table, all under the default estimator,
            tuned on val: the published temperatures, proxy-tuning, TPE, Newton.
        history_plot: where the TPE optimization history PNG was written.
    """

    dataset: Dataset
    models: list[Report]
    outside_topk: dict[str, float]
    blends: dict[str, Report]
    default_estimator: str
    plot: Path
    tuned: list[tuple[str, Report]]
    history_plot: Path


def run_demo(*, data_dir: Path | None = None, cache_dir: Path = Path(".approxft-cache")) -> DemoResult:
    """Ingest the bundled data (once), evaluate every model and the proxy-tuning blend, plot."""
    ds = open_dataset(cached_store(data_dir or bundled_data_dir(), cache_dir))
    models = [ds.model_report(m) for m in ds.models]
    roles = {r: GRIMM[r] for r in ROLES}
    blends = {name: ds.blend(**roles, estimator=name).evaluate(PROXY_TUNING) for name in ds.usable_estimators(**roles)}
    default = ds.default_estimator(**roles)
    curves = context_curves(
        [(r.name, r) for r in models]
        + [(f"proxy-tuning blend (estimate: {default})", blends[default])],
        split="test",
    )
    plot = draw_context_plot(
        curves, cache_dir / "demo" / "perplexity-by-context.png",
        title="Grimm test split: perplexity by context length",
    )
    outside = {m: float(ds.target_outside_topk(m).mean()) for m in ds.models}
    tuned, history_plot = _tune(ds, roles, cache_dir)
    return DemoResult(
        dataset=ds, models=models, outside_topk=outside, blends=blends, default_estimator=default, plot=plot,
        tuned=tuned, history_plot=history_plot,
    )


def _tune(ds: Dataset, roles: dict[str, str], cache_dir: Path) -> tuple[list[tuple[str, Report]], Path]:
    """Tune on val with TPE (the prototype's temperatures) and Newton (log-linear weights)."""
    blend = ds.blend(**roles)
    temperatures = get_parametrization("temperatures")
    tpe = tpe_search(blend, "temperatures", trials=DEMO_TRIALS, seed=0)
    newton = newton_search(blend, parametrization="temperatures")
    temps = ", ".join(f"{t:g}" for t in PUBLISHED_TEMPERATURES)
    rows = [
        (f"prototype's published temperatures ({temps})", blend.evaluate(temperatures.weights(PUBLISHED_TEMPERATURES))),
        ("proxy-tuning (1, 1, -1)", blend.evaluate(PROXY_TUNING)),
        (f"TPE, {tpe.trials} trials ({_temps(tpe.params)})", blend.evaluate(tpe.weights)),
        (f"Newton, {newton.passes} passes ({_weights(newton.weights)})", blend.evaluate(newton.weights)),
    ]
    history = draw_search_history(
        tpe.history, cache_dir / "demo" / "tpe-history.png",
        title=f"TPE over the prototype's temperatures, val split (estimate: {blend.estimator})",
        reference={"Newton optimum": float(np.exp(newton.mean_nll))},
    )
    return rows, history


def _temps(params: np.ndarray) -> str:
    return "T = " + ", ".join(f"{t:.3g}" for t in params[:3])


def _weights(weights: np.ndarray) -> str:
    return "a = " + ", ".join(f"{a:.3g}" for a in weights)

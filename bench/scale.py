"""Memory and time against store size: ``python -m bench.scale [--sizes 53k,1M,3M,10M]``.

Each size runs in a fresh process, so that its peak resident memory (``ru_maxrss``) is its own:
write a synthetic store (``bench.synthetic_store``, cached under ``.approxft-cache/bench/``; the
bundled Grimm data for ``grimm``; 3M and 10M sharded, 1M positions a shard), open it and build the
default blend, then time one val evaluation (the tuning objective, B = 1 and B = 32 weight
vectors), a full ``evaluate`` and a Newton tune. A store of ``engine.matrix_cache.MIN_POSITIONS``
or more is measured twice: its blend built (its cache removed first), then read back from the
cache that build wrote. A sharded store is measured a third time streamed (``--stream``, one
shard's matrix and positions in memory at a time): its Newton tune, and its val figure at the
in-memory optimum, each compared with the in-memory one; its memory, the same at 3M and 10M, does
not grow with the store. The table gives the
resident memory after the build, the peak, the blend's own candidate matrix, and each per
million positions, beside the store's size on disk and its cache's. Peak memory is what decides the
largest store a machine can evaluate in memory. At small sizes the per-million figures are mostly
fixed costs (the kernels Numba loads at the first call, the vocabulary): read them at 1M and up.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engine.matrix_cache import MIN_POSITIONS
from ingest.store import BLEND_CACHE_DIR

from .markdown import markdown
from .table import median_seconds

CACHE = Path(".approxft-cache") / "bench"
SIZES = {"53k": 53_000, "1M": 1_000_000, "3M": 3_000_000, "10M": 10_000_000}
SHARDED = {"3M": 1_000_000, "10M": 1_000_000}
"""The sizes written as sharded stores, with their shards' most positions."""


def _rss_mb() -> float:
    """Resident memory now, MB (``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def _store(label: str) -> Path:
    return CACHE / f"scale-{label}.store"


def write(label: str) -> dict:
    """Write the store of one size (the bundled data ingested, for ``grimm``); its seconds."""
    from ingest import ingest_responses

    from .synthetic_store import synthetic_store

    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if label == "grimm":
        grimm = Path("data/grimm")
        ingest_responses(sorted(grimm.glob("grimm-*.jsonl.gz")), requests=grimm / "requests.jsonl", out=_store(label))
    else:
        synthetic_store(_store(label), SIZES[label], shard_positions=SHARDED.get(label))
    return {"write_s": time.perf_counter() - start}


def measure(label: str, streaming: bool = False, weights: list[float] | None = None) -> dict:
    """One written size, in this process: the figures of one table row; ``streaming``: shard by
    shard, the val figure also at ``weights`` (the in-memory optimum)."""
    import numpy as np

    import engine
    from engine.tuning.tune import tune

    from .synthetic_store import MODELS

    store = _store(label)
    cache = store / BLEND_CACHE_DIR
    matrix = "streamed" if streaming else "read back" if cache.is_dir() else "built"
    base = _rss_mb()  # the interpreter and libraries, before any of the store is read
    start = time.perf_counter()
    ds = engine.open_dataset(store, streaming=streaming)
    models = ("grimm-big", "grimm-small-tuned", "grimm-small") if label == "grimm" else MODELS
    blend = ds.blend(big=models[0], tuned=models[1], untuned=models[2])
    built = time.perf_counter() - start
    after_build = _rss_mb() - base
    one = np.array([1.0, 1.0, -1.0])
    batch = np.tile(one, (32, 1))
    repeats = 1 if streaming else 5
    start = time.perf_counter()
    newton = tune(blend, method="newton")
    result = {
        "label": label, "positions": ds.n_positions, "estimator": blend.estimator, "matrix": matrix,
        "build_s": built,
        "val_ms": 1e3 * median_seconds(lambda: blend.mean_nll(one, split="val"), repeats),
        "val32_ms": 1e3 * median_seconds(lambda: blend.mean_nll(batch, split="val"), max(1, repeats - 2)),
        "evaluate_ms": 1e3 * median_seconds(lambda: blend.evaluate(one), max(1, repeats - 2)),
        "newton_s": time.perf_counter() - start, "newton_weights": newton.weights.tolist(),
        "rss_mb": after_build,
        "matrix_mb": 0.0 if streaming else (blend.matrix.values.nbytes + blend.matrix.offsets.nbytes) / 2**20,
        "disk_mb": _disk_mb(store) - _disk_mb(cache), "cache_mb": _disk_mb(cache),
        "val_at": float(blend.mean_nll(np.array(weights or newton.weights), split="val")),
    }
    return {**result, "peak_mb": _peak_mb() - base}


def _row(r: dict) -> list[str]:
    per_m = 1e6 / r["positions"]
    written = "cached" if r["write_s"] is None else f"{r['write_s']:.1f} s"
    return [
        r["label"], f"{r['positions']:,}", written, f"{r['build_s']:.1f} s ({r['matrix']})", f"{r['val_ms']:.1f} ms",
        f"{r['val32_ms']:.1f} ms", f"{r['evaluate_ms']:.1f} ms", f"{r['newton_s']:.1f} s",
        f"{r['rss_mb'] / 1024:.2f} GB ({r['rss_mb'] * per_m / 1024:.2f}/M)",
        f"{r['peak_mb'] / 1024:.2f} GB ({r['peak_mb'] * per_m / 1024:.2f}/M)",
        f"{r['matrix_mb'] / 1024:.2f} GB ({r['matrix_mb'] * per_m / 1024:.2f}/M)",
        f"{r['disk_mb'] / 1024:.2f} GB", f"{r['cache_mb'] / 1024:.2f} GB",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="grimm,1M,3M", help="comma-separated: grimm, 53k, 1M, 3M, 10M (default grimm,1M,3M)")
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)  # write|measure|stream SIZE [WEIGHTS]
    args = p.parse_args(argv)
    if args.child:
        step, label, *weights = args.child
        if step == "write":
            print(json.dumps(write(label)))
        else:
            print(json.dumps(measure(label, streaming=step == "stream", weights=json.loads(weights[0]) if weights else None)))
        return 0
    rows, checks = [], []
    for label in args.sizes.split(","):
        if label != "grimm" and label not in SIZES:
            p.error(f"unknown size {label!r}: grimm or one of {', '.join(SIZES)}")
        written = None
        if not _written(label):
            written = _child("write", label)["write_s"]
        shutil.rmtree(_store(label) / BLEND_CACHE_DIR, ignore_errors=True)
        for again in range(2 if SIZES.get(label, 0) >= MIN_POSITIONS else 1):  # built, then read back
            result = {"write_s": None if again else written, **_child("measure", label)}
            print(f"{label}: done ({result['estimator']}, matrix {result['matrix']})", file=sys.stderr, flush=True)
            rows.append(_row(result))
        if label in SHARDED:
            streamed = {"write_s": None, **_child("stream", label, json.dumps(result["newton_weights"]))}
            rows.append(_row(streamed))
            checks.append(_check(label, result, streamed))
    print(markdown(["store", "positions", "write", "open + build", "val, B=1", "val, B=32", "evaluate", "Newton tune",
                    "resident after build", "peak", "blend matrix", "on disk", "cache on disk"], rows))
    for line in checks:
        print(line)
    return 0


def _written(label: str) -> bool:
    """Whether the store of ``label`` is written, sharded as ``SHARDED`` says (else it is removed)."""
    meta = _store(label) / "store.json"
    if meta.exists() and ("shards" in json.loads(meta.read_text())) == (label in SHARDED):
        return True
    shutil.rmtree(_store(label), ignore_errors=True)
    return False


def _check(label: str, memory: dict, streamed: dict) -> str:
    """How far the streamed figures are from the in-memory ones."""
    import numpy as np

    a, b = np.array(memory["newton_weights"]), np.array(streamed["newton_weights"])
    return (f"{label} streamed against in memory: val mean NLL at the in-memory optimum {streamed['val_at']:.15g} vs "
            f"{memory['val_at']:.15g} (relative {abs(streamed['val_at'] / memory['val_at'] - 1):.1e}); Newton's "
            f"weights {np.round(b, 6).tolist()} vs {np.round(a, 6).tolist()} (largest relative "
            f"{np.max(np.abs(b / a - 1)):.1e})")


def _child(step: str, label: str, *extra: str) -> dict:
    """One step in a fresh process, so that a measure's peak memory is its own."""
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--child", step, label, *extra], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} {step}: failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())

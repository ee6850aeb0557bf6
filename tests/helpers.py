"""What many tests share: the bundled data's paths and reference figures, and the real CLI run
in-process (``run_cli``) or as a subprocess (``approxft``)."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.cli import main

REPO = Path(__file__).resolve().parents[1]
GRIMM_DIR = REPO / "data" / "grimm"
GOLDEN_DIR = REPO / "tests" / "data" / "grimm-golden"

# The data card's reference figures (data/grimm/README.md): exact perplexities per split.
DATA_CARD = {
    "grimm-small": {"val": 647.74, "test": 650.30},
    "grimm-small-tuned": {"val": 103.89, "test": 107.81},
    "grimm-big": {"val": 572.24, "test": 554.95},
    "grimm-big-tuned": {"val": 57.66, "test": 58.91},
}
GRIMM_ROLES = {"big": "grimm-big", "tuned": "grimm-small-tuned", "untuned": "grimm-small"}
GRIMM_MODELS = ("grimm-big-tuned", "grimm-big", "grimm-small-tuned", "grimm-small")
"""The bundled models in the order an ingest of their files, sorted by name, stores them."""
SHARD_POSITIONS = 12_000
"""The most positions a shard of the sharded bundled store (``grimm_sharded_store``) holds: 5 shards."""
ROLE_ARGS = [f"--{role}={model}" for role, model in GRIMM_ROLES.items()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def approxft(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real ``approxft`` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def run_cli(capsys, *args: object) -> subprocess.CompletedProcess:
    """The real CLI, in-process, its stdout and stderr captured (pytest's ``capsys``)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out.out, out.err)


def write_corpus(path: Path, n_docs: int = 10, chars: int = 320) -> Path:
    """Short documents cut from the Grimm chunks' text, separated by two blank lines."""
    docs = []
    with gzip.open(GRIMM_DIR / "grimm-big.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in zip(range(n_docs), f, strict=False):
            docs.append(f"STORY {i}\n" + json.loads(line)["choices"][0]["text"][:chars])
    path.write_text("\n\n\n".join(docs), encoding="utf-8")
    return path


def cut_collection(folder: Path, lo: int, hi: int, models: Sequence[str] = GRIMM_MODELS) -> tuple[list[Path], Path]:
    """Requests ``lo:hi`` of the bundled data, as a collection of their own: one response file per
    model of ``models`` and their manifest, written in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = (GRIMM_DIR / "requests.jsonl").read_text().splitlines(keepends=True)
    manifest = folder / "requests.jsonl"
    manifest.write_text("".join(lines[lo:hi]))
    files = []
    for model in models:
        with gzip.open(GRIMM_DIR / f"{model}.jsonl.gz", "rt", encoding="utf-8") as f:
            responses = [line for i, line in enumerate(f) if lo <= i < hi]
        files.append(folder / f"{model}.jsonl")
        files[-1].write_text("".join(responses), encoding="utf-8")
    return files, manifest

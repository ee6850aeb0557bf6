"""What a testbed folder holds and how it is replaced.

    OUT/build.json                   the marker: format, settings, training, figures, timings
    OUT/README.md                    the data card
    OUT/sources.json                 where every corpus file came from
    OUT/requests.jsonl               the request manifest (approxft prepare)
    OUT/testbed-<model>.jsonl.gz     each model's raw responses (approxft collect)
    OUT/deep/                        the deep calibration sample (approxft collect --calibration)
    OUT/models/<model>/              config.json, model.safetensors (float16), tokenizer files
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from bench.testbed.errors import BuildError

MARKER = "build.json"
FORMAT = "approxft-testbed"
VERSION = 1
MODELS_DIR = "models"
DEEP_DIR = "deep"
MANIFEST = "requests.jsonl"
SOURCES = "sources.json"
CARD = "README.md"
PREFIX = "testbed-"
"""Served (and stored) model names: ``testbed-small``, ..., mirroring ``grimm-*``."""

MODELS = ("small", "big", "small-tuned", "big-tuned")
"""Model folder names, in training order."""
BASE = {"small-tuned": "small", "big-tuned": "big"}
"""Each tuned model's base."""
ROLES = {"big": "big", "tuned": "small-tuned", "untuned": "small", "big-tuned": "big-tuned"}
"""``approxft collect`` role -> model; ``big-tuned`` is the extra, reference-only role."""
BLEND_ROLES = ("big", "tuned", "untuned")
"""The roles of the proxy-tuning blend (and of the deep sample)."""


def served_name(model: str) -> str:
    return PREFIX + model


def is_testbed(path: Path) -> bool:
    """Whether ``path`` holds a testbed's marker file."""
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(out: Path) -> None:
    """BuildError unless ``out`` is absent, an empty folder, or a previous testbed."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildError(f"{out}: exists and is not a folder; not replacing it")
    if any(out.iterdir()) and not is_testbed(out):
        raise BuildError(f"{out}: exists and is not a testbed (no {MARKER} of format {FORMAT}); not replacing it")


def stage_dir(out: Path) -> Path:
    """A fresh folder beside ``out`` (same file system, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0o700 would become the testbed's permissions
    return tmp

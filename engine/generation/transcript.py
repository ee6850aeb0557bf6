"""Generation transcripts (``approxft generate --transcript``): read back and checked where they
enter, and replayed offline (``approxft generate --replay``).

A transcript is a JSON object: ``format``/``version``; the blend (``terms``, ``weights``,
``estimator``, ``mask``; ``engine.generation.tuned``) and its ``calibration`` fit (or null);
``vocab_size``, ``temperature``, ``top_p``, ``seed``; ``steps`` (per step, ``lists``: model ->
``[[token, log-probability], ...]``, the lists the models answered) and ``tokens`` (the token
drawn at each step); with ``--compare``, ``compare`` holds the first term's model's own ``steps``
and ``tokens``. Everything else it records (the text, each step's blended top candidates) is
derived and not read. Version 1 (three models, before blends had any number of terms) named the
models by role (``models``) and keyed its lists by role; it is read as the same blend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import shown
from ingest.values import (
    LP_TOLERANCE,
    MAX_VOCAB_SIZE,
    finite_number,
    is_integer,
    number,
)

from ..candidates import MissingDrops
from ..estimators import get_estimator
from ..params import ROLES
from .step import step_record
from .tuned import TunedBlend, tuned_blend

__all__ = ["TRANSCRIPT_FORMAT", "TRANSCRIPT_VERSION", "RecordedRun", "Transcript", "read_transcript",
           "parse_transcript", "replay", "check_replay"]

TRANSCRIPT_FORMAT = "approxft-generation"
TRANSCRIPT_VERSION = 2


@dataclass(frozen=True)
class RecordedRun:
    """One recorded run: ``blend`` (every model of the blend) or ``compare`` (its first term's
    model alone)."""

    name: str
    lists: list[dict[str, dict[str, float]]]
    """Per step, model -> ``{token: natural-log probability}`` as the models answered."""
    tokens: list[str]
    """The token drawn at each step (as many as steps)."""


@dataclass(frozen=True)
class Transcript:
    """What a replay needs from a transcript, checked."""

    blend: TunedBlend
    calibration: MissingDrops | None
    vocab_size: int
    temperature: float
    top_p: float
    seed: int
    runs: tuple[RecordedRun, ...]


class _Bad(ValueError):
    """A field at fault: ``field`` (a JSON path) and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}' {problem}")


def read_transcript(path: str | Path) -> Transcript:
    """Read and check a transcript file; ValueError naming the file and the field at fault."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # not UTF-8, not JSON, an integer of over 4300 digits
        raise ValueError(f"{path}: cannot be read as JSON ({err})") from None
    try:
        return parse_transcript(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def parse_transcript(data: Any) -> Transcript:
    """A transcript's JSON value, checked; ValueError naming the field at fault."""
    if not isinstance(data, Mapping) or data.get("format") != TRANSCRIPT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"not an approxft generation transcript (format {shown(found)})")
    version = data.get("version")
    if version not in (1, TRANSCRIPT_VERSION) or isinstance(version, bool):
        raise _Bad("version", f"is {shown(version)}; this reader knows versions 1 and {TRANSCRIPT_VERSION}")
    blend = tuned_blend(data)
    if blend.models is None:
        raise _Bad("terms", "is missing: a transcript names its models")
    keys = ROLES if version == 1 else blend.models  # what the recorded lists are keyed by
    calibration = None
    if data.get("calibration") is not None:
        try:
            calibration = MissingDrops.from_json(data["calibration"])
        except ValueError as err:
            raise ValueError(f"field 'calibration': {err}") from None
        if calibration.drop.shape[2] != len(blend.models):
            raise _Bad("calibration", f"is a fit of {calibration.drop.shape[2]} models, not {len(blend.models)}")
    if get_estimator(blend.estimator).needs_calibration and calibration is None:
        raise _Bad("calibration", f"is missing: estimator {blend.estimator} needs its calibration fit")
    runs = [_run("blend", data, "", keys, blend.models)]
    if "compare" in data:
        if not isinstance(data["compare"], Mapping):
            raise _Bad("compare", "is not an object")
        runs.append(_run("compare", data["compare"], "compare.", keys[:1], blend.models[:1]))
    return Transcript(
        blend=blend,
        calibration=calibration,
        vocab_size=_integer(data, "vocab_size", least=1, most=MAX_VOCAB_SIZE),
        temperature=_number(data, "temperature", lambda t: t >= 0, "a number >= 0"),
        top_p=_number(data, "top_p", lambda p: 0 < p <= 1, "a number in (0, 1]"),
        seed=_integer(data, "seed", least=0),
        runs=tuple(runs),
    )


def _integer(data: Mapping[str, Any], name: str, *, least: int, most: int | None = None) -> int:
    value = data.get(name)
    if not is_integer(value) or value < least or (most is not None and value > most):
        wanted = f"an integer >= {least}" if most is None else f"an integer in {least}..{most}"
        raise _Bad(name, f"is {shown(value)}, not {wanted}")
    return value


def _number(data: Mapping[str, Any], name: str, ok: Any, what: str) -> float:
    value = finite_number(data.get(name))
    if value is None or not ok(value):
        raise _Bad(name, f"is {shown(data.get(name))}, not {what}")
    return value


def _run(name: str, data: Mapping[str, Any], prefix: str, keys: Sequence[str], models: Sequence[str]) -> RecordedRun:
    """A recorded run whose lists are keyed by ``keys`` (models, or roles in version 1), read as
    lists of ``models``."""
    steps, tokens = data.get("steps"), data.get("tokens")
    if not isinstance(steps, list):
        raise _Bad(f"{prefix}steps", "is not a list")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _Bad(f"{prefix}tokens", "is not a list of token strings")
    if len(tokens) != len(steps):
        raise _Bad(f"{prefix}tokens", f"has {len(tokens)} tokens for {len(steps)} steps")
    lists = []
    for i, step in enumerate(steps):
        where = f"{prefix}steps[{i}].lists"
        recorded = step.get("lists") if isinstance(step, Mapping) else None
        if not isinstance(recorded, Mapping):
            raise _Bad(where, "is not an object of model -> list")
        missing = [key for key in keys if key not in recorded]
        if missing:
            raise _Bad(where, f"has no list for {', '.join(missing)}")
        lists.append({m: _top_list(recorded[key], f"{where}.{key}") for key, m in zip(keys, models, strict=True)})
    return RecordedRun(name=name, lists=lists, tokens=tokens)


def _top_list(entries: Any, where: str) -> dict[str, float]:
    """One recorded top-k list: ``[[token, log-probability], ...]``, non-empty, tokens distinct."""
    if not isinstance(entries, list) or not entries:
        raise _Bad(where, "is not a non-empty list of [token, log-probability] pairs")
    out: dict[str, float] = {}
    for j, pair in enumerate(entries):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]):
            raise _Bad(f"{where}[{j}]", f"is {shown(pair)}, not a [token, log-probability] pair")
        token, value = pair[0], number(pair[1])
        if value is None or math.isnan(value) or value > LP_TOLERANCE:
            raise _Bad(f"{where}[{j}]", f"has {shown(pair[1])}, not a log-probability")
        if token in out:
            raise _Bad(f"{where}[{j}]", f"lists {shown(token)} a second time")
        out[token] = value
    return out


def replay(transcript: Transcript) -> dict[str, list[str]]:
    """Re-derive a transcript's tokens from its recorded lists and seed, without any server:
    ``{"blend": tokens[, "compare": tokens]}``; equal to the recorded tokens when generation is
    deterministic."""
    out = {}
    for run in transcript.runs:
        rng = np.random.default_rng(transcript.seed)
        out[run.name] = [
            step_record(lists, blend=transcript.blend if run.name == "blend" else None,
                        temperature=transcript.temperature, top_p=transcript.top_p, u=float(rng.random()),
                        vocab_size=transcript.vocab_size, calibration=transcript.calibration)["token"]
            for lists in run.lists
        ]
    return out


def check_replay(transcript: Transcript) -> dict[str, int]:
    """Replay ``transcript`` and check every token against its recording; the tokens replayed per
    run (``blend``, and ``compare`` with ``--compare``).

    Raises:
        ValueError: the replay differs from the recording (naming the run and the step).
    """
    again = replay(transcript)
    for run in transcript.runs:
        tokens = again[run.name]
        if tokens != run.tokens:
            at = next(i for i, (a, b) in enumerate(zip(tokens, run.tokens, strict=True)) if a != b)
            raise ValueError(f"replay differs from the recording ({run.name}, step {at}: "
                             f"{tokens[at]!r} vs {run.tokens[at]!r})")
    return {name: len(tokens) for name, tokens in again.items()}

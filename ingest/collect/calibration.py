"""Calibration sample: deeper top-K lists at sampled positions, in the layout of
``data/grimm/deep/``: per role ``<role>.npz`` with

- ``ids``: int32 (N, K), ids into ``token_strings.json`` (one list for all roles), sorted by
  log-probability descending, -1 past the end of a shorter list;
- ``lp``: float32 (N, K), natural-log values, -inf past the end;
- ``target_lp``: float32 (N,), the actual token's value where it is in the list, else NaN;
- ``request``, ``position``: int32 (N,), which positions these are (manifest request index,
  0-based token position = tokens of context).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ingest.atomic import write_bytes_atomic, write_text_atomic
from ingest.collect.jobs import ManifestRequest
from ingest.collect.rawlog import is_success
from ingest.errors import IngestError
from ingest.jsonl import read_json_lines

TOKEN_STRINGS = "token_strings.json"
_ID = re.compile(r"calibration-(\d+)-(\d+)")


def write_calibration(raw_files: Mapping[str, Path], requests: Sequence[ManifestRequest], out: Path) -> list[Path]:
    """Write ``out/<role>.npz`` for each role's calibration raw file and ``out/token_strings.json``
    (each atomically); positions are those every line answers, sorted by (request, position)."""
    tokens_of = {r.index: r.tokens for r in requests}
    vocab: dict[str, int] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for role, path in raw_files.items():
        answers: dict[tuple[int, int], Mapping[str, float]] = {}
        for number, record in read_json_lines(path):
            if not is_success(record):
                continue
            match = _ID.fullmatch(str(record.get("custom_id")))
            if match is None:
                raise IngestError("is not calibration-<i>-<p>", file=str(path), line=number, field="custom_id")
            try:
                top = record["response"]["body"]["choices"][0]["logprobs"]["top_logprobs"][0]
            except (KeyError, IndexError, TypeError):
                raise IngestError("missing", file=str(path), line=number, field="choices[0].logprobs.top_logprobs[0]") from None
            answers[(int(match.group(1)), int(match.group(2)))] = top
        keys = sorted(answers)
        k = max((len(answers[key]) for key in keys), default=0)
        ids = np.full((len(keys), k), -1, dtype=np.int32)
        lp = np.full((len(keys), k), -np.inf, dtype=np.float32)
        target_lp = np.full(len(keys), np.nan, dtype=np.float32)
        for row, key in enumerate(keys):
            ranked = sorted(answers[key].items(), key=lambda kv: -kv[1])
            ids[row, : len(ranked)] = [vocab.setdefault(token, len(vocab)) for token, _ in ranked]
            lp[row, : len(ranked)] = [value for _, value in ranked]
            tokens = tokens_of.get(key[0])
            if tokens is not None and key[1] < len(tokens) and tokens[key[1]] in answers[key]:
                target_lp[row] = answers[key][tokens[key[1]]]
        arrays[role] = {
            "ids": ids,
            "lp": lp,
            "target_lp": target_lp,
            "request": np.array([key[0] for key in keys], dtype=np.int32),
            "position": np.array([key[1] for key in keys], dtype=np.int32),
        }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for role, content in arrays.items():
        buffer = io.BytesIO()
        np.savez(buffer, **content)
        written.append(write_bytes_atomic(out / f"{role}.npz", buffer.getvalue()))
    write_text_atomic(out / TOKEN_STRINGS, json.dumps(list(vocab), ensure_ascii=False))
    return written

"""The deep sample of a collection: the calibration requests' answers (deeper top-K lists at
sampled positions, ``<role>.calibration.jsonl``) as a deep sample folder (``ingest.deep_sample``),
one ``<role>.npz`` per role with ``request`` and ``position`` naming its rows."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ingest.collect.jobs import ManifestRequest
from ingest.collect.rawlog import is_success
from ingest.deep_sample import DeepLists, write_deep_sample
from ingest.errors import IngestError
from ingest.jsonl import read_json_lines

_ID = re.compile(r"calibration-(\d+)-(\d+)")


def write_deep(raw_files: Mapping[str, Path], requests: Sequence[ManifestRequest], out: Path) -> list[Path]:
    """Write ``out/<role>.npz`` for each role's calibration raw file and ``out/token_strings.json``
    (each atomically); a role's rows are the positions its file answers, sorted by (request,
    position). The actual token's value is its list entry's, NaN where the list misses it."""
    tokens_of = {r.index: r.tokens for r in requests}
    vocab: dict[str, int] = {}
    lists: dict[str, DeepLists] = {}
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
        lists[role] = DeepLists(
            ids=ids,
            lp=lp,
            target_lp=target_lp,
            request=np.array([key[0] for key in keys], dtype=np.int32),
            position=np.array([key[1] for key in keys], dtype=np.int32),
        )
    return write_deep_sample(out, lists, list(vocab))

"""Models that share a tokenizer must have scored the same tokens, request by request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ingest.errors import IngestError
from ingest.parse.model_file import ModelResponses


def check_aligned(models: Sequence[ModelResponses], request_index: np.ndarray) -> None:
    """Raise IngestError at the first request and position where a model's prompt tokens differ
    from the first model's. All models' ids must index one shared vocabulary."""
    first = models[0]
    for other in models[1:]:
        if np.array_equal(first.token_starts, other.token_starts) and np.array_equal(
            first.token_ids, other.token_ids
        ):
            continue
        for r in range(len(request_index)):
            a = first.token_ids[first.token_starts[r] : first.token_starts[r + 1]]
            b = other.token_ids[other.token_starts[r] : other.token_starts[r + 1]]
            if np.array_equal(a, b):
                continue
            shared = min(a.size, b.size)
            differ = np.flatnonzero(a[:shared] != b[:shared])
            p = int(differ[0]) if differ.size else shared
            raise IngestError(
                f"is {_token(other, b, p)} but {first.source} line {first.lines[r]} has "
                f"{_token(first, a, p)} (request_index {request_index[r]}, position {p}): "
                "the models must score the same tokens",
                file=str(other.source),
                line=int(other.lines[r]),
                field=f"choices[0].logprobs.tokens[{p}]",
            )


def _token(model: ModelResponses, ids: np.ndarray, p: int) -> str:
    return repr(model.vocab[ids[p]]) if p < ids.size else f"absent (only {ids.size} tokens)"

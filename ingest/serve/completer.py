"""What ``approxft serve`` answers, endpoint by endpoint, over a set of loaded models: requests
are checked (``params``) before any model runs; the model lock is held for forward passes only."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ingest.serve.chat import answer_chat, stream_chat
from ingest.serve.completions import answer_completion, stream_completion
from ingest.serve.errors import bad_request
from ingest.serve.model import LocalModel
from ingest.serve.params import Limits, parse_chat, parse_completion
from ingest.serve.tokenization import Tokenizers

Answer = dict[str, Any] | Iterator[dict[str, Any]]
"""A response body, or the chunks of a stream."""


class Completer:
    """Answers requests for ``models``, within ``limits``."""

    def __init__(self, models: Sequence[LocalModel], limits: Limits = Limits()) -> None:
        self.models = {m.name: m for m in models}
        self.limits = limits
        self._lock = threading.Lock()
        self._tokenizers = Tokenizers(self.models)

    def list_models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "approxft"} for name in self.models],
        }

    def complete(self, body: Any, *, streaming: bool = True) -> Answer:
        """``/v1/completions``; ``streaming`` False refuses ``stream`` (a batch line)."""
        req = parse_completion(self.models, body, self.limits)
        if req.stream:
            if not streaming:
                raise bad_request("stream is not supported here", "stream")
            return stream_completion(req, self._lock)
        return answer_completion(req, self._lock)

    def chat(self, body: Any) -> Answer:
        """``/v1/chat/completions``."""
        req = parse_chat(self.models, body, self.limits)
        return stream_chat(req, self._lock) if req.stream else answer_chat(req, self._lock)

    def tokenize(self, body: Any) -> dict[str, Any]:
        return self._tokenizers.tokenize(body)

    def detokenize(self, body: Any) -> dict[str, Any]:
        return self._tokenizers.detokenize(body)

    def tokenizer_info(self, query: Mapping[str, str]) -> dict[str, Any]:
        return self._tokenizers.tokenizer_info(query)

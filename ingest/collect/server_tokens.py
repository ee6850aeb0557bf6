"""The ``server`` tokenizer for corpus preparation: the endpoint's own tokenization, asked by echo
(``echo=True, max_tokens=0, logprobs=0``; ``max_tokens=1`` where 0 is rejected)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import openai

from ingest.collect.config import RoleConfig
from ingest.errors import IngestError
from ingest.prepare.corpus import TokenBytes
from ingest.server_text import openai_client, server_error
from ingest.tokens import token_bytes


@contextmanager
def server_tokenizer(role: RoleConfig, api_key: str | None) -> Iterator[TokenBytes]:
    """A tokenizer that asks ``role``'s endpoint to echo each text (one request per document),
    usable inside the ``with`` block; its client is closed when the block ends."""
    client = openai_client(api_key=api_key, asynchronous=False, base_url=role.base_url, timeout=role.timeout,
                           max_retries=role.retries)

    def tokenize(text: str) -> list[bytes]:
        try:
            try:
                response = client.completions.create(model=role.model, prompt=text, echo=True, max_tokens=0, logprobs=0)
            except openai.BadRequestError as err:
                if "max_tokens" not in str(err):
                    raise
                response = client.completions.create(model=role.model, prompt=text, echo=True, max_tokens=1, logprobs=0)
        except openai.OpenAIError as err:
            raise IngestError(f"server tokenization via {role.base_url} failed: {server_error(err)}", field="tokenizer") from None
        logprobs = response.choices[0].logprobs
        if logprobs is None or logprobs.tokens is None:
            raise IngestError("the server's echo response has no logprobs.tokens", field="tokenizer")
        n = response.usage.prompt_tokens if response.usage is not None else len(logprobs.tokens)
        return [token_bytes(t) for t in logprobs.tokens[:n]]

    with client:
        yield tokenize

"""Tokenizers for corpus preparation, by name: ``gpt2`` (the bundled vocabulary, offline),
``gpt2:DIR`` (encoder.json + vocab.bpe in DIR), ``tiktoken:ENCODING`` (optional import).

Each is a ``TokenBytes`` function: text -> its tokens' raw bytes. (The server's own tokenization,
``server``, needs an endpoint and lives in ``ingest.collect.server_tokens``.)
"""

from __future__ import annotations

from ingest.errors import IngestError
from ingest.prepare.bpe import GPT2_DIR, gpt2
from ingest.prepare.corpus import TokenBytes


def local_tokenizer(name: str) -> TokenBytes:
    """The tokenizer called ``name``; IngestError for an unknown one or a missing package."""
    kind, _, arg = name.partition(":")
    if kind == "gpt2":
        bpe = gpt2(arg or str(GPT2_DIR))
        return lambda text: [bpe.vocab_bytes[i] for i in bpe.encode(text)]
    if kind == "tiktoken":
        try:
            import tiktoken
        except ImportError:
            raise IngestError("needs tiktoken: pip install tiktoken", field="tokenizer") from None
        try:
            encoding = tiktoken.get_encoding(arg or "cl100k_base")
        except ValueError as err:
            raise IngestError(f"{name!r}: {err}", field="tokenizer") from None
        return lambda text: [encoding.decode_single_token_bytes(t) for t in encoding.encode(text, disallowed_special=())]
    raise IngestError(f"is {name!r}: expected gpt2, gpt2:DIR, tiktoken:ENCODING or server", field="tokenizer")

"""Tokenizers for corpus preparation, by name: ``gpt2`` (the bundled vocabulary, offline),
``gpt2:DIR`` (encoder.json + vocab.bpe in DIR), ``tiktoken:ENCODING`` (optional import); and
``hf_gpt2_tokenizer``, GPT-2's as a Hugging Face tokenizer for local models.

Each is a ``TokenBytes`` function: text -> its tokens' raw bytes. (The server's own tokenization,
``server``, needs an endpoint and lives in ``ingest.collect.server_tokens``.) A manifest records
the name of the tokenizer that prepared it (``tokenizer``); ``tokenizer_vocabulary`` lists the
token strings of a name, for full next-token distributions (``approxft collect --calibration-k all``);
``local_token_ids`` gives a name's token ids, for prompts sent as ids (next-token requests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest.errors import IngestError
from ingest.prepare.bpe import END_OF_TEXT, GPT2_DIR, gpt2
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


def local_token_ids(name: str) -> Callable[[bytes], int | None]:
    """The id of a token of the tokenizer called ``name``, given its raw bytes (None for bytes
    that are no token of it); IngestError for an unknown name or a missing package."""
    kind, _, arg = name.partition(":")
    if kind == "gpt2":
        ids = {raw: i for i, raw in enumerate(gpt2(arg or str(GPT2_DIR)).vocab_bytes)}
        return ids.get
    local_tokenizer(name)  # the same errors for an unknown name or a missing package
    import tiktoken

    encoding = tiktoken.get_encoding(arg or "cl100k_base")

    def tiktoken_id(raw: bytes) -> int | None:
        try:
            return encoding.encode_single_token(raw)
        except KeyError:
            return None

    return tiktoken_id


def tokenizer_vocabulary(name: str) -> list[str]:
    """(V,) the API token string of every id of the tokenizer called ``name``, in id order (gpt2
    -> 50257 strings); IngestError for a tokenizer whose vocabulary is not known here: ``server``
    (the endpoint's own), ``tiktoken`` encodings (whose ids have gaps), any other name."""
    kind, _, arg = name.partition(":")
    if kind != "gpt2":
        raise IngestError(f"is {name!r}: its vocabulary is not known here (whole distributions need a tokenizer "
                          "whose ids approxft can list: gpt2 or gpt2:DIR)", field="tokenizer")
    bpe = gpt2(arg or str(GPT2_DIR))
    return bpe.api_tokens(list(range(len(bpe))))


def hf_gpt2_tokenizer(directory: str | Path = GPT2_DIR) -> Any:
    """GPT-2's byte-level BPE (``encoder.json`` and ``vocab.bpe`` in ``directory``) as a Hugging
    Face ``PreTrainedTokenizerFast``, for saving beside a local model; offline, no hub. Needs
    ``tokenizers`` and ``transformers`` (the ``local`` extra)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    bpe = Tokenizer(models.BPE.from_file(str(directory / "encoder.json"), str(directory / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT)

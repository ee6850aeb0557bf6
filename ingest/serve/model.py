"""The models ``approxft serve`` answers for: a local Hugging Face causal LM, its tokenizer and
each id's API token string. Needs the ``local`` extra (torch, transformers), imported lazily.

Token strings are what OpenAI writes: the token's text, or ``bytes:\\xNN...`` when its bytes are
not valid UTF-8 on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.prepare.bpe import bytes_to_unicode
from ingest.tokens import api_token, id_token, token_bytes

INSTALL_HINT = "approxft serve needs torch and transformers: pip install 'approxft[local]'"


@dataclass
class LocalModel:
    """One loaded model: its name, the torch module, the tokenizer, and each id's API string."""

    name: str
    model: Any
    tokenizer: Any
    token_strings: list[str]
    """(V,) API token string of every id."""
    max_context: int
    token_raw: list[bytes] = field(init=False, repr=False)
    """(V,) raw bytes of every id (``token_bytes`` of its string)."""

    def __post_init__(self) -> None:
        self.token_raw = [token_bytes(t) for t in self.token_strings]

    @property
    def vocab_size(self) -> int:
        return len(self.token_strings)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as a prompt (no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def text(self, ids: list[int]) -> str:
        """The text of ``ids``: their bytes joined, invalid UTF-8 replaced."""
        return b"".join(self.token_raw[i] for i in ids).decode("utf-8", errors="replace")


def load_model(directory: str | Path, name: str | None = None) -> LocalModel:
    """Load a causal LM and its tokenizer from ``directory`` (offline); float32, eval mode."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: model directory not found")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    model.eval()
    vocab_size = model.get_output_embeddings().weight.shape[0]
    max_context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 2048)
    return LocalModel(
        name=name or directory.name,
        model=model,
        tokenizer=tokenizer,
        token_strings=_token_strings(tokenizer, vocab_size),
        max_context=int(max_context),
    )


def _token_strings(tokenizer: Any, vocab_size: int) -> list[str]:
    """API strings per id: byte-level vocabularies map back through GPT-2's byte table; others
    decode each id on its own."""
    char_byte = {c: b for b, c in bytes_to_unicode().items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    strings = []
    for index, piece in enumerate(pieces):
        if piece is not None and all(c in char_byte for c in piece):
            strings.append(api_token(bytes(char_byte[c] for c in piece)))
        else:
            strings.append(tokenizer.decode([index]))
    # Output rows beyond the tokenizer (padded embeddings) still need names.
    strings.extend(id_token(i) for i in range(len(strings), vocab_size))
    return strings

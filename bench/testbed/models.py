"""The testbed's models on disk: a Hugging Face folder per model (``config.json``,
``model.safetensors`` in float16, the GPT-2 tokenizer files), and the GPT-2 tokenizer built
offline from ``data/gpt2`` (the same construction as ``tests/tiny_models.py``; a candidate for
moving into the package).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from bench.testbed.errors import BuildError
from ingest.prepare.bpe import GPT2_DIR, GPT2_VOCAB_SIZE

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


def gpt2_vocabulary() -> dict[str, int]:
    """``data/gpt2/encoder.json``: token (GPT-2's byte-to-unicode spelling) -> id, 50,257 entries."""
    return json.loads((GPT2_DIR / "encoder.json").read_text(encoding="utf-8"))


def save_model(model: torch.nn.Module, tokenizer: Any, directory: Path) -> Path:
    """Write ``model`` as float16 safetensors (tied embeddings stored once) with its config and
    ``tokenizer`` into ``directory``; the in-memory model is left as it was (float32).
    ``tokenizer.json`` is rewritten without indentation: the same content in 1.6 MB, not 3.6."""
    directory.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).half().save_pretrained(directory, safe_serialization=True)
    (directory / WEIGHTS).chmod(0o644)  # safetensors writes 0o600; the other files are 0o644
    tokenizer.save_pretrained(directory)
    path = directory / TOKENIZER
    path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return directory


def load_model(directory: Path) -> torch.nn.Module:
    """The model saved in ``directory``, float32, eval mode; BuildError (naming the folder or
    file) when it is missing, unreadable, or not a GPT-2-vocabulary model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not directory.is_dir():
        raise BuildError(f"{directory}: model directory not found")
    for name in ("config.json", WEIGHTS):
        if not (directory / name).is_file():
            raise BuildError(f"{directory / name}: missing (a model directory needs config.json and {WEIGHTS})")
    # Broken files fail in many ways (safetensors' own error type, JSON, torch, transformers):
    # any of them means the folder cannot be used, and the message says which folder.
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001
        raise BuildError(f"{directory}: cannot be loaded as a causal LM: {_first_line(err)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise BuildError(f"{directory}: its tokenizer cannot be loaded: {_first_line(err)}") from None
    check_vocabulary(tokenizer, model, directory)
    model.eval()
    return model


def check_vocabulary(tokenizer: Any, model: torch.nn.Module, directory: Path) -> None:
    """BuildError unless ``tokenizer`` maps tokens to ids exactly as data/gpt2 does and the
    model's output layer has 50,257 rows."""
    rows = model.get_output_embeddings().weight.shape[0]
    if rows != GPT2_VOCAB_SIZE:
        raise BuildError(f"{directory}: the model has {rows:,} output rows, not GPT-2's {GPT2_VOCAB_SIZE:,}")
    vocabulary = tokenizer.get_vocab()
    expected = gpt2_vocabulary()
    if vocabulary != expected:
        differing = sorted(set(vocabulary.items()) ^ set(expected.items()), key=lambda kv: kv[1])
        token, index = differing[0]
        raise BuildError(
            f"{directory}: the tokenizer's vocabulary ({len(vocabulary):,} tokens) differs from data/gpt2's "
            f"({len(expected):,}; first difference: {token!r} -> {index})"
        )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]

"""Tiny GPT-2-architecture models with random weights and the real GPT-2 vocabulary, built
offline (the tokenizer files come from data/gpt2; there is no hub access)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from ingest.prepare.tokenizer import hf_gpt2_tokenizer


def make_tiny_gpt2(directory: Path, *, seed: int, n_layer: int = 2, n_embd: int = 32, n_positions: int = 256) -> Path:
    """Save a random-weight GPT-2 (``n_layer`` layers, width ``n_embd``) and a GPT-2 tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=GPT2_VOCAB_SIZE, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2)
    model = GPT2LMHeadModel(config)
    # Random init gives near-uniform predictions; larger output weights make top-k lists matter.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8.0)
    model.save_pretrained(directory)
    hf_gpt2_tokenizer().save_pretrained(directory)
    return directory


@contextmanager
def served(models: dict[str, Path], *, cwd: Path) -> Iterator[str]:
    """``approxft serve`` over ``{name: model_dir}`` on a free localhost port; yields its base
    URL (``http://127.0.0.1:PORT/v1``); the server is always killed on exit."""
    specs = [f"{name}={path}" for name, path in models.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", *specs, "--port", "0"], cwd=cwd, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"approxft serve exited with {proc.wait()}")
            match = re.search(r"listening on (http://\S+/v1)", line)
            url = match.group(1) if match else None
            if time.monotonic() > deadline:
                raise RuntimeError("approxft serve did not start within 120 s")
        # Keep reading its request log, so that a full pipe never blocks the server.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield url
    finally:
        proc.kill()
        proc.wait()

"""Fine-tune a local Hugging Face causal LM on a training file (CPU is enough for small models).

Each step takes one training example (in order, cycling), tokenized by the base model's own
tokenizer and cut to its context length, and takes one AdamW step on the causal-LM loss
(mean NLL per token, nats). The result is saved with ``save_pretrained`` (model and tokenizer)
into a temporary directory beside ``out``, then renamed to it, so ``out`` is either absent or
complete. torch and transformers are imported lazily (``pip install 'approxft[local]'``).
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalFineTune", "finetune_local", "perplexity"]

INSTALL_HINT = "needs torch and transformers: pip install 'approxft[local]'"


@dataclass(frozen=True)
class LocalFineTune:
    """What a local fine-tune did.

    Attributes:
        out: the saved model's directory.
        losses: each step's training loss (mean NLL per token, nats).
        seconds: wall time of the training steps.
    """

    out: Path
    losses: list[float]
    seconds: float


def _imports():
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return torch, AutoModelForCausalLM, AutoTokenizer


def _encode(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    encoded = [tokenizer(t)["input_ids"][:max_len] for t in texts]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    if not encoded:
        raise ValueError("no training example has two or more tokens")
    return encoded


def perplexity(model_dir: str | Path, texts: Sequence[str]) -> float:
    """``exp(mean NLL)`` over every predicted token of ``texts`` (each cut to the context length)."""
    torch, auto_model, auto_tok = _imports()
    model = auto_model.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = auto_tok.from_pretrained(model_dir, local_files_only=True)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in _encode(tokenizer, texts, model.config.max_position_embeddings):
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
            total -= float(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
            count += len(ids) - 1
    return math.exp(total / count)


def finetune_local(
    base: str | Path,
    texts: Sequence[str],
    out: str | Path,
    *,
    steps: int = 100,
    lr: float = 5e-5,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> LocalFineTune:
    """Train ``base`` for ``steps`` steps on ``texts``; save to ``out`` (which must not exist)."""
    import time

    if steps < 1:
        raise ValueError(f"--steps must be positive, got {steps}")
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out}: exists; choose a new directory (nothing is overwritten)")
    if not Path(base).is_dir():
        raise ValueError(f"{base}: not a model directory")
    torch, auto_model, auto_tok = _imports()
    torch.manual_seed(seed)
    model = auto_model.from_pretrained(base, local_files_only=True)
    tokenizer = auto_tok.from_pretrained(base, local_files_only=True)
    examples = _encode(tokenizer, texts, model.config.max_position_embeddings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        ids = torch.tensor([examples[step % len(examples)]])
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, losses[-1])
    seconds = time.perf_counter() - start
    model.eval()
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return LocalFineTune(out=out, losses=losses, seconds=seconds)

"""The training loop: GPT-2-architecture models (``transformers.GPT2LMHeadModel``, tied input and
output embeddings) trained from scratch or fine-tuned on a packed token stream, torch on CPU.

The 50,257-way output layer dominates the cost of these small models, so the loss is a fused,
chunked linear cross-entropy (``linear_cross_entropy``): the logits of ``CE_CHUNK`` positions at a
time are made, reduced to the loss and turned into both gradients at once, and never kept for the
backward pass; the per-chunk work is compiled with ``torch.compile`` (one fused pass for the
log-sum-exp and the softmax gradient). Logits are float32; the two gradient products and the
transformer body run in bfloat16 (oneDNN uses the AMX tiles of CPUs that have them), with float32
weights, optimizer state and accumulation. ``bench.testbed.speed`` measures what each choice buys.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ingest.prepare.bpe import GPT2_VOCAB_SIZE

EOS_ID = GPT2_VOCAB_SIZE - 1
"""``<|endoftext|>`` (GPT-2's last id): written after every document of a packed stream."""
N_POSITIONS = 1024
"""Position embeddings, as GPT-2's; only the first ``seq_len`` are trained, and the builder
checks that every scored context fits in those."""
HEAD_WIDTH = 32
"""Width of one attention head: heads = n_embd / HEAD_WIDTH."""
INIT_STD = 0.02
"""GPT-2's initializer range."""
CE_CHUNK = 256
"""Positions per logits chunk: (256, 50257) float32 is 51 MB. Compiled, chunks of 128-512 ran
within 6% of each other (bench/testbed/README.md)."""
ADAM_BETAS = (0.9, 0.95)
"""nanoGPT's betas for small GPTs (beta2 0.95 keeps short runs stable)."""
WEIGHT_DECAY = 0.1
"""Decoupled weight decay on matrices (not on biases or layer norms), as GPT-2 / nanoGPT."""
GRAD_CLIP = 1.0
"""Global gradient-norm clip."""
WARMUP_SHARE = 0.05
"""Share of the steps with linearly rising learning rate."""
FINAL_LR_SHARE = 0.1
"""The cosine schedule ends at this share of the peak learning rate."""
LOG_EVERY_S = 30.0
"""Seconds between progress lines (and loss-curve points)."""


@dataclass(frozen=True)
class ModelSize:
    """A GPT-2 shape: ``n_layer`` blocks of width ``n_embd``."""

    n_layer: int
    n_embd: int

    @classmethod
    def parse(cls, text: str) -> ModelSize:
        """``"4x128"`` -> ModelSize(4, 128) (layers x width)."""
        layers, _, width = text.partition("x")
        try:
            size = cls(int(layers), int(width))
        except ValueError:
            raise ValueError(f"model size {text!r}: expected LAYERSxWIDTH, e.g. 4x128") from None
        if size.n_layer < 1 or size.n_embd < HEAD_WIDTH or size.n_embd % HEAD_WIDTH:
            raise ValueError(f"model size {text!r}: layers >= 1, width a positive multiple of {HEAD_WIDTH}")
        return size

    def __str__(self) -> str:
        return f"{self.n_layer}x{self.n_embd}"


def new_model(size: ModelSize, *, seed: int) -> torch.nn.Module:
    """A freshly initialized float32 ``GPT2LMHeadModel`` (tied embeddings, no dropout: every
    run sees each token about once, so there is nothing to regularize against)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=GPT2_VOCAB_SIZE,
        n_positions=N_POSITIONS,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_embd // HEAD_WIDTH,
        initializer_range=INIT_STD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
    )
    return GPT2LMHeadModel(config)


def _chunk_loss_and_grads(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, grad_dtype: torch.dtype):
    """For one chunk: (summed NLL as float64, d/dh, d/dw) of ``log_softmax(h @ w.T)`` at ``t``.
    ``h``: float32 (c, d); ``w``: float32 (V, d); ``t``: int64 (c, 1)."""
    logits = h @ w.T
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    loss = (lse - logits.gather(1, t)).sum(dtype=torch.float64)
    # d(sum of NLL)/d(logits) = softmax - one-hot.
    g = (logits - lse).exp().scatter_add(1, t, torch.full(t.shape, -1.0)).to(grad_dtype)
    return loss, (g @ w.to(grad_dtype)).float(), (g.T @ h.to(grad_dtype)).float()


_compiled_chunk = None


def _chunk_fn(compiled: bool):
    global _compiled_chunk
    if not compiled:
        return _chunk_loss_and_grads
    if _compiled_chunk is None:
        # dynamic=False: one graph for the full chunk, one more for a batch's last, shorter one.
        _compiled_chunk = torch.compile(_chunk_loss_and_grads, dynamic=False)
    return _compiled_chunk


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean NLL of ``hidden @ weight.T``; both gradients are made in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, grad_dtype, compiled):  # type: ignore[override]
        n = hidden.shape[0]
        fn = _chunk_fn(compiled)
        w = weight.detach()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(w)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].detach()
            loss, gh, gw = fn(h, w, targets[start : start + chunk, None], grad_dtype)
            total += loss
            grad_hidden[start : start + chunk] = gh
            grad_weight += gw
        ctx.save_for_backward(grad_hidden.div_(n), grad_weight.div_(n))
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int = CE_CHUNK,
    grad_dtype: torch.dtype = torch.bfloat16,
    compiled: bool = True,
) -> torch.Tensor:
    """Mean natural-log cross-entropy of the logits ``hidden @ weight.T`` (float32).

    ``hidden``: float32 (N, d); ``weight``: float32 (V, d); ``targets``: int64 (N,). ``chunk``:
    rows of logits made at a time; ``grad_dtype``: of the two gradient products (float32
    accumulation); ``compiled``: run each chunk through ``torch.compile``. Returns a float32
    scalar whose backward gives both gradients.
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, grad_dtype, compiled)


@dataclass(frozen=True)
class StepOptions:
    """How one training step computes (the speed table's columns; defaults are the chosen ones)."""

    bf16: bool = True
    """Transformer body under bfloat16 autocast; the gradient products of the loss in bfloat16."""
    loss: str = "chunked-compiled"
    """``hf`` (the model's own loss over full logits), ``chunked`` or ``chunked-compiled``."""
    compile_body: bool = False
    """``torch.compile`` the transformer body too."""


def batch_loss(model: torch.nn.Module, batch: torch.Tensor, options: StepOptions, body=None) -> torch.Tensor:
    """Mean next-token NLL (nats, float32 scalar) of ``batch``: int64 (B, T + 1) token ids.
    ``body``: the transformer to call (a compiled one), default ``model.transformer``."""
    inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=options.bf16):
        if options.loss == "hf":
            logits = model(input_ids=inputs).logits
            return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets)
        hidden = (model.transformer if body is None else body)(input_ids=inputs).last_hidden_state
    return linear_cross_entropy(
        hidden.float().reshape(-1, hidden.shape[-1]),
        model.lm_head.weight,
        targets,
        grad_dtype=torch.bfloat16 if options.bf16 else torch.float32,
        compiled=options.loss == "chunked-compiled",
    )


@dataclass(frozen=True)
class TrainSettings:
    """One training run: ``tokens`` target tokens seen (rounded up to whole steps of
    ``batch_size`` x ``seq_len``), peak learning rate ``lr`` (warm-up, then cosine decay)."""

    tokens: int
    lr: float
    batch_size: int = 8
    seq_len: int = 512
    seed: int = 0
    options: StepOptions = field(default_factory=StepOptions)

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))


@dataclass
class TrainRecord:
    """What a run did: tokens seen, epochs over its stream, wall seconds, the loss curve."""

    label: str
    steps: int
    tokens_seen: int
    stream_tokens: int
    epochs: float
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(tokens seen, mean training loss in nats since the previous point)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else 0.0


def windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Start offsets of the non-overlapping (seq_len + 1)-token windows of ``stream`` (uint16
    or int32 token ids, 1-D): int64 (n,). A stream shorter than one window is an error."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"a training stream of {len(stream)} tokens is shorter than one window of {seq_len + 1}")
    return np.arange(n, dtype=np.int64) * seq_len


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over ``WARMUP_SHARE`` of the steps, then cosine decay to
    ``FINAL_LR_SHARE`` of ``peak`` at the last step."""
    warmup = max(1, round(WARMUP_SHARE * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=ADAM_BETAS)


def train(model: torch.nn.Module, stream: np.ndarray, settings: TrainSettings, *, label: str) -> TrainRecord:
    """Train ``model`` in place on ``stream`` (1-D token ids, documents packed with EOS between
    them): windows in a seeded random order, reshuffled each epoch, ``settings.steps`` AdamW
    steps. Logs progress to stderr every ``LOG_EVERY_S`` seconds."""
    starts = windows(stream, settings.seq_len)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(starts)
    tokens = torch.from_numpy(stream.astype(np.int64))
    offsets = torch.arange(settings.seq_len + 1)
    optimizer = _optimizer(model, settings.lr)
    body = torch.compile(model.transformer) if settings.options.compile_body else None
    model.train()
    record = TrainRecord(label, settings.steps, 0, len(stream), 0.0, 0.0)
    cursor, epoch_windows = 0, 0
    interval_loss, interval_steps = 0.0, 0
    start = last_log = time.perf_counter()
    for step in range(settings.steps):
        picked = []
        while len(picked) < settings.batch_size:
            if cursor == len(order):
                order, cursor = rng.permutation(starts), 0
            picked.append(order[cursor])
            cursor += 1
            epoch_windows += 1
        batch = tokens[torch.as_tensor(np.array(picked))[:, None] + offsets]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.steps, settings.lr)
        loss = batch_loss(model, batch, settings.options, body)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        record.tokens_seen += batch.shape[0] * settings.seq_len
        interval_loss += float(loss.detach())
        interval_steps += 1
        now = time.perf_counter()
        if now - last_log >= LOG_EVERY_S or step == settings.steps - 1:
            mean = interval_loss / interval_steps
            record.curve.append((record.tokens_seen, mean))
            rate = record.tokens_seen / (now - start)
            print(
                f"testbed: train {label}: step {step + 1}/{settings.steps}, {record.tokens_seen:,} tokens, "
                f"loss {mean:.3f}, lr {optimizer.param_groups[0]['lr']:.2e}, {rate:,.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
            interval_loss, interval_steps, last_log = 0.0, 0, now
    record.seconds = time.perf_counter() - start
    record.epochs = epoch_windows / len(starts)
    model.eval()
    return record

"""The build's settings and their defaults, chosen for the default corpora and a 90-minute build
on a 2-core CPU (bench/testbed/README.md says how they were measured)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.testbed.errors import BuildError
from bench.testbed.train import ModelSize

SEQ_LEN = 512
"""Training window: as long as the longest scored chunk, so every scored context is trained."""
BATCH_SIZE = 8
"""Windows per step: 4,096 tokens."""


@dataclass(frozen=True)
class Settings:
    domain_tokens: int = 340_000
    """Leading whole domain documents up to this many tokens: with ``finetune_share`` 0.875,
    about 300k tokens to fine-tune on and 42k held out (the size budget of the responses)."""
    finetune_share: float = 0.875
    val_share: float = 0.5
    chunk_tokens: int = 512
    general_heldout_tokens: int = 50_000
    small: ModelSize = field(default_factory=lambda: ModelSize(4, 64))
    big: ModelSize = field(default_factory=lambda: ModelSize(8, 128))
    base_tokens: int = 4_000_000
    tune_tokens: int = 600_000
    small_lr: float = 5e-3
    big_lr: float = 1.5e-3
    tune_lr_factor: float = 0.3
    seed: int = 0
    logprobs: int = 20
    calibration: int = 2000
    calibration_k: int = 1000
    seq_len: int = SEQ_LEN
    batch_size: int = BATCH_SIZE

    def check(self) -> None:
        """BuildError naming the first setting out of range."""
        positive = ("domain_tokens", "chunk_tokens", "general_heldout_tokens", "base_tokens", "tune_tokens", "logprobs", "seq_len", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise BuildError(f"--{name.replace('_', '-')} is {getattr(self, name)}, not a positive integer")
        for name in ("small_lr", "big_lr", "tune_lr_factor"):
            if not getattr(self, name) > 0:
                raise BuildError(f"--{name.replace('_', '-')} is {getattr(self, name)}, not positive")
        if not 0 < self.finetune_share < 1:
            raise BuildError(f"--finetune-share is {self.finetune_share}, not in (0, 1)")
        if not 0 < self.val_share < 1:
            raise BuildError(f"--val-share is {self.val_share}, not in (0, 1): val and test both need documents")
        if self.chunk_tokens > self.seq_len:
            raise BuildError(f"--chunk-tokens {self.chunk_tokens} is longer than the {self.seq_len}-token training window")
        if self.calibration < 0 or self.calibration_k < 1:
            raise BuildError("--calibration must be >= 0 and --calibration-k >= 1")

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["small"], data["big"] = str(self.small), str(self.big)
        return data

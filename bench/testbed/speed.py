"""Training-step speed on this machine: float32 vs bfloat16, the model's own loss vs the chunked
linear cross-entropy (eager or compiled), compiled transformer body, 1 vs 2 threads.

    python -m bench.testbed.speed [--sizes 4x128 6x192] [--steps 4]

Prints a markdown table (tokens per second per configuration, each measured after warm-up
steps, with the load average before it ran) for bench/testbed/README.md. Random token ids:
the cost of a step does not depend on the text.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.testbed.train import ModelSize, StepOptions, batch_loss, new_model

BATCH, SEQ_LEN = 8, 512
"""The builder's default step: 4,096 tokens."""
WARMUP_STEPS = 2
"""Steps before timing (compilation, allocator warm-up)."""

CONFIGS = [
    ("float32, model's own loss", StepOptions(bf16=False, loss="hf"), 2),
    ("bf16 autocast, model's own loss", StepOptions(bf16=True, loss="hf"), 2),
    ("float32, chunked loss", StepOptions(bf16=False, loss="chunked"), 2),
    ("float32, chunked loss compiled", StepOptions(bf16=False, loss="chunked-compiled"), 2),
    ("bf16, chunked loss", StepOptions(bf16=True, loss="chunked"), 2),
    ("bf16, chunked loss compiled (chosen)", StepOptions(bf16=True, loss="chunked-compiled"), 2),
    ("bf16, chunked loss compiled, 1 thread", StepOptions(bf16=True, loss="chunked-compiled"), 1),
    ("bf16, chunked loss and body compiled", StepOptions(bf16=True, loss="chunked-compiled", compile_body=True), 2),
]


def measure(size: ModelSize, options: StepOptions, threads: int, steps: int) -> tuple[float, float, float]:
    """(tokens per second, warm-up seconds, load average before) of ``steps`` AdamW steps."""
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    model = new_model(size, seed=0)
    model.train()
    body = torch.compile(model.transformer) if options.compile_body else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, model.config.vocab_size, (BATCH, SEQ_LEN + 1), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loss = batch_loss(model, batch, options, body)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start), warm, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=[ModelSize(4, 64), ModelSize(8, 128)], type=ModelSize.parse, help="LAYERSxWIDTH")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration (default 4)")
    args = parser.parse_args()
    cpus = os.cpu_count()
    print(f"torch {torch.__version__}, {cpus} CPUs, batch {BATCH} x {SEQ_LEN} tokens, AdamW, {args.steps} timed steps after {WARMUP_STEPS}\n")
    print("| model | configuration | threads | tokens/s | vs float32 | warm-up s | load average before |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        base = None
        for name, options, threads in CONFIGS:
            rate, warm, load = measure(size, options, threads, args.steps)
            base = base or rate
            print(f"| {size} | {name} | {threads} | {rate:,.0f} | {rate / base:.2f}x | {warm:.1f} | {load:.2f} |", flush=True)


if __name__ == "__main__":
    main()

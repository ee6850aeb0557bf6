"""llama-cpp-python's server against ``approxft collect``: the interoperability check.

llama-cpp-python is built from source in its own virtual environment (several minutes on 2 CPUs;
it never enters approxft's), as a user would install it:

    python3 -m venv /tmp/llama-venv && /tmp/llama-venv/bin/pip install "llama-cpp-python[server]"
    python -m bench.interop.llama_cpp_check --python /tmp/llama-venv/bin/python

1. A testbed model (``data/testbed/models/small`` by default) is converted to GGUF (float32) by
   llama.cpp's own ``convert_hf_to_gguf.py``, from the source archive of the installed
   llama-cpp-python (``pip download``), and served by ``python -m llama_cpp.server`` with
   ``--logits_all true`` (echo needs every position's logits) on 127.0.0.1.
2. ``approxft collect --verify N`` in echo mode: llama-cpp-python's echo log-probabilities are
   shifted by one position (a known upstream bug; nothing in one response shows it), so the check
   must refuse every role, naming the shift, and collect nothing.
3. The same without ``--verify``, and in ``next_token`` mode (which needs no echo), each then
   ``approxft ingest``ed: every stored value is compared with the model's own log-probability at
   that position (transformers, float64 log-softmax), to show which side was wrong (the echo's,
   by nats) and that next-token collection from the same server is right.

Prints a markdown table; exits 0 when step 2 refused every role naming the shift and step 3's
values agree with the model within ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.interop.commands import REPO, run, work_folder

ROLES = ("big", "tuned", "untuned")
SHIFT = "the echo is shifted by one position"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.interop.llama_cpp_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default="/tmp/llama-venv/bin/python", help="the python of llama-cpp-python's own venv")
    p.add_argument("--model-dir", type=Path, default=REPO / "data/testbed/models/small")
    p.add_argument("--requests", type=Path, default=REPO / "data/testbed/requests.jsonl")
    p.add_argument("--docs", type=int, default=3, help="requests used (default 3)")
    p.add_argument("--verify", type=int, default=20, help="positions --verify scores (default 20)")
    p.add_argument("--positions", type=int, default=24, help="next_token mode: positions per request (default 24)")
    p.add_argument("--tolerance", type=float, default=1e-2,
                   help="largest abs(stored - model), nats (default 1e-2: llama.cpp's float32 arithmetic is not torch's)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    version = subprocess.run([args.python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True)
    if version.returncode != 0:
        print(f"llama_cpp_check: error: {args.python} cannot import llama_cpp; create its venv: python3 -m venv "
              "/tmp/llama-venv && /tmp/llama-venv/bin/pip install 'llama-cpp-python[server]'", file=sys.stderr)
        return 1
    with work_folder(args.work, "llama-cpp-check-") as work:
        results = check(args, version.stdout.strip(), work)
    print(table(results))
    return 0 if results["passed"] else 1


def check(args: argparse.Namespace, version: str, work: Path) -> dict[str, Any]:
    gguf = convert(args.python, version, args.model_dir, work)
    requests = [json.loads(line) for line in args.requests.read_text().splitlines()[: args.docs]]
    manifest = work / "requests.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in requests))
    exact = ExactModel(args.model_dir)
    seconds = {}
    with llama_server(args.python, gguf, work) as url:
        start = time.perf_counter()
        verified = collect(work / "verified", manifest, url, "--verify", args.verify)
        seconds["verified"] = time.perf_counter() - start
        unverified = collect(work / "echo", manifest, url)
        start = time.perf_counter()
        next_token = collect(work / "next-token", manifest, url, mode="next_token", positions=args.positions)
        seconds["next_token"] = time.perf_counter() - start
    refusals = [line for line in verified.stderr.splitlines() if ": error: " in line]
    echo = errors(stored_values(ingest(work / "echo", manifest, work / "echo.store")), exact, requests)
    nt = errors(stored_values(ingest(work / "next-token", manifest, work / "next-token.store")), exact, requests)
    refused = len(refusals) == len(ROLES) and all(SHIFT in line for line in refusals)
    return {
        "llama_cpp_python": version, "model": args.model_dir.name, "docs": len(requests),
        "echo_probe": json.loads(unverified.stdout)["roles"]["big"].get("echo_max_tokens", {}).get("probe"),
        "verify_exit": verified.returncode, "refusal": refusals[0] if refusals else None, "refused": refused,
        "collected_after_refusal": sum(p.stat().st_size for p in (work / "verified" / "raw").glob("*.jsonl")),
        "echo": echo, "next_token": nt, "tolerance": args.tolerance, "seconds": seconds,
        "passed": verified.returncode == 1 and refused and unverified.returncode == 0 and next_token.returncode == 0
        and nt["max"] <= args.tolerance,
    }


def errors(stored: dict[tuple[int, int], float], exact: ExactModel, requests: list[dict[str, Any]]) -> dict[str, float]:
    """abs(stored - model) over the stored positions: their count, median and largest, nats."""
    model = exact.values(requests, list(stored))
    diff = np.array([abs(stored[key] - model[key]) for key in stored])
    return {"positions": diff.size, "median": float(np.median(diff)), "max": float(diff.max())}


def convert(python: str, version: str, model_dir: Path, work: Path) -> Path:
    """The model as float32 GGUF, by llama.cpp's converter from llama-cpp-python's source archive."""
    src = work / "src"
    run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={version}",
         "-d", src])
    with tarfile.open(next(src.glob("llama_cpp_python-*.tar.gz"))) as archive:
        archive.extractall(src, filter="data")
    llama_cpp = next(src.glob("llama_cpp_python-*/vendor/llama.cpp"))
    model = work / "hf-model"
    shutil.copytree(model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.setdefault("n_ctx", config["n_positions"])  # the converter reads GPT-2's context length by its old name
    (model / "config.json").write_text(json.dumps(config))
    out = work / "model.gguf"
    run([sys.executable, llama_cpp / "convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", "f32"],
        env={**os.environ, "PYTHONPATH": str(llama_cpp / "gguf-py")})
    return out


class llama_server:  # noqa: N801 (a context manager used like a function)
    """``python -m llama_cpp.server`` over ``gguf`` on a free localhost port; its base URL."""

    def __init__(self, python: str, gguf: Path, work: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "small",
                        "--host", "127.0.0.1", "--port", str(self.port), "--logits_all", "true", "--n_ctx", "640"]
        self.log = open(work / "llama-server.log", "w")  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                return url
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start (see {self.log.name})") from None
                time.sleep(0.5)

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def collect(out: Path, manifest: Path, url: str, *options: Any, mode: str = "echo", positions: int = 0) -> subprocess.CompletedProcess[str]:
    """``approxft collect`` of every role (all the one served model) into ``out``."""
    out.mkdir(parents=True)
    settings = f'mode = "{mode}"\n' + (f"positions_per_request = {positions}\n" if positions else "")
    config = out / "models.toml"
    config.write_text(f'[defaults]\nbase_url = "{url}"\nlogprobs = 5\nconcurrency = 1\ntimeout = 120\n{settings}'
                      + "".join(f'[models.{role}]\nmodel = "small"\n' for role in ROLES))
    return subprocess.run([sys.executable, "-m", "engine", "collect", "--models", str(config), "--corpus", str(manifest),
                           "--out", str(out), *map(str, options)], capture_output=True, text=True, cwd=REPO)


def ingest(run_dir: Path, manifest: Path, store: Path) -> Path:
    """A store of the big role's answers (every role asked the same served model)."""
    run([sys.executable, "-m", "engine", "ingest", run_dir / "raw" / "big.jsonl", "--requests", manifest, "--out", store])
    return store


def stored_values(store: Path) -> dict[tuple[int, int], float]:
    """(request, position) -> the store's observed target log-probability (one model's column)."""
    import engine

    ds = engine.open_dataset(store).store
    lp = ds.target_lp(ds.models[0])
    keys = zip(ds.positions["request"].to_list(), ds.positions["position"].to_list(), strict=True)
    return {key: float(v) for key, v in zip(keys, lp, strict=True) if np.isfinite(v)}


class ExactModel:
    """The model's own log-probabilities (transformers, float64 log-softmax)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def values(self, requests: list[dict[str, Any]], keys: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
        import torch

        out = {}
        for r in requests:
            wanted = [p for i, p in keys if i == r["request_index"]]
            if not wanted:
                continue
            ids = self.tokenizer.encode(r["params"]["prompt"])
            with torch.no_grad():
                lp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].double(), dim=-1)
            out.update({(r["request_index"], p): float(lp[p - 1, ids[p]]) for p in wanted})
        return out


def table(r: dict[str, Any]) -> str:
    from bench.markdown import markdown

    return markdown(["measurement", "result"], [
        ["llama-cpp-python, model", f"{r['llama_cpp_python']}, testbed {r['model']} as float32 GGUF, {r['docs']} requests"],
        ["echo max_tokens probe", str(r["echo_probe"])],
        ["collect --verify (echo)", f"exit {r['verify_exit']}; {'every role refused, naming the shift' if r['refused'] else 'NOT refused as expected'}"],
        ["its message (big)", (r["refusal"] or "none").replace("|", "/")],
        ["bytes collected after the refusal", f"{r['collected_after_refusal']}"],
        ["echo without --verify: store vs model", _errors(r["echo"])],
        ["next_token mode: store vs model", f"{_errors(r['next_token'])} (tolerance {r['tolerance']:g})"],
        ["time", f"echo with --verify {r['seconds']['verified']:.1f} s, next_token {r['seconds']['next_token']:.1f} s"],
        ["result", "passed" if r["passed"] else "FAILED"],
    ])


def _errors(e: dict[str, float]) -> str:
    return f"{e['positions']} positions, abs(store - model) median {e['median']:.2e}, largest {e['max']:.2e} nats"


if __name__ == "__main__":
    sys.exit(main())

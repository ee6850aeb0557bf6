"""``approxft serve`` under a full-vocabulary request: how long small requests wait meanwhile.

A full-vocabulary echo (``logprobs`` = V, what ``collect --calibration-k all`` asks, over many
positions at once: tens of MB of JSON) is sent, and small completions are sent one after another
until it is answered. The model lock covers forward passes only, and big answers are encoded in
pieces (``ingest/serve/encoding.py``), so the small ones should not wait for it.

    python -m bench.serve_concurrency [--model data/testbed/models/small] [--positions 24] [--runs 3]

The server runs in its own process (``approxft serve``), so that this client's JSON work does not
share its interpreter lock. Prints a markdown table: medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.markdown import markdown

REPO = Path(__file__).resolve().parents[1]


def post(url: str, body: dict[str, Any], *, timeout: float = 300) -> tuple[float, bytes]:
    """POST ``body`` to ``<url>/completions``; seconds until the whole answer was read, and its bytes."""
    host = urlsplit(url)
    data = json.dumps(body).encode()
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=timeout)
    try:
        conn.request("POST", f"{host.path}/completions", data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {answer[:200]!r}")
    return time.perf_counter() - start, answer


def small_and_full_latencies(url: str, model: str, *, positions: int = 24, vocab_size: int = 50257) -> dict[str, Any]:
    """Seconds: a small request alone (median of 5), the full-vocabulary echo of ``positions``
    tokens (``full``), and each small request sent one after another while it was in flight
    (``small_during``); ``entries``: the top-list entries the big answer held."""
    small = {"model": model, "prompt": "Hello there", "max_tokens": 2, "temperature": 0}
    full = {"model": model, "prompt": list(range(100, 100 + positions)), "echo": True, "max_tokens": 0,
            "logprobs": vocab_size}
    post(url, small)  # warm up: the first forward passes are slower
    alone = statistics.median(post(url, small)[0] for _ in range(5))
    done = threading.Event()
    result: dict[str, Any] = {}

    def big() -> None:  # the answer is parsed afterwards: parsing it here would hold this process
        result["full"], result["raw"] = post(url, full)
        done.set()

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.05)
    during = []
    while not done.is_set():
        seconds, _ = post(url, small)
        if not done.is_set():
            during.append(seconds)
    thread.join()
    top = json.loads(result["raw"])["choices"][0]["logprobs"]["top_logprobs"]
    return {"small_alone": alone, "full": result["full"], "entries": sum(len(t) for t in top[1:]),
            "small_during": during}


@contextmanager
def serving(model_dir: Path, name: str) -> Iterator[str]:
    """``approxft serve NAME=DIR --port 0`` in a subprocess; yields its base URL; killed on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", f"{name}={model_dir}", "--port", "0"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if found := re.search(r"listening on (http://\S+/v1)", line):
                threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
                yield found.group(1)
                return
        raise RuntimeError(f"approxft serve exited with {proc.wait()} before listening")
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "data" / "testbed" / "models" / "small")
    parser.add_argument("--positions", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    with serving(args.model, "model") as url:
        for _ in range(args.runs):
            runs.append(small_and_full_latencies(url, "model", positions=args.positions))
    median = lambda key: statistics.median(key(r) for r in runs)  # noqa: E731
    print(f"approxft serve, {args.model.name}: a full-vocabulary echo of {args.positions} tokens "
          f"({runs[0]['entries']:,} entries), medians of {args.runs} runs\n")
    print(markdown(["measurement", "result"], [
        ["small request alone", f"{median(lambda r: r['small_alone']) * 1e3:.0f} ms"],
        ["full-vocabulary request", f"{median(lambda r: r['full']):.2f} s"],
        ["small requests answered meanwhile", f"{median(lambda r: len(r['small_during'])):.0f}"],
        ["their median latency", f"{median(lambda r: statistics.median(r['small_during'])) * 1e3:.0f} ms"],
        ["their longest latency", f"{median(lambda r: max(r['small_during'])) * 1e3:.0f} ms"],
    ]))


if __name__ == "__main__":
    main()

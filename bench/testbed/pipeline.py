"""The product's own path, run as subprocesses of its command line (``python -m engine ...``):
``prepare`` the domain corpus, ``serve`` the saved models, ``collect`` their top-k responses and
the deep calibration sample, ``ingest`` the responses into a store, ``calibrate`` it, ``eval``.

Each command's stderr goes to ``<log dir>/<step>.log``; a command that fails raises BuildError
with its last stderr line and the log's path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.testbed.errors import BuildError

SERVE_START_S = 300.0
"""Longest wait for ``approxft serve`` to print its address (it loads four models)."""
REQUEST_TIMEOUT_S = 600.0
"""Per request: the server answers one request at a time, so a request may queue behind all the
others in flight."""
CONCURRENCY = 2
"""Requests in flight per role: enough to keep the one-at-a-time server busy."""
UNLIMITED_RPM = 1_000_000
"""A local server has no rate limit."""


def engine_command(args: Sequence[str], *, log: Path, cwd: Path | None = None) -> str:
    """Run ``python -m engine ARGS``; return its stdout. BuildError when it exits non-zero."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as err:
        done = subprocess.run([sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE, stderr=err, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise BuildError(f"approxft {args[0]} exited with {done.returncode}: {lines[-1] if lines else 'no message'} (log: {log})")
    return done.stdout


@dataclass
class Server:
    """A running ``approxft serve``: its base URL (``http://127.0.0.1:PORT/v1``) and process id."""

    url: str
    pid: int

    def peak_rss_mb(self) -> float | None:
        """The server's peak resident memory so far (Linux ``VmHWM``), None where unknown."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) / 1024 if match else None


@contextmanager
def served(models: Mapping[str, Path], *, log: Path) -> Iterator[Server]:
    """``approxft serve NAME=DIR ... --port 0``, until the block ends (the server is killed on
    exit, whatever happens)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}={path}" for name, path in models.items()]
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", *specs, "--port", "0"], stderr=subprocess.PIPE, text=True)
    sink = open(log, "w", encoding="utf-8")
    drain = threading.Thread(target=lambda: sink.writelines(proc.stderr), daemon=True)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + SERVE_START_S
        url = None
        while url is None:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            sink.write(line)
            if not line:
                raise BuildError(f"approxft serve exited with {proc.wait()} before listening (log: {log})")
            match = re.search(r"listening on (http://\S+/v1)", line)
            url = match.group(1) if match else None
            if url is None and time.monotonic() > deadline:
                raise BuildError(f"approxft serve did not start within {SERVE_START_S:.0f} s (log: {log})")
        # Keep draining its request log, so that a full pipe never blocks the server.
        drain.start()
        yield Server(url, proc.pid)
    finally:
        proc.kill()
        proc.wait()
        if drain.is_alive():
            drain.join()
        sink.close()


def models_toml(url: str, roles: Mapping[str, str]) -> str:
    """``models.toml`` for ``collect``: every role (-> served model name) at ``url``, echo mode."""
    lines = [
        "[defaults]",
        f'base_url = "{url}"',
        f"concurrency = {CONCURRENCY}",
        f"rpm = {UNLIMITED_RPM}",
        f"timeout = {REQUEST_TIMEOUT_S}",
        "",
    ]
    for role, model in roles.items():
        lines += [f"[models.{role}]", f'model = "{model}"', 'mode = "echo"', ""]
    return "\n".join(lines)


def collect(config: Path, manifest: Path, run: Path, *, roles: Sequence[str], calibration: tuple[int, int] | None, log: Path) -> dict[str, Any]:
    """``approxft collect`` of ``roles`` over the prepared ``manifest`` into ``run``; with
    ``calibration = (positions, k)`` also the deep sample. Returns collect's JSON summary."""
    args = ["collect", "--models", str(config), "--corpus", str(manifest), "--out", str(run), "--roles", ",".join(roles)]
    if calibration:
        args += ["--calibration", str(calibration[0]), "--calibration-k", str(calibration[1])]
    return json.loads(engine_command(args, log=log))


def evaluate(store: Path, roles: Mapping[str, str], *, log: Path) -> dict[str, Any]:
    """``approxft eval STORE --big --tuned --untuned --weights 1,1,-1 --format json``."""
    return json.loads(engine_command(
        ["eval", str(store), "--big", roles["big"], "--tuned", roles["tuned"], "--untuned", roles["untuned"], "--weights", "1,1,-1", "--format", "json"],
        log=log,
    ))

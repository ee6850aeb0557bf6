"""``approxft collect`` against a third-party OpenAI-compatible server: Hugging Face's own
``transformers serve`` over a tiny local model, started here on 127.0.0.1.

It is a server people run, and it gives no log-probabilities: its ``/v1/completions`` ignores
``echo`` and ``logprobs`` (it says so in its log) and refuses ``max_tokens=0`` with a 400. collect
must find both out by itself: the probe settles on ``max_tokens=1``, and the run stops after its
first requests with the server's missing field named, one line per role, instead of sending
every request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="transformers serve needs the test extra: pip install 'approxft[test,local]'")
pytest.importorskip("uvicorn", reason="transformers serve needs the test extra: pip install 'approxft[test,local]'")

from ingest.prepare.bpe import gpt2  # noqa: E402
from tests.helpers import free_port, run_cli  # noqa: E402
from tests.tiny_models import make_tiny_gpt2  # noqa: E402

N_REQUESTS = 12


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory):
    """``transformers serve MODEL`` on a free localhost port; yields (base URL, model name)."""
    model = make_tiny_gpt2(tmp_path_factory.mktemp("tserve") / "tiny", seed=3)
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(model), "--host", "127.0.0.1",
               "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("transformers serve did not start:\n" + "".join(log[-20:])) from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(model), log
    finally:
        proc.kill()
        proc.wait()


def test_collect_finds_a_server_without_logprobs_out_and_stops_with_its_reason(transformers_serve, tmp_path, capsys):
    url, model, log = transformers_serve
    bpe = gpt2()
    words = "And the king said unto them , go ye into the city and buy bread".split()
    with open(tmp_path / "requests.jsonl", "w") as f:
        for i in range(N_REQUESTS):
            prompt = " ".join(words[i % 5:] + words[:i % 5])
            f.write(json.dumps({"request_index": i, "split": "val", "story": "s", "tokens": bpe.api_tokens(bpe.encode(prompt)),
                                "params": {"prompt": prompt, "logprobs": 5, "echo": True}}) + "\n")
    (tmp_path / "models.toml").write_text(
        f'[defaults]\nbase_url = "{url}"\nconcurrency = 1\n'
        + "".join(f'[models.{role}]\nmodel = "{model}"\n' for role in ("big", "tuned", "untuned")))
    done = run_cli(capsys, "collect", "--models", tmp_path / "models.toml", "--corpus", tmp_path / "requests.jsonl",
                   "--out", tmp_path / "run")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 3, done.stderr  # one line per role
    for role, line in zip(("big", "tuned", "untuned"), errors, strict=True):
        assert line.startswith(f"approxft collect: error: {role} main: stopped: the first 8 requests all failed the same "
                               "way (invalid_response): field 'choices[0].logprobs'"), line
    summary = json.loads(done.stdout)
    for role in ("big", "tuned", "untuned"):
        result = summary["roles"][role]
        # The probe: 0 refused (its 400 named), so 1; recorded for the next run.
        assert result["echo_max_tokens"]["value"] == 1 and "max_tokens=0 answered HTTP 400" in result["echo_max_tokens"]["probe"]
        assert json.loads((tmp_path / "run" / "raw" / f"{role}.endpoint.json").read_text())["echo_max_tokens"] == 1
        assert result["main"]["failed"] == 8 and result["main"]["completed"] == 0  # not all 12 were sent
    assert any("Ignoring unsupported fields" in line and "logprobs" in line for line in log)  # the server's own word

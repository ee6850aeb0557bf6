"""A Ray address that cannot be used is one clear error line, quickly, and no cluster is started."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

from engine.distributed import CONNECT_TIMEOUT  # noqa: E402
from tests.helpers import ROLE_ARGS, free_port, run_cli  # noqa: E402


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_an_unreachable_address_is_one_line_at_once(capsys, golden_dataset, command):
    port = free_port()
    began = time.monotonic()
    out = run_cli(capsys, command, golden_dataset.store.path, *ROLE_ARGS, "--ray", f"127.0.0.1:{port}")
    assert time.monotonic() - began < CONNECT_TIMEOUT + 5
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"approxft {command}: error: Ray cluster 127.0.0.1:{port} cannot be reached (Connection "
                          "refused); start one with `ray start --head` and pass its address (HOST:6379)\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--ray", "local:none"], "Ray address 'local:none': expected local:N with N a positive number of CPUs"),
    (["--ray", "127.0.0.1:port"], "Ray address '127.0.0.1:port': expected HOST:PORT, auto, local or local:N"),
    (["--ray-workers", "2"], "--ray-workers needs --ray ADDRESS"),
])
def test_malformed_ray_options_are_one_line(capsys, golden_dataset, args, message):
    out = run_cli(capsys, "eval", golden_dataset.store.path, *ROLE_ARGS, *args)
    assert out.returncode == 1 and out.stderr == f"approxft eval: error: {message}\n"

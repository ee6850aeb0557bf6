"""``approxft serve``'s HTTP server built in-process (``make_server``) over a tiny random GPT-2
with the real GPT-2 vocabulary, on a free localhost port, in a thread; shut down after the module."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
pytest.importorskip("transformers", reason="needs the local extra: pip install 'approxft[local]'")

from ingest.serve.params import Limits  # noqa: E402
from tests.tiny_models import make_tiny_gpt2  # noqa: E402

MODEL = "tiny"
LIMITS = Limits(max_body_bytes=64 * 1024, max_prompts=8, max_n=4, max_stops=4)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("serve") / MODEL, seed=7)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from ingest.serve.model import load_model

    return load_model(tiny_dir, MODEL)


@pytest.fixture(scope="module")
def base_url(tiny_model) -> Iterator[str]:
    """``http://127.0.0.1:PORT/v1`` of a server over the tiny model, within ``LIMITS``."""
    with running([tiny_model], LIMITS) as url:
        yield url


@contextmanager
def running(models: list[Any], limits: Limits = Limits()) -> Iterator[str]:
    """``make_server`` over ``models`` in a thread; yields its base URL; always shut down."""
    from ingest.serve.http import make_server

    server = make_server(models, port=0, limits=limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def raw_request(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection with http.client: status, headers, body. ``headers``
    are sent as given (no Content-Length is added)."""
    host = urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post_json(url: str, path: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` as JSON; the status and the parsed answer."""
    data = json.dumps(body).encode()
    status, _, answer = raw_request(url, "POST", path, data, {"Content-Type": "application/json", "Content-Length": str(len(data))})
    return status, json.loads(answer)

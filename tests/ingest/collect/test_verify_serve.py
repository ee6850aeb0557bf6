"""``collect --verify`` and the probes against an honest server nobody faked: the real ``approxft
serve`` over a tiny random GPT-2. Echo and next-token requests agree to float32 rounding, the
server takes token ids, and echo takes ``max_tokens=0``."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO
from tests.ingest.collect.fake_server import config, run_collect

pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
pytest.importorskip("transformers", reason="needs the local extra: pip install 'approxft[local]'")

from ingest.prepare.corpus import Document, prepare, write_prepared  # noqa: E402
from ingest.prepare.tokenizer import local_tokenizer  # noqa: E402
from tests.tiny_models import make_tiny_gpt2, served  # noqa: E402


def test_approxft_serve_passes_verify_and_takes_token_ids(tmp_path, capsys):
    model = make_tiny_gpt2(tmp_path / "tiny", seed=3, n_layer=1)
    docs = [Document(f"doc {i}", f"The {word} ran.\n\nIt slept, then the {word} woke.") for i, word in enumerate(["fox", "owl", "elk", "ram"])]
    manifest = write_prepared(tmp_path / "run", prepare(docs, local_tokenizer("gpt2"), chunk_tokens=10, finetune_share=0.2),
                              logprobs=4, tokenizer="gpt2")
    with served({"big": model, "tuned": model, "untuned": model}, cwd=REPO) as url:
        roles = {"big": {}, "tuned": {"mode": "prompt_logprobs"}, "untuned": {"mode": "next_token"}}
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", url, roles, timeout=60.0), manifest,
                                           "--verify", "8")
    assert status == 0, err
    for role in ("big", "tuned"):
        verify = summary["roles"][role]["verify"]
        assert verify["passed"] and verify["compared"] + verify["skipped"] == 8 and verify["compared"] >= 6, verify
        assert verify["largest_difference"] < 1e-4
        assert summary["roles"][role]["context_prompts"]["sent_as"] == "token ids"
    assert summary["roles"]["big"]["echo_max_tokens"] == {"value": 0, "probe": "max_tokens=0 answered without generating"}
    untuned = summary["roles"]["untuned"]
    assert untuned["verify"] == {"skipped": "next_token mode has no echo request to compare with"}
    assert untuned["context_prompts"]["sent_as"] == "token ids" and untuned["main"]["dropped_positions"] == 0
    record = json.loads((manifest.parent / "raw" / "untuned.endpoint.json").read_text())
    assert record["context_prompts"] == "token ids"

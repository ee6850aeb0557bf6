"""``approxft serve``'s Batch API through the real openai client: every input line is answered
(a line that is not a request, a refused request, a model that fails), and the batch always ends."""

from __future__ import annotations

import dataclasses
import json
import time

from tests.ingest.serve.conftest import MODEL, running


class FailingModule:
    """A causal LM whose forward pass fails (a fault injected in the one place a model runs)."""

    def forward(self, input_ids, use_cache=False, past_key_values=None):  # the signature serve inspects
        raise AssertionError("not called directly")

    def __call__(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def line(custom_id: str, **body) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
                       "body": {"model": MODEL, "prompt": "Hello", "max_tokens": 1, **body}}).encode()


def test_every_line_is_answered_and_the_batch_ends(tiny_model):
    import openai

    failing = dataclasses.replace(tiny_model, name="failing", model=FailingModule())
    lines = [
        line("good-1"),
        b'{"custom_id": "not-utf8", "body": {"prompt": "\xff\xfe"}}',  # not UTF-8
        line("huge-temperature", temperature=10**400),
        b'{"custom_id": "long", "body": {"max_tokens": ' + b"9" * 5000 + b"}}",  # an integer json.loads refuses
        b"[1, 2]",
        line("model-fails", model="failing"),
        line("good-2", echo=True, logprobs=1),
    ]
    with running([tiny_model, failing]) as url:
        client = openai.OpenAI(api_key="unused", base_url=url, max_retries=0)
        upload = client.files.create(file=("in.jsonl", b"\n".join(lines) + b"\n"), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        while batch.status == "in_progress" and time.monotonic() < deadline:
            time.sleep(0.05)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        output = [json.loads(r) for r in client.files.content(batch.output_file_id).text.splitlines()]
        errors = [json.loads(r) for r in client.files.content(batch.error_file_id).text.splitlines()]
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 2, 5)
    assert [r["custom_id"] for r in output] == ["good-1", "good-2"]
    assert output[1]["response"]["body"]["choices"][0]["logprobs"]["tokens"][0] == "Hello"
    by_id = {r["custom_id"]: r for r in errors}
    unreadable = [r for r in errors if r["custom_id"] is None]
    assert [r["error"]["message"] for r in unreadable] == [f"line {n} is not a batch request" for n in (2, 4, 5)]
    refused = by_id["huge-temperature"]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "temperature"
    failed = by_id["model-fails"]["response"]
    assert failed["status_code"] == 500 and failed["body"]["error"]["message"] == "internal error: RuntimeError"


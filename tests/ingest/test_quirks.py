"""Every quirk ingest tolerates is counted, per model, in store.json and in the summary
``approxft ingest`` prints: a crafted file with a known number of each."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from ingest import ingest_responses, open_store
from ingest.quirks import QUIRKS, summary
from tests.helpers import REPO
from tests.ingest.synthetic import TOKENS, manifest, response, write_jsonl


def crafted() -> list[dict[str, Any]]:
    """The synthetic responses (k = 2), each quirk planted a known number of times."""
    bodies = [response(t, "m") for t in TOKENS]
    first, third = (b["choices"][0]["logprobs"] for b in (bodies[0], bodies[2]))
    first["token_logprobs"][1] = -9999  # unobserved: 1
    first["top_logprobs"][2][" o20"] = None  # unobserved: 2, and list 2 re-sorted (1)
    first["top_logprobs"][3] = dict(reversed(first["top_logprobs"][3].items()))  # re-sorted: 2
    third["top_logprobs"][1][" h"] = third["token_logprobs"][1]  # the actual token appended: 1
    third["top_logprobs"][2] |= {" q": -8.0, " r": -8.5}  # a list of 4 cut to 2: 1
    third["top_logprobs"][3][""] = -9.0  # an entry with no name, dropped: 1
    for body in bodies:  # one generated token per response: 3
        logprobs = body["choices"][0]["logprobs"]
        for name, value in (("tokens", " gen"), ("token_logprobs", -0.5), ("top_logprobs", {" gen": -0.5}),
                            ("text_offset", 99)):
            logprobs[name].append(value)
    return bodies


EXPECTED = dict.fromkeys(QUIRKS, 0) | {
    "unobserved": 2, "resorted": 2, "unnamed": 1, "appended": 1, "cut": 1, "generated": 3, "by_content": 2,
}


def test_counts_on_a_crafted_file(tmp_path):
    bodies = crafted()
    bodies[0], bodies[2] = bodies[2], bodies[0]  # two lines out of order
    requests = manifest(tmp_path, content="prompt")
    store = ingest_responses([write_jsonl(tmp_path / "m.jsonl", bodies)], requests=requests, out=tmp_path / "s")
    assert open_store(store).quirks == {"m": EXPECTED}
    # Batch-shaped, without the prompt text: failed, repeated and unasked lines; order unchecked.
    wrapped = [{"custom_id": f"request-{i}", "response": {"status_code": 200, "body": b}, "error": None}
               for i, b in enumerate(crafted())]
    wrapped += [
        {"custom_id": "request-1", "response": {"status_code": 500, "body": {}}, "error": None},
        {"custom_id": "request-2", "response": None, "error": {"message": "timeout"}},
        wrapped[0],
        {"custom_id": "request-7", "response": {"status_code": 200, "body": bodies[1]}, "error": None},
    ]
    requests = manifest(tmp_path)
    store = ingest_responses([write_jsonl(tmp_path / "w.jsonl", wrapped)], requests=requests, out=tmp_path / "s")
    assert open_store(store).quirks == {"m": EXPECTED | {
        "by_content": 0, "order_only": 3, "failed_lines": 2, "repeated_lines": 1, "unasked_lines": 1}}


def test_summary_lines():
    assert summary({"a": EXPECTED, "b": dict.fromkeys(QUIRKS, 0)}) == [
        f"a: 2 {QUIRKS['by_content']}", f"a: 3 {QUIRKS['generated']}", f"a: 2 {QUIRKS['unobserved']}",
        f"a: 2 {QUIRKS['resorted']}", f"a: 1 {QUIRKS['unnamed']}", f"a: 1 {QUIRKS['appended']}", f"a: 1 {QUIRKS['cut']}",
        "b: nothing tolerated",
    ]


def test_the_cli_prints_the_counts(tmp_path):
    requests = manifest(tmp_path)
    clean = [response(t, "clean") for t in TOKENS]
    files = [write_jsonl(tmp_path / "m.jsonl", crafted()), write_jsonl(tmp_path / "clean.jsonl", clean)]
    done = subprocess.run([sys.executable, "-m", "engine", "ingest", *map(str, files), "--requests", str(requests),
                           "--out", str(tmp_path / "s")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "s")
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 's'} in ") and lines[0].endswith("tolerated in the responses (store.json, quirks):")
    assert lines[1:] == [f"  {line}" for line in summary(open_store(tmp_path / "s").quirks)]
    assert f"  m: 3 {QUIRKS['order_only']}" in lines and f"  clean: 3 {QUIRKS['order_only']}" in lines
    assert f"  m: 1 {QUIRKS['cut']}" in lines and not any(line.startswith("  clean: 1") for line in lines)

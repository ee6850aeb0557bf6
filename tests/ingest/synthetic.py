"""Small handwritten response files and manifests that ingest tests build stores from."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from ingest.tokens import token_bytes

# Three requests; the middle one has a single token and scores nothing.
TOKENS = [["A", " b", " c", " d"], ["E"], ["G", " h", "bytes:\\xe2\\x80", "bytes:\\x99"]]


def response(tokens: list[str], model: str | None, *, k: int = 2) -> dict[str, Any]:
    """A deterministic echo response: the target's lp is -(p+1), and its top list holds k
    other tokens above it (so the target is always outside the top k); for k <= 5 the list and
    the target hold at most 0.99 of the probability, as a distribution must."""
    lps: list[Any] = [None] + [-(p + 1.0) for p in range(1, len(tokens))]
    top: list[Any] = [None] + [
        {f" o{p}{j}": -(p + 1) + 0.5 / (j + 1) for j in range(k)} for p in range(1, len(tokens))
    ]
    lps, top = lps[: len(tokens)], top[: len(tokens)]
    # Character offsets into the text, a partial character's bytes at the character they begin.
    offsets = [len(b"".join(map(token_bytes, tokens[:i])).decode("utf-8", "ignore")) for i in range(len(tokens))]
    out: dict[str, Any] = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text(tokens), "logprobs": {
            "tokens": list(tokens), "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}}],
        "usage": {"prompt_tokens": len(tokens), "completion_tokens": 0, "total_tokens": len(tokens)},
    }
    if model is not None:
        out["model"] = model
    return out


def text(tokens: list[str]) -> str:
    """The text API tokens spell."""
    return b"".join(map(token_bytes, tokens)).decode("utf-8")


def write_jsonl(path: Path, records: list[Any], *, gz: bool = False) -> Path:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def manifest(tmp_path: Path, *, logprobs: int | None = 2, n: int = len(TOKENS), content: str | None = None) -> Path:
    """The manifest of ``TOKENS`` (its first ``n``); ``content`` "prompt" gives each request's
    text (``params.prompt``), "tokens" its tokens (``tokens``), None neither."""
    params = {"echo": True, "max_tokens": 0} | ({"logprobs": logprobs} if logprobs else {})
    lines = [{"request_index": r, "split": "val" if r < 2 else "test", "story": f"S{r // 2}", "params": dict(params)}
             for r in range(n)]
    for line, tokens in zip(lines, TOKENS, strict=False):
        if content == "prompt":
            line["params"]["prompt"] = text(tokens)
        elif content == "tokens":
            line["tokens"] = tokens
    return write_jsonl(tmp_path / "requests.jsonl", lines)


def dataset(tmp_path: Path, models=("small", "big"), **kw) -> tuple[list[Path], Path]:
    files = [write_jsonl(tmp_path / f"{m}.jsonl", [response(t, m) for t in TOKENS]) for m in models]
    return files, manifest(tmp_path, **kw)


def as_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A legacy echo response in chat's shape: every token after the first as generated."""
    lp = body["choices"][0]["logprobs"]

    def item(token: str, value: float) -> dict[str, Any]:
        raw = token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": value, "bytes": list(raw)}

    content = [{**item(t, lp["token_logprobs"][p]), "top_logprobs": [item(x, v) for x, v in lp["top_logprobs"][p].items()]}
               for p, t in enumerate(lp["tokens"][1:], start=1)]
    return {"object": "chat.completion", "model": body["model"], "choices": [{"index": 0, "logprobs": {"content": content}}]}

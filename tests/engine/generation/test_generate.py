"""``approxft generate`` end to end, no mocks: ``approxft serve`` over tiny random GPT-2 models,
the real openai client, fixed seeds; the transcript replays to the same tokens, and each step's
blend is the engine's (``engine.generation.next_token``, checked against evaluation in test_next_token.py).
Endpoints that misbehave (no logprobs, impossible lists) are ``tests.http_fakes.HttpServer``s."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, run_cli
from tests.http_fakes import HttpServer, Reply, Request, json_reply

pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
pytest.importorskip("transformers", reason="needs the local extra: pip install 'approxft[local]'")

from engine.generation.generate import parse_next_token  # noqa: E402
from engine.generation.next_token import blend_next_token  # noqa: E402
from engine.masks import Mask  # noqa: E402
from ingest.prepare.bpe import GPT2_VOCAB_SIZE  # noqa: E402
from ingest.tokens import token_bytes  # noqa: E402
from tests.tiny_models import make_tiny_gpt2, served  # noqa: E402

ROLES = {"big": 0, "tuned": 1, "untuned": 2}
REFERENCE = "big-tuned"  # a fourth model, served beside the three roles
PROMPT = "Once upon a time there was"




@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen-models")
    dirs = {role: make_tiny_gpt2(root / role, seed=seed, n_layer=1, n_embd=16, n_positions=128)
            for role, seed in {**ROLES, REFERENCE: 3}.items()}
    # The same weights with a tokenizer that adds a leading space: other token strings for the same text.
    from transformers import AutoTokenizer

    odd = Path(shutil.copytree(dirs["untuned"], root / "odd"))
    tok = AutoTokenizer.from_pretrained(odd, local_files_only=True)
    tok.backend_tokenizer.pre_tokenizer = __import__("tokenizers").pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.save_pretrained(odd)
    return {**dirs, "odd": odd}


@pytest.fixture(scope="module")
def server(models):
    """``approxft serve`` on a free port; yields its base URL; always killed."""
    with served(models, cwd=REPO) as url:
        yield url


def write_config(path: Path, url: str, untuned: str = "untuned", k: int = 8) -> Path:
    names = {"big": "big", "tuned": "tuned", "untuned": untuned, REFERENCE: REFERENCE}
    lines = ["[defaults]", f'base_url = "{url}"', "retries = 0", "timeout = 30", f"logprobs = {k}"]
    for role, name in names.items():
        lines += [f"[models.{role}]", f'model = "{name}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tuned(path: Path, estimator: str = "zipf-tail", models: dict | None = None) -> Path:
    best = {"parametrization": "loglinear", "weights": [1.0, 1.5, -1.5], "estimator": estimator, "estimate": True}
    if models is not None:
        best["models"] = models
    path.write_text(json.dumps({"best": best, "method": "newton"}))
    return path


def test_generate_streams_records_and_replays(server, models, tmp_path, capsys):
    config, tuned = write_config(tmp_path / "models.toml", server), write_tuned(tmp_path / "tuned.json")
    transcript = tmp_path / "gen.json"
    args = ["generate", "--models", config, "--params", tuned, "--prompt", PROMPT, "--max-tokens", 5,
            "--temperature", 0.9, "--top-p", 0.95, "--seed", 7, "--compare", "--transcript", transcript]
    done = run_cli(capsys, *args)
    assert done.returncode == 0, done.stderr
    record = json.loads(transcript.read_text(encoding="utf-8"))
    assert record["prompt"] == PROMPT and 1 <= len(record["tokens"]) <= 5 and "never sampled" in record["sampling"]
    text = b"".join(token_bytes(t) for t in record["tokens"] if t != "<|endoftext|>").decode("utf-8", errors="replace")
    assert record["text"] == text and done.stdout.startswith(PROMPT + text)
    assert "--- big alone (same seed) ---" in done.stdout and record["compare"]["tokens"]

    # Every step: k entries per model, the sampled token among the blended candidates, and the
    # recorded blended values those of engine.generation.next_token on the recorded lists.
    for step in record["steps"]:
        lists = {r: {t: v for t, v in lst} for r, lst in step["lists"].items()}
        assert all(len(lst) == 8 for lst in lists.values())
        nt = blend_next_token({r: lists[r] for r in ROLES}, record["weights"], "zipf-tail", vocab_size=GPT2_VOCAB_SIZE)
        by_token = dict(zip(nt.tokens, nt.logprob, strict=True))
        for cand in step["top"]:
            assert cand["blend_logprob"] == pytest.approx(by_token[cand["token"]], abs=1e-9)
        assert step["token"] in by_token and 0 < step["pseudo_mass"] < 1

    # The first step's big list is the big model's own top-k after the prompt.
    import torch
    from transformers import AutoModelForCausalLM

    from ingest.prepare.bpe import gpt2

    big = AutoModelForCausalLM.from_pretrained(models["big"], local_files_only=True).eval()
    with torch.no_grad():
        lp = torch.log_softmax(big(torch.tensor([gpt2().encode(PROMPT)])).logits[0, -1].double(), dim=-1)
    values = torch.topk(lp, 8).values.numpy()
    got = np.array([v for _, v in record["steps"][0]["lists"]["big"]])
    np.testing.assert_allclose(got, values, atol=1e-4)

    replayed = run_cli(capsys, "generate", "--replay", transcript)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["identical"] is True

    again = run_cli(capsys, *args[:-1], tmp_path / "again.json")  # same seed, same servers: same text
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert second["tokens"] == record["tokens"] and second["compare"]["tokens"] == record["compare"]["tokens"]

    # A recording whose lists no longer lead to its tokens is caught: the first sampled token
    # made improbable under every model.
    tampered = json.loads(json.dumps(record))
    chosen = tampered["steps"][0]["token"]
    for lst in tampered["steps"][0]["lists"].values():
        for pair in lst:
            pair[1] = -60.0 if pair[0] == chosen else pair[1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tampered))
    differs = run_cli(capsys, "generate", "--replay", bad)
    assert differs.returncode == 1 and "replay differs from the recording (blend, step 0" in differs.stderr


def test_generate_refuses_bad_input(server, tmp_path, capsys):
    config, tuned = write_config(tmp_path / "models.toml", server), write_tuned(tmp_path / "tuned.json")
    common = ["generate", "--models", config, "--max-tokens", 2]
    other = write_tuned(tmp_path / "other.json", models={"big": "davinci-002", "tuned": "tuned", "untuned": "untuned"})
    cases = {
        "tuned for other models": [*common, "--params", other, "--prompt", PROMPT],
        "prompt is empty": [*common, "--params", tuned, "--prompt", ""],
        "tokenizer mismatch": ["generate", "--models", write_config(tmp_path / "odd.toml", server, untuned="odd"),
                               "--params", tuned, "--prompt", PROMPT],
        "needs a calibration fit": [*common, "--params", write_tuned(tmp_path / "cal.json", "calibrated-tail"), "--prompt", PROMPT],
        "need --logprobs >= 1": [*common, "--params", tuned, "--prompt", PROMPT, "--logprobs", 0],
        "and --seed >= 0, got 8, 50257 and -1": [*common, "--params", tuned, "--prompt", PROMPT, "--seed", -1],
        "--vocab-size >= 1": [*common, "--params", tuned, "--prompt", PROMPT, "--vocab-size", 0],
        "--vocab-size must be at most 2147483647": [*common, "--params", tuned, "--prompt", PROMPT, "--vocab-size", 10**400],
        "field 'weights' must be three finite numbers (or give field 'terms'), got [1, 1, 1000": [
            *common, "--params", write_huge_weights(tmp_path / "huge.json"), "--prompt", PROMPT],
        "was tuned for other models: ": [*common, "--params", write_terms(tmp_path / "far.json", {"nowhere": 1.0}),
                                         "--prompt", PROMPT],
        "needs a calibration fit for big, tuned, untuned, big-tuned (in this order)": [
            *common, "--params", write_terms(tmp_path / "cal4.json", FOUR_TERMS, estimator="calibrated-tail"),
            "--prompt", PROMPT],
    }
    for message, args in cases.items():
        transcript = tmp_path / f"{len(message)}.json"
        done = run_cli(capsys, *args, "--transcript", transcript)
        assert done.returncode == 1 and message in done.stderr, (message, done.stderr)
        assert not transcript.exists()


FOUR_TERMS = {"big": 1.0, "tuned": 1.5, "untuned": -1.5, REFERENCE: 0.5}
ALPHA = 0.8


def write_terms(path: Path, terms: dict[str, float], *, estimator: str = "zipf-tail", mask: dict | None = None) -> Path:
    """A tune file whose best blend is ``terms`` (model -> weight), as ``approxft tune --format json`` writes one."""
    best = {"terms": [{"model": m, "weight": w} for m, w in terms.items()], "weights": list(terms.values()),
            "models": None, "estimator": estimator, "mask": mask}
    path.write_text(json.dumps({"best": best, "method": "newton"}))
    return path


def test_a_four_model_masked_blend_generates_and_replays(server, tmp_path, capsys):
    mask = {"rule": "relative", "model": "big", "value": ALPHA, "floor": None, "targets_outside": {"val": 0}}
    tuned = write_terms(tmp_path / "four.json", FOUR_TERMS, mask=mask)
    transcript = tmp_path / "gen4.json"
    done = run_cli(capsys, "generate", "--models", write_config(tmp_path / "models.toml", server), "--params", tuned,
                   "--prompt", PROMPT, "--max-tokens", 6, "--seed", 5, "--compare", "--transcript", transcript)
    assert done.returncode == 0, done.stderr
    assert "from big + 1.5*tuned - 1.5*untuned + 0.5*big-tuned (estimator zipf-tail, mask relative:big=0.8)" in done.stderr
    record = json.loads(transcript.read_text(encoding="utf-8"))
    assert [t["model"] for t in record["terms"]] == list(FOUR_TERMS) and record["mask"] == {
        "rule": "relative", "model": "big", "value": ALPHA}
    assert record["compare"]["model"] == "big" and set(record["compare"]["steps"][0]["lists"]) == {"big"}
    dropped = 0
    for step in record["steps"]:
        lists = {m: {t: v for t, v in lst} for m, lst in step["lists"].items()}
        assert list(lists) == list(FOUR_TERMS) and all(len(lst) == 8 for lst in lists.values())
        nt = blend_next_token(lists, list(FOUR_TERMS.values()), "zipf-tail", vocab_size=GPT2_VOCAB_SIZE,
                              mask=Mask("relative", "big", ALPHA))
        # The rule read independently: a token big lists below max + log(alpha) is dropped, one at
        # or above it kept; dropped ones have no blended value and are never sampled.
        cut = max(lists["big"].values()) + math.log(ALPHA)
        by_token = dict(zip(nt.tokens, nt.logprob, strict=True))
        for token, value in lists["big"].items():
            assert (by_token[token] > -math.inf) == (value >= cut), token
            dropped += value < cut
        assert by_token[step["token"]] > -math.inf
        for cand in step["top"]:
            want = by_token[cand["token"]]
            assert cand["blend_logprob"] == (None if want == -math.inf else pytest.approx(want, abs=1e-9))
            assert cand["models"] == {m: lists[m].get(cand["token"]) for m in FOUR_TERMS}
    assert dropped > 0  # the mask did drop listed tokens
    replayed = run_cli(capsys, "generate", "--replay", transcript)
    assert replayed.returncode == 0 and json.loads(replayed.stdout) == {
        "replayed": {"blend": len(record["tokens"]), "compare": len(record["compare"]["tokens"])}, "identical": True}


def recorded(server: str, tmp_path: Path, capsys, *, max_tokens: int, seed: int) -> tuple[Path, dict]:
    """A run of the three-role blend with --compare, recorded: the transcript's path and content."""
    config, tuned = write_config(tmp_path / "models.toml", server), write_tuned(tmp_path / "tuned.json")
    transcript = tmp_path / "gen.json"
    done = run_cli(capsys, "generate", "--models", config, "--params", tuned, "--prompt", PROMPT, "--max-tokens",
                   max_tokens, "--seed", seed, "--compare", "--transcript", transcript)
    assert done.returncode == 0, done.stderr
    return transcript, json.loads(transcript.read_text(encoding="utf-8"))


def test_a_version_1_transcript_still_replays(server, tmp_path, capsys):
    """Transcripts written before blends had terms keyed their lists by role and named the models
    in a role map; they replay as the same blend."""
    record = recorded(server, tmp_path, capsys, max_tokens=4, seed=2)[1]
    names = {"big": "big-model", "tuned": "tuned-model", "untuned": "untuned-model"}  # roles and models differ
    old = {key: record[key] for key in ("format", "prompt", "weights", "estimator", "calibration", "vocab_size",
                                        "temperature", "top_p", "seed", "tokens")}
    old |= {"version": 1, "models": names, "steps": [{"lists": step["lists"]} for step in record["steps"]],
            "compare": {"model": names["big"], "tokens": record["compare"]["tokens"],
                        "steps": [{"lists": step["lists"]} for step in record["compare"]["steps"]]}}
    (tmp_path / "v1.json").write_text(json.dumps(old))
    replayed = run_cli(capsys, "generate", "--replay", tmp_path / "v1.json")
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"] is True, replayed.stderr
    old["steps"][0]["lists"] = {names[r]: lst for r, lst in old["steps"][0]["lists"].items()}  # keyed by model: not v1
    (tmp_path / "v1.json").write_text(json.dumps(old))
    wrong = run_cli(capsys, "generate", "--replay", tmp_path / "v1.json")
    assert wrong.returncode == 1 and "field 'steps[0].lists' has no list for big, tuned, untuned" in wrong.stderr


def write_huge_weights(path: Path) -> Path:
    """A tuned file whose third weight is 10**400: json.loads reads it exactly, float() overflows."""
    write_tuned(path)
    record = json.loads(path.read_text())
    record["best"]["weights"] = [1, 1, 10**400]
    path.write_text(json.dumps(record))
    return path


def _set(path: str, value):
    """A tampering: set the JSON path ``a.b[0].c`` of a transcript to ``value`` (``DELETE`` removes it)."""
    def apply(record):
        *parents, last = [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]
        node = record
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return record
    return apply


DELETE = object()
BIG_LIST = "steps[0].lists.big"
TAMPERED = {  # tampering -> what the one error line must name
    "format": (_set("format", "something-else"), "not an approxft generation transcript"),
    "version": (_set("version", 3), "'version'"),
    "terms missing": (_set("terms", DELETE), "'terms'"),
    "a term's weight NaN": (_set("terms[0].weight", float("nan")), "'terms[0]'"),
    "a term's model missing": (_set("terms[1].model", DELETE), "'terms[1]'"),
    "a model in two terms": (_set("terms[1].model", "big"), "'terms[1]': 'big' is in two terms"),
    "mask junk": (_set("mask", {"rule": "top-p"}), "'mask'"),
    "mask on another model": (_set("mask", {"rule": "top-p", "model": "nowhere", "value": 0.5}), "'mask'"),
    "weights text": (_set("weights", ["1", 1, 1]), "'weights'"),
    "weights NaN": (_set("weights", [float("nan"), 1, 1]), "'weights'"),
    "weights two": (_set("weights", [1, 1]), "'weights'"),
    "weights huge": (_set("weights", [1, 1, 10**400]), "'weights'"),
    "estimator unknown": (_set("estimator", "magic-tail"), "'estimator'"),
    "estimator number": (_set("estimator", 3), "'estimator'"),
    "calibration junk": (_set("calibration", {"k": "x"}), "'calibration'"),
    "calibration shape": (_set("calibration", {"k": 8, "drop": [[[0.0]]], "weight": [[1.0, 0.0]]}), "'calibration'"),
    "calibration huge": (_set("calibration", {"k": 8, "drop": [[[10**400]], [[0.0]]], "weight": [[1.0], [1.0]]}), "'calibration'"),
    "calibration booleans": (_set("calibration", {"k": 8, "drop": [[[False]], [[0.0]]], "weight": [[True], [1.0]]}), "'calibration'"),
    "calibrated-tail without a fit": (_set("estimator", "calibrated-tail"), "'calibration'"),
    "vocab_size zero": (_set("vocab_size", 0), "'vocab_size'"),
    "vocab_size text": (_set("vocab_size", "50257"), "'vocab_size'"),
    "vocab_size huge": (_set("vocab_size", 10**400), "'vocab_size'"),
    "temperature negative": (_set("temperature", -1), "'temperature'"),
    "temperature NaN": (_set("temperature", float("nan")), "'temperature'"),
    "temperature huge": (_set("temperature", 10**400), "'temperature'"),
    "top_p zero": (_set("top_p", 0), "'top_p'"),
    "top_p above one": (_set("top_p", 1.5), "'top_p'"),
    "seed negative": (_set("seed", -1), "'seed'"),
    "seed fraction": (_set("seed", 2.5), "'seed'"),
    "seed boolean": (_set("seed", True), "'seed'"),
    "steps not a list": (_set("steps", {"0": 1}), "'steps'"),
    "step not an object": (_set("steps[0]", 7), "'steps[0].lists'"),
    "a role missing": (_set("steps[0].lists.untuned", DELETE), "'steps[0].lists' has no list for untuned"),
    "an empty list": (_set(BIG_LIST, []), f"'{BIG_LIST}'"),
    "an entry not a pair": (_set(f"{BIG_LIST}[0]", "x"), f"'{BIG_LIST}[0]'"),
    "an empty token": (_set(f"{BIG_LIST}[0]", ["", -1.0]), f"'{BIG_LIST}[0]'"),
    "a null token": (_set(f"{BIG_LIST}[0]", [None, -1.0]), f"'{BIG_LIST}[0]'"),
    "a value as text": (_set(f"{BIG_LIST}[0]", ["x", "-0.5"]), f"'{BIG_LIST}[0]'"),
    "a positive value": (_set(f"{BIG_LIST}[0]", ["x", 3.0]), f"'{BIG_LIST}[0]'"),
    "a NaN value": (_set(f"{BIG_LIST}[0]", ["x", float("nan")]), f"'{BIG_LIST}[0]'"),
    "a huge value": (_set(f"{BIG_LIST}[0]", ["x", -(10**400)]), f"'{BIG_LIST}[0]'"),
    "a boolean value": (_set(f"{BIG_LIST}[0]", ["x", False]), f"'{BIG_LIST}[0]'"),
    "a duplicate token": (lambda r: _set(f"{BIG_LIST}[1]", list(r["steps"][0]["lists"]["big"][0]))(r), f"'{BIG_LIST}[1]'"),
    "tokens short": (lambda r: _set("tokens", r["tokens"][:-1])(r), "'tokens'"),
    "tokens not strings": (lambda r: _set("tokens", [1] * len(r["tokens"]))(r), "'tokens'"),
    "compare not an object": (_set("compare", [1]), "'compare'"),
    "compare without big": (_set("compare.steps[0].lists.big", DELETE), "'compare.steps[0].lists' has no list for big"),
    "every value impossible": (lambda r: [pair.__setitem__(1, float("-inf")) for lst in r["steps"][0]["lists"].values()
                                          for pair in lst] and r, "no candidate has a finite blended probability"),
}


def test_a_tampered_transcript_is_one_clear_error(server, tmp_path, capsys):
    transcript, record = recorded(server, tmp_path, capsys, max_tokens=3, seed=3)
    bad = tmp_path / "bad.json"
    for name, (tamper, expected) in TAMPERED.items():
        bad.write_text(json.dumps(tamper(json.loads(json.dumps(record)))), encoding="utf-8")
        out = run_cli(capsys, "generate", "--replay", bad)  # an uncaught exception would fail the test here
        assert out.returncode == 1 and out.stdout == "", (name, out)
        assert out.stderr.startswith(f"approxft generate: error: {bad}: ") and out.stderr.count("\n") == 1, (name, out.stderr)
        assert expected in out.stderr, (name, out.stderr)
    for name, text in {"not JSON": "{", "a list": "[1, 2]", "empty": "", "not UTF-8": b"\xff\xfe"}.items():
        bad.write_bytes(text if isinstance(text, bytes) else text.encode())
        out = run_cli(capsys, "generate", "--replay", bad)
        assert out.returncode == 1 and out.stderr.startswith(f"approxft generate: error: {bad}: "), (name, out.stderr)
        assert out.stderr.count("\n") == 1, (name, out.stderr)
    assert run_cli(capsys, "generate", "--replay", transcript).returncode == 0  # the original still replays


def fake_endpoint(top: dict | None) -> HttpServer:
    """Completions whose generation answers list ``top`` (None: no logprobs); echo answers name the
    same tokens for every model."""
    return HttpServer(endpoint_answer(top))


def endpoint_answer(top: dict | None) -> Callable[[Request], Reply]:
    """``fake_endpoint``'s answers."""
    def answer(request: Request) -> Reply:
        body = request.json()
        if body.get("echo"):
            logprobs = {"tokens": ["Once", " upon", "!"], "token_logprobs": [None, -1.0, -1.0], "top_logprobs": None,
                        "text_offset": [0, 4, 9]}
        else:
            logprobs = None if top is None else {"tokens": ["!"], "token_logprobs": [-1.0], "top_logprobs": [top],
                                                  "text_offset": [9]}
        return json_reply({"id": "x", "object": "text_completion", "created": 1, "model": body["model"],
                           "choices": [{"text": "!", "index": 0, "logprobs": logprobs, "finish_reason": "length"}]})
    return answer


def generate_from(tmp_path: Path, capsys, server: HttpServer, *more: object):
    config = write_config(tmp_path / "models.toml", server.url, k=2)
    tuned = write_tuned(tmp_path / "t.json", models={"big": "big", "tuned": "tuned", "untuned": "untuned"})
    return run_cli(capsys, "generate", "--models", config, "--params", tuned, "--prompt", "Once upon", "--max-tokens", 2, *more)


def test_an_endpoint_without_logprobs_is_a_clear_error(tmp_path, capsys):
    with fake_endpoint(None) as server:
        done = generate_from(tmp_path, capsys, server)
    assert done.returncode == 1 and "returned no top logprobs" in done.stderr, done.stderr
    with pytest.raises(ValueError, match="no choices"):
        parse_next_token({"choices": []}, model="big", k=5)
    assert parse_next_token({"choices": [{"logprobs": {"top_logprobs": [{"a": -2.0, "b": -0.5, "c": -9.0}]}}]},
                            model="big", k=2) == {"b": -0.5, "a": -2.0}


LIST = "choices[0].logprobs.top_logprobs[0]"
IMPOSSIBLE = {  # a generation answer's list -> the one error line's end
    "a positive value": ({"!": -1.0, "?": 0.7}, f"big: field '{LIST}['?']' is 0.7, above 0: not a log-probability"),
    "a null value": ({"!": -1.0, "?": None}, f"big: field '{LIST}['?']' is None: not observed"),
    "a NaN value": ({"!": -1.0, "?": float("nan")}, f"big: field '{LIST}['?']' is nan: not observed"),
    "a huge value": ({"!": -1.0, "?": -(10**400)}, f"big: field '{LIST}['?']' is -1000"),
    "a string value": ({"!": -1.0, "?": "-2"}, f"big: field '{LIST}['?']' is '-2', not a number"),
    "a boolean value": ({"!": -1.0, "?": False}, f"big: field '{LIST}['?']' is False, not a number"),
    "mass over 1": ({"!": math.log(0.6), "?": math.log(0.6)}, f"big: field '{LIST}' holds probability 1.2, more than 1"),
    "not an object": (["!", -1.0], f"big: field '{LIST}' is ['!', -1.0], not an object"),
}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_a_live_list_its_replay_would_refuse_is_one_clear_error(tmp_path, capsys, case):
    """The live run checks each list as ingest does (and as --replay does, at least): nothing is
    written that the replay refuses."""
    top, message = IMPOSSIBLE[case]
    with fake_endpoint(top) as server:
        done = generate_from(tmp_path, capsys, server, "--transcript", tmp_path / "gen.json")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done
    assert done.stderr.startswith(f"approxft generate: error: {message}") and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "gen.json").exists()


def test_a_live_answer_that_repeats_a_key_is_one_clear_error(tmp_path, capsys):
    # json.loads would keep the last of the two values: which one the server meant is unknown.
    honest = endpoint_answer({"!": -1.0, "?": -2.0})

    def answer(request: Request) -> Reply:
        status, kind, data = honest(request)
        return status, kind, data.replace(b'"?": -2.0', b'"?": -2.0, "?": -0.1')

    with HttpServer(answer) as server:
        done = generate_from(tmp_path, capsys, server)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"the answer is ambiguous: field '{LIST}' repeats the key '?'" in done.stderr, done.stderr


def test_what_a_live_run_records_its_replay_accepts(tmp_path, capsys):
    # Values ingest takes: -inf (no probability), a float-rounded certain 0, a list of mass 1.
    half = math.log(0.5)
    # An entry named "" (llama-cpp-python's bytes of a partial character) is dropped, never sampled.
    for top in ({"!": -0.05, "?": -math.inf, " x": -3.5}, {"!": 5e-5, "?": -30.0}, {"!": half, "?": half},
                {"!": -0.5, "": -1.5, "?": -2.5}):
        with fake_endpoint(top) as server:
            done = generate_from(tmp_path, capsys, server, "--transcript", tmp_path / "gen.json")
        assert done.returncode == 0, done.stderr
        replayed = run_cli(capsys, "generate", "--replay", tmp_path / "gen.json")
        assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"] is True, replayed.stderr

"""End to end, no mocks: ``approxft serve`` over three tiny random GPT-2 models, ``approxft collect``
through the real openai client, killed mid-run and resumed, then ingest and eval; each model's
perplexity from the store equals the perplexity computed from its own logits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ingest.prepare.bpe import GPT2_VOCAB_SIZE, gpt2
from tests.helpers import REPO, run_cli, write_corpus

pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
pytest.importorskip("transformers", reason="needs the local extra: pip install 'approxft[local]'")

from tests.tiny_models import make_tiny_gpt2, served  # noqa: E402

ROLES = {"big": 0, "tuned": 1, "untuned": 2}
CHUNK_TOKENS = 48


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {role: make_tiny_gpt2(root / role, seed=seed) for role, seed in ROLES.items()}


@pytest.fixture(scope="module")
def server(models):
    """``approxft serve`` on a free port; yields its base URL; always killed."""
    with served(models, cwd=REPO) as url:
        yield url


def write_config(path: Path, url: str, per_role: dict[str, dict] | None = None, **settings) -> Path:
    lines = ["[defaults]", f'base_url = "{url}"', "retries = 2", "backoff = 0.05", "timeout = 30"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    for role in ROLES:
        lines += [f"[models.{role}]", f'model = "{role}"', "price_per_mtok = 1.5"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in (per_role or {}).get(role, {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def direct_perplexity(model_dir: Path, manifest: Path) -> dict[str, float]:
    """exp(mean NLL) per split, from the model's logits over each chunk (GPT-2 ids of the
    bundled tokenizer; the first token of a chunk is not scored)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ingest.prepare.bpe import gpt2

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    bpe = gpt2()
    sums: dict[str, list[float]] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        ids = bpe.encode(record["params"]["prompt"])
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        nll = -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        total = sums.setdefault(record["split"], [0.0, 0])
        total[0] += float(nll.sum())
        total[1] += len(ids) - 1
    return {split: float(np.exp(s / n)) for split, (s, n) in sums.items()}


def test_collect_kill_resume_ingest_eval_matches_the_models_logits(server, models, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt")
    # Slow enough (rpm) that the kill lands mid-run.
    config = write_config(tmp_path / "models.toml", server, concurrency=2, rpm=240)
    out = tmp_path / "run"
    args = ["collect", "--models", config, "--corpus", corpus, "--out", out, "--chunk-tokens", CHUNK_TOKENS, "--logprobs", 5]

    dry = run_cli(capsys, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["roles"]
    n_requests = plan["big"]["main"]["requests"]
    assert n_requests >= 8 and plan["big"]["main"]["estimated_cost_usd"] > 0
    assert not out.exists(), "--dry-run writes nothing"

    proc = subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    big = out / "raw" / "big.jsonl"
    deadline = time.monotonic() + 120
    while not (big.exists() and big.read_bytes().count(b"\n") >= 3):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {role: len(raw_lines(out / "raw" / f"{role}.jsonl")) for role in ROLES}
    assert 3 <= before["big"] < n_requests, before

    resumed = run_cli(capsys, *args, "--calibration", 3, "--calibration-k", "all")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)["roles"]
    for role in ROLES:
        lines = raw_lines(out / "raw" / f"{role}.jsonl")
        ids = [line["custom_id"] for line in lines]
        assert len(ids) == n_requests and len(set(ids)) == n_requests, role  # nothing lost, nothing twice
        assert summary[role]["main"]["already_done"] == before[role]
        assert summary[role]["main"]["completed"] == n_requests - before[role]

    store = tmp_path / "store"
    ingested = run_cli(capsys, "ingest", *(out / "raw" / f"{role}.jsonl" for role in ROLES), "--requests", out / "requests.jsonl", "--out", store)
    assert ingested.returncode == 0, ingested.stderr
    evaluated = run_cli(capsys, "eval", store, "--big", "big", "--tuned", "tuned", "--untuned", "untuned", "--format", "json")
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)["models"]
    for role, directory in models.items():
        direct = direct_perplexity(directory, out / "requests.jsonl")
        for split in ("val", "test"):
            assert figures[role][split] == pytest.approx(direct[split], rel=2e-6), (role, split)

    # The calibration sample: whole distributions (uint16 fixed point), whose target entry is the
    # store's exact value; approxft calibrate stores them with the store.
    import engine
    from ingest.deep_sample import FULL_STEP, read_deep_lists

    ds = engine.open_dataset(store)
    positions = ds.store.positions
    strings = json.loads((out / "deep" / "token_strings.json").read_text(encoding="utf-8"))
    assert strings == gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE)))
    for role in ROLES:
        deep = read_deep_lists(out / "deep" / f"{role}.npz")  # checks NaN, sign and mass
        assert deep.full.shape == (3, GPT2_VOCAB_SIZE) and deep.full.dtype == np.uint16 and deep.ids is None
        target = ds.store.target_lp(role)
        tokens = {json.loads(line)["request_index"]: json.loads(line)["tokens"] for line in (out / "requests.jsonl").read_text().splitlines()}
        for i, (request, position) in enumerate(zip(deep.request, deep.position, strict=True)):
            row = np.flatnonzero((positions["request"].to_numpy() == request) & (positions["position"].to_numpy() == position))
            assert row.size == 1
            assert deep.target_lp[i] == pytest.approx(target[row[0]], abs=1e-5)
            column = strings.index(tokens[int(request)][int(position)])
            assert deep.full_lp(i)[column] == pytest.approx(target[row[0]], abs=FULL_STEP / 2 + 1e-5)
    raw = (out / "raw" / "big.calibration.jsonl.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw.count(b"\x1f\x8b\x08") >= 3  # one gzip member per record
    calibrated = run_cli(capsys, "calibrate", store, "--deep", out / "deep", *(f"--{role}={role}={role}.npz" for role in ROLES))
    assert calibrated.returncode == 0, calibrated.stderr
    assert "stored the full-distribution sample (3 positions)" in calibrated.stderr
    stored = store / "calibration" / "big+tuned+untuned.full"
    assert sorted(p.name for p in stored.iterdir()) == ["0.npz", "1.npz", "2.npz", "token_strings.json"]  # blend order


def test_a_role_capped_at_top_k_beside_whole_distributions_makes_one_mixed_sample(server, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_docs=4, chars=200)
    # The big model as if behind an API that caps k at 20; the small pair local and whole.
    config = write_config(tmp_path / "models.toml", server, per_role={"big": {"calibration_k": 20}})
    out = tmp_path / "run"
    done = run_cli(capsys, "collect", "--models", config, "--corpus", corpus, "--out", out, "--chunk-tokens", 24,
                   "--logprobs", 5, "--calibration", 6, "--calibration-k", "all")
    assert done.returncode == 0, done.stderr
    assert (out / "raw" / "big.calibration.jsonl").is_file() and (out / "raw" / "tuned.calibration.jsonl.gz").is_file()
    strings = json.loads((out / "deep" / "token_strings.json").read_text(encoding="utf-8"))
    assert len(strings) == GPT2_VOCAB_SIZE  # one numbering for both kinds
    with np.load(out / "deep" / "big.npz") as big, np.load(out / "deep" / "tuned.npz") as tuned:
        assert "full" not in big.files and big["ids"].shape == (6, 20) and big["ids"].max() < GPT2_VOCAB_SIZE
        assert tuned["full"].shape == (6, GPT2_VOCAB_SIZE)
        np.testing.assert_array_equal(big["request"], tuned["request"])
    store = tmp_path / "store"
    assert run_cli(capsys, "ingest", *(out / "raw" / f"{role}.jsonl" for role in ROLES), "--requests",
                   out / "requests.jsonl", "--out", store).returncode == 0
    roles = [a for role in ROLES for a in (f"--{role}", f"{role}={role}.npz")]
    calibrated = run_cli(capsys, "calibrate", store, "--deep", out / "deep", *roles)
    assert calibrated.returncode == 0, calibrated.stderr
    assert "it leaves out the error of big's probabilities beyond its top 20" in calibrated.stderr
    evaluated = run_cli(capsys, "eval", store, "--big", "big", "--tuned", "tuned", "--untuned", "untuned", "--format", "json")
    blend = json.loads(evaluated.stdout)["blend"]
    assert blend["estimator"] == "corrected:calibrated-tail"
    assert "beyond its top 20" in blend["interval_kind"] and "in proportion to untuned's" in blend["interval_kind"]


def test_serve_answers_models_and_rejects_an_unknown_model(server):
    import openai

    client = openai.OpenAI(api_key="unused", base_url=server, max_retries=0)
    assert sorted(m.id for m in client.models.list()) == sorted(ROLES)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="Hello", max_tokens=0, echo=True, logprobs=1)
    done = client.completions.create(model="big", prompt="Hello “world”", max_tokens=2, echo=True, logprobs=3, temperature=0)
    logprobs = done.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == done.usage.prompt_tokens + 2
    assert any(t.startswith("bytes:\\x") for t in logprobs.tokens)  # the curly quote splits into byte tokens
    assert all(len(top) >= 3 for top in logprobs.top_logprobs[1:])


def test_next_token_sampled_batch_and_vllm_modes_match_echo(server, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_docs=4, chars=200)
    prepared = run_cli(capsys, "prepare", corpus, "--out", tmp_path / "prep", "--chunk-tokens", 24, "--finetune-share", 0.3, "--logprobs", 5)
    assert prepared.returncode == 0, prepared.stderr
    manifest = Path(json.loads(prepared.stdout)["manifest"])
    stores = {}
    for mode in ("echo", "next_token", "batch", "prompt_logprobs", "sampled"):
        settings = {"mode": "next_token", "positions_per_request": 3} if mode == "sampled" else {"mode": mode}
        config = write_config(tmp_path / f"{mode}.toml", server, concurrency=2, rpm=60000, poll_seconds=0.2, **settings)
        out = tmp_path / mode
        done = run_cli(capsys, "collect", "--models", config, "--corpus", manifest, "--out", out)
        assert done.returncode == 0, done.stderr
        stores[mode] = tmp_path / f"{mode}.store"
        files = [out / "raw" / f"{role}.jsonl" for role in ROLES]
        names = ["--token-strings", "gpt2"] if mode == "prompt_logprobs" else []  # vLLM keys tokens by id
        ingested = run_cli(capsys, "ingest", *files, "--requests", manifest, "--out", stores[mode], *names)
        assert ingested.returncode == 0, ingested.stderr
    import engine

    echo, nexttoken, batch, vllm = (engine.open_dataset(stores[m]) for m in ("echo", "next_token", "batch", "prompt_logprobs"))
    assert echo.n_positions == nexttoken.n_positions == batch.n_positions == vllm.n_positions
    for role in ROLES:  # the Batch API (max_tokens=1, the generated token dropped) and vLLM's format score alike
        np.testing.assert_allclose(batch.store.target_lp(role), echo.store.target_lp(role), atol=1e-5)
        np.testing.assert_allclose(vllm.store.target_lp(role), echo.store.target_lp(role), atol=1e-5)
        np.testing.assert_array_equal(vllm.target_outside_topk(role), echo.target_outside_topk(role))
    for role in ROLES:
        exact, listed = echo.store.target_lp(role), nexttoken.store.target_lp(role)
        seen = ~np.isnan(listed)
        np.testing.assert_allclose(listed[seen], exact[seen], atol=1e-4)
        # Unobserved exactly where the echo data has the target outside the top-5 list.
        np.testing.assert_array_equal(~seen, echo.target_outside_topk(role))
    sampled = engine.open_dataset(stores["sampled"])
    positions = sampled.store.positions
    keys = list(zip(positions["request"].to_list(), positions["position"].to_list(), strict=True))
    for role in ROLES:  # 3 positions asked per request, the rest unobserved on purpose
        plans = {int(line["custom_id"].split("-")[1]): line["response"]["body"]["positions"]
                 for line in raw_lines(tmp_path / "sampled" / "raw" / f"{role}.jsonl") if line["custom_id"].endswith("-positions")}
        assert all(len(p) == 3 for p in plans.values())
        asked = np.array([p in plans[r] for r, p in keys])
        expected = np.where(asked, nexttoken.store.target_lp(role), np.nan)
        np.testing.assert_array_equal(sampled.store.target_lp(role), expected)
    evaluated = run_cli(capsys, "eval", stores["next_token"], "--big", "big", "--tuned", "tuned", "--untuned", "untuned", "--format", "json")
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)["models"]
    for role in ROLES:
        unobserved = int(echo.target_outside_topk(role).sum())
        assert figures[role]["unobserved_targets"] == unobserved > 0
        assert figures[role]["details"]["val"]["positions"] + figures[role]["details"]["test"]["positions"] == echo.n_positions - unobserved


def test_chat_mode_scores_the_generated_text_like_the_model(server, models, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_docs=3, chars=120)
    config = write_config(tmp_path / "chat.toml", server, mode="chat", chat_max_tokens=6, rpm=60000)
    out = tmp_path / "chat"
    done = run_cli(capsys, "collect", "--models", config, "--corpus", corpus, "--out", out, "--roles", "big", "--chunk-tokens", 16, "--finetune-share", 0.3)
    assert done.returncode == 0, done.stderr
    store = tmp_path / "chat.store"
    ingested = run_cli(capsys, "ingest", out / "raw" / "big.jsonl", "--requests", out / "requests.jsonl", "--out", store)
    assert ingested.returncode == 0, ingested.stderr
    import torch
    from transformers import AutoModelForCausalLM

    import engine
    from ingest.prepare.bpe import gpt2

    bpe = gpt2()
    ids_of = {raw: i for i, raw in enumerate(bpe.vocab_bytes)}
    model = AutoModelForCausalLM.from_pretrained(models["big"], local_files_only=True).eval()
    nll, n = 0.0, 0
    for line in raw_lines(out / "raw" / "big.jsonl"):
        body = line["response"]["body"]
        request = int(line["custom_id"].split("-")[1])
        prompt = json.loads((out / "requests.jsonl").read_text().splitlines()[request])["params"]["prompt"]
        generated = [ids_of[bytes(item["bytes"])] for item in body["choices"][0]["logprobs"]["content"]]
        ids = bpe.encode(prompt) + generated
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        start = len(ids) - len(generated)
        nll -= float(sum(lp[p - 1, ids[p]] for p in range(start, len(ids))))
        n += len(generated)
    report = engine.open_dataset(store).model_report("big")
    positions = sum(f.positions for f in report.splits.values())
    assert positions == n
    total = sum(f.positions * f.mean_nll for f in report.splits.values())
    assert total / positions == pytest.approx(nll / n, rel=1e-5)

"""The committed testbed's data card (data/testbed/README.md), reproduced by the product's own
reader (``approxft ingest`` + ``eval``) and, for the one figure that needs the full distributions,
by the exact oracle over the committed models, which is code independent of the builder's own
float64 computation (``bench/testbed/exact.py``) that the card's figure came from."""

from __future__ import annotations

import json

import pytest

from bench.testbed.reader import TESTBED_DIR, bundled_testbed
from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from tests.helpers import approxft

# The data card's reference figures: exact perplexity per split, and the share of positions
# whose actual token is outside the model's top 20.
TESTBED_CARD = {
    "testbed-small": {"val": 524.93, "test": 470.02, "outside": (0.56, 0.53)},
    "testbed-big": {"val": 508.18, "test": 451.85, "outside": (0.57, 0.55)},
    "testbed-small-tuned": {"val": 105.56, "test": 105.77, "outside": (0.40, 0.39)},
    "testbed-big-tuned": {"val": 114.16, "test": 114.35, "outside": (0.40, 0.41)},
}
PROXY_TUNING_CARD = {"val": 115.37, "test": 113.50}
"""The card's exact full-vocabulary figure for the blend (1, 1, -1)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed") / "store"
    done = approxft("ingest", *sorted(TESTBED_DIR.glob("testbed-*.jsonl.gz")), "--requests",
                    TESTBED_DIR / "requests.jsonl", "--out", out, "--vocab-size", GPT2_VOCAB_SIZE)
    assert done.returncode == 0, done.stderr
    return out


def test_eval_reproduces_the_data_card(store):
    import engine

    roles = bundled_testbed().blend_roles
    done = approxft("eval", store, *(f"--{r}={m}" for r, m in roles.items()), "--format", "json")
    assert done.returncode == 0, done.stderr
    models = json.loads(done.stdout)["models"]
    ds = engine.open_dataset(store)
    for model, card in TESTBED_CARD.items():
        for split in ("val", "test"):
            assert models[model][split] == pytest.approx(card[split], abs=0.005), (model, split)
        outside = ds.target_outside_topk(model)
        for split, share in zip(("val", "test"), card["outside"], strict=True):
            assert outside[ds.split_mask(split)].mean() == pytest.approx(share, abs=0.005), (model, split)


def test_the_oracle_reproduces_the_cards_exact_proxy_tuning_figure(store):
    pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
    import engine
    from bench.testbed.reader import model_dirs
    from engine.oracle import Oracle

    bundle = bundled_testbed()
    assert bundle.exact_proxy_tuning == pytest.approx(PROXY_TUNING_CARD, abs=0.005)
    oracle = Oracle(engine.open_dataset(store), list(bundle.blend_roles.values()), model_dirs(TESTBED_DIR),
                    requests=TESTBED_DIR / "requests.jsonl")
    report = oracle.evaluate([1.0, 1.0, -1.0])
    for split, ppl in PROXY_TUNING_CARD.items():
        assert report.splits[split].perplexity == pytest.approx(ppl, abs=0.005), split

"""The testbed builder (bench/testbed): source extraction on small fake package files (no apt),
the one-line errors for bad inputs, and a tiny end-to-end build (tiny models, a few thousand
tokens) that must write four loadable float16 models and replace its output atomically."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from bench.testbed import extract
from bench.testbed.errors import BuildError
from ingest.prepare.corpus import Document

REPO = Path(__file__).resolve().parents[2]

# -- extraction -------------------------------------------------------------------------------


def test_fortunes_split_on_percent_lines_and_lose_overstrikes():
    text = "B\x08Bold and _\x08u_\x08nderlined,\n\t\t-- someone\n%\n\n%\nSecond\x07 one\n%\n"
    docs = extract.fortune_documents(text, source="cookie")
    assert [d.name for d in docs] == ["cookie 1", "cookie 2"]
    assert docs[0].text == "Bold and underlined,\n\t\t-- someone"
    assert docs[1].text == "Second one"


def _b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def test_dict_entries_follow_the_index_once_per_entry_without_metadata():
    entries = [b"00-database-info\n   about\n", b"apple\n   A fruit.\n", b"Bee\n   An insect \xe2\x80\x94 buzzes.\n"]
    data = b"".join(entries)
    starts = [0, len(entries[0]), len(entries[0]) + len(entries[1])]
    index = "\n".join([
        f"00-database-info\t{_b64(starts[0])}\t{_b64(len(entries[0]))}",
        f"bee\t{_b64(starts[2])}\t{_b64(len(entries[2]))}",  # the index is alphabetical, the data need not be
        f"apple\t{_b64(starts[1])}\t{_b64(len(entries[1]))}",
        f"apples\t{_b64(starts[1])}\t{_b64(len(entries[1]))}",  # a second headword for the same entry
    ])
    docs = extract.dict_documents(index, data)
    assert [d.name for d in docs] == ["apple", "bee"]
    assert docs[1].text == "Bee\n   An insect \u2014 buzzes."


def test_gcide_markup_is_cleaned():
    entry = ("Bathe \\Bathe\\ (b[=a][th]), v. t. [OE. ba[eth]ien.]\n   1. To wash by immersion, as in\n"
             "      a {bath}. [Obs.]\n      [1913 Webster]\n")
    assert extract.gcide_text(entry) == "Bathe (bath), v. t. [OE. bathien.] 1. To wash by immersion, as in a bath. [Obs.]"


def test_sample_documents_is_seeded_and_bounded():
    docs = [Document(f"d{i}", "x" * (10 + i)) for i in range(50)]
    first = extract.sample_documents(docs, 200, seed=3)
    assert first == extract.sample_documents(docs, 200, seed=3)
    assert sum(len(d.text) for d in first) <= 200 and len(first) > 5
    assert [d.name for d in first] == sorted((d.name for d in first), key=lambda n: int(n[1:]))  # file order kept
    assert first != extract.sample_documents(docs, 200, seed=4)


def test_kjv_chapters_drop_verse_numbers():
    printed = "\nGenesis 1\n\n  1 In the beginning.\n  2 And the earth.\n\n1 Samuel 2\n\n  1 And Hannah prayed.\n"
    docs = extract.kjv_chapters(printed)
    assert [(d.name, d.text) for d in docs] == [
        ("Genesis 1", "Genesis 1\nIn the beginning.\nAnd the earth."),
        ("1 Samuel 2", "1 Samuel 2\nAnd Hannah prayed."),
    ]
    with pytest.raises(BuildError, match="neither a heading nor a verse"):
        extract.kjv_chapters("Genesis 1\n  1 Verse.\nsome stray text\n")


def _r_object(strings: list[str | None], *, latin1: bool = False) -> bytes:
    """An R lazy-load database entry: a character vector in XDR serialization, version 3."""
    body = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    body += struct.pack(">ii", 16, len(strings))
    for s in strings:
        if s is None:
            body += struct.pack(">ii", 9, -1)
        else:
            raw = s.encode("latin-1" if latin1 else "utf-8")
            body += struct.pack(">ii", 9 | ((4 if latin1 else 8) << 12), len(raw)) + raw
    return struct.pack(">I", len(body)) + zlib.compress(body)


def test_r_character_vectors_read_every_object():
    rdb = _r_object(["EMMA", "", "CHAPTER I", "Emma Woodhouse, handsome,", None]) + _r_object(["caf\u00e9"], latin1=True)
    assert extract.r_character_vectors(rdb) == [["EMMA", "", "CHAPTER I", "Emma Woodhouse, handsome,", ""], ["caf\u00e9"]]
    not_strings = b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 13, 1) + struct.pack(">i", 7)
    with pytest.raises(BuildError, match="not a character vector"):
        extract.r_character_vectors(struct.pack(">I", len(not_strings)) + zlib.compress(not_strings))


def test_austen_chapters_name_volumes_and_reflow():
    lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse,", "handsome.", "",
             "Second paragraph.", "CHAPTER II", "More.", "VOLUME II", "CHAPTER I", "Again."]
    docs = extract.austen_chapters(lines)
    assert [d.name for d in docs] == ["Emma, VOLUME I, CHAPTER I", "Emma, VOLUME I, CHAPTER II", "Emma, VOLUME II, CHAPTER I"]
    assert docs[0].text == "Emma Woodhouse, handsome.\n\nSecond paragraph."


# -- the command line: bad inputs and a tiny build --------------------------------------------

WORDS = ("the king queen castle forest wolf river bread gold night morning child old woman went said came "
         "saw little great good and then but when she he they it was were into under over with").split()
VERSE = ("and the lord spake unto moses saying thou shalt keep my statutes for i am the lord thy god who brought "
         "thee out of the land of egypt behold they shall dwell in the land").split()
TINY = ["--small", "1x32", "--big", "2x32", "--base-tokens", "4096", "--tune-tokens", "4096", "--general-heldout-tokens", "300",
        "--calibration", "8", "--calibration-k", "30", "--chunk-tokens", "128", "--finetune-share", "0.6", "--allow-failed-conditions"]


def _write_corpora(folder: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    general = folder / "general.txt"
    general.write_text("\n\n\n".join(
        f"Story {i}\n" + " ".join(rng.choice(WORDS) for _ in range(120)) + "." for i in range(30)), encoding="utf-8")
    domain = folder / "domain.jsonl"
    domain.write_text("".join(json.dumps({"title": f"Chapter {i}", "text": "\n".join(
        " ".join(rng.choice(VERSE) for _ in range(14)).capitalize() + "." for _ in range(8))}) + "\n" for i in range(24)), encoding="utf-8")
    return general, domain


def _build(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.testbed.build", *map(str, args)], cwd=REPO, capture_output=True, text=True)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a failed build must print (after any progress lines), no traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    return _write_corpora(tmp_path_factory.mktemp("corpora"))


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory, corpora) -> Path:
    """One tiny build (about half a minute: mostly torch.compile and the subprocesses), over the
    folder of an older testbed (its marker, and a file the new build does not write)."""
    out = tmp_path_factory.mktemp("built") / "testbed"
    out.mkdir()
    (out / "build.json").write_text(json.dumps({"format": "approxft-testbed", "version": 1}))
    (out / "stale.txt").write_text("from an older build")
    done = _build("--general", corpora[0], "--domain", corpora[1], "--out", out, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "the corpus file is empty"), (b"  \n\n ", "the corpus file is empty"), (b"PK\x03\x04\x00\x00binary", "NUL bytes"),
     (b"caf\xe9 au lait\n", "not UTF-8 text (invalid byte 0xe9 at offset 3)")],
)
def test_bad_corpus_files_are_one_error_line(tmp_path, corpora, content, problem):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    line = _error_line(_build("--general", corpora[0], "--domain", bad, "--out", tmp_path / "out", *TINY))
    assert line == f"error: {bad}: {problem}" or (line.startswith(f"error: {bad}: ") and problem in line)
    assert not (tmp_path / "out").exists()


def test_a_missing_corpus_file_is_one_error_line(tmp_path, corpora):
    line = _error_line(_build("--general", tmp_path / "nope.txt", "--domain", corpora[1], "--out", tmp_path / "out"))
    assert line == f"error: {tmp_path / 'nope.txt'}: corpus file not found"


def test_an_out_folder_that_is_not_a_testbed_is_left_alone(tmp_path, corpora):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _error_line(_build("--general", corpora[0], "--domain", corpora[1], "--out", out, *TINY))
    assert "is not a testbed" in line and str(out) in line
    assert _listing(out) == {"notes.txt": b"mine"}


def test_tiny_build_writes_four_loadable_float16_models(tiny_testbed):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build = json.loads((tiny_testbed / "build.json").read_text())
    assert build["format"] == "approxft-testbed"
    for name in ("small", "big", "small-tuned", "big-tuned"):
        folder = tiny_testbed / "models" / name
        with safe_open(folder / "model.safetensors", framework="pt") as weights:
            assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
            assert "lm_head.weight" not in weights.keys()  # tied: stored once
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        assert model.config.n_layer == (1 if name.startswith("small") else 2)
        assert len(AutoTokenizer.from_pretrained(folder, local_files_only=True).get_vocab()) == 50257
    # The tuned models start from their saved bases, so fine-tuning moved them away from those.
    small = AutoModelForCausalLM.from_pretrained(tiny_testbed / "models" / "small", local_files_only=True)
    tuned = AutoModelForCausalLM.from_pretrained(tiny_testbed / "models" / "small-tuned", local_files_only=True)
    assert not torch.equal(small.transformer.h[0].mlp.c_fc.weight, tuned.transformer.h[0].mlp.c_fc.weight)
    for model in ("small", "big", "small-tuned", "big-tuned"):
        assert (tiny_testbed / f"testbed-{model}.jsonl.gz").is_file()
    assert sorted(p.name for p in (tiny_testbed / "deep").iterdir()) == ["big.npz", "token_strings.json", "tuned.npz", "untuned.npz"]
    assert build["collection"]["agreement"]["perplexity"] < 1e-4


def test_the_card_shows_what_approxft_eval_prints(tiny_testbed, tmp_path):
    store = tmp_path / "store"
    files = sorted(str(p) for p in tiny_testbed.glob("testbed-*.jsonl.gz"))
    run = [sys.executable, "-m", "engine"]
    subprocess.run([*run, "ingest", *files, "--requests", str(tiny_testbed / "requests.jsonl"), "--out", str(store)], check=True, capture_output=True)
    printed = subprocess.run([*run, "eval", str(store), "--big", "testbed-big", "--tuned", "testbed-small-tuned",
                              "--untuned", "testbed-small", "--format", "json"], check=True, capture_output=True, text=True)
    card = (tiny_testbed / "README.md").read_text()
    models = json.loads(printed.stdout)["models"]
    assert len(models) == 4
    for name, m in models.items():
        val, test = (f"{m[s]:,.2f}" for s in ("val", "test"))
        bpb_val, bpb_test = (f"{m['details'][s]['bits_per_byte']:,.3f}" for s in ("val", "test"))
        assert f"| {name} | {val} | {test} | {bpb_val} | {bpb_test} |" in card


def test_a_build_that_fails_half_way_leaves_the_old_testbed(tiny_testbed, tmp_path, corpora):
    out = tmp_path / "testbed"
    shutil.copytree(tiny_testbed, out)
    before = _listing(out)
    # Reusing models from a testbed whose model file is corrupt fails after sources and corpora.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_testbed, broken)
    (broken / "models" / "big" / "model.safetensors").write_bytes(b"not safetensors")
    line = _error_line(_build("--general", corpora[0], "--domain", corpora[1], "--out", out, "--models-from", broken, *TINY))
    assert str(broken / "models" / "big") in line and "cannot be loaded" in line
    assert _listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "testbed"]  # no staging folder left behind


def test_model_folders_must_exist_and_speak_gpt2(tiny_testbed, tmp_path):
    from bench.testbed.models import load_model

    with pytest.raises(BuildError) as missing:
        load_model(tmp_path / "nope")
    assert str(missing.value) == f"{tmp_path / 'nope'}: model directory not found"
    folder = tmp_path / "small"
    shutil.copytree(tiny_testbed / "models" / "small", folder)
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]  # the same tokens, two ids swapped
    path.write_text(json.dumps(tokenizer))
    with pytest.raises(BuildError) as other:
        load_model(folder)
    assert str(other.value).startswith(f"{folder}: the tokenizer's vocabulary (50,257 tokens) differs from data/gpt2's")
    (folder / "config.json").unlink()
    with pytest.raises(BuildError, match="config.json: missing"):
        load_model(folder)


def test_a_build_replaces_a_previous_testbed(tiny_testbed):
    assert not (tiny_testbed / "stale.txt").exists()
    assert sorted(p.name for p in tiny_testbed.parent.iterdir()) == ["testbed"]  # no staging or old folder left


def test_the_correction_benchmark_runs_on_a_testbed(tiny_testbed, tmp_path, capsys):
    from bench.correction import SIZES, main

    main(["--testbed", str(tiny_testbed), "--cache", str(tmp_path / "cache"), "--draws", "2"])
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| all three full |")]
    assert [r[1] for r in rows] == [f"{n:,}" for n in SIZES]
    for r in rows:  # median error, p90, coverage ± its spread: percentages
        assert r[2].endswith("%") and r[3].endswith("%") and " ± " in r[4]
    assert "## Tuned on the corrected val estimate (Newton)" in out and "| 1 |" in out
    assert "Grimm: trial, corrected" in out
    assert list((tmp_path / "cache" / "bench").glob("exact-*.json"))  # the oracle's figures, kept

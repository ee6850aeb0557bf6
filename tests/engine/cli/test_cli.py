"""The real `approxft` command, run as a subprocess, its JSON parsed."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from engine.estimators import CALIBRATED_ESTIMATOR
from tests.helpers import DATA_CARD, GRIMM_DIR, GRIMM_ROLES, ROLE_ARGS, approxft


def test_eval_json_reproduces_the_data_card_and_names_the_estimator(grimm_store, grimm_dataset):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--weights", "1,1,-1", "--format", "json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for model, card in DATA_CARD.items():
        for split, ppl in card.items():
            assert out["models"][model][split] == pytest.approx(ppl, abs=0.005), (model, split)
    blend = out["blend"]
    assert blend["parametrization"] == "loglinear"
    assert blend["weights"] == [1.0, 1.0, -1.0]
    assert blend["estimator"] == CALIBRATED_ESTIMATOR and blend["estimate"] is True
    direct = grimm_dataset.blend(**GRIMM_ROLES).evaluate([1.0, 1.0, -1.0])
    for split in ("val", "test"):
        assert blend[split] == pytest.approx(direct.splits[split].perplexity, rel=1e-12)


def test_eval_temps_use_the_temperatures_parametrization(grimm_store, grimm_dataset):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--temps", "1.67,2.23,8.83", "--estimator", "prototype", "--format", "json")
    assert done.returncode == 0, done.stderr
    blend = json.loads(done.stdout)["blend"]
    assert blend["params"] == {"T_big": 1.67, "T_tuned": 2.23, "T_untuned": 8.83, "w": 1.0}
    np.testing.assert_allclose(blend["weights"], [1 / 1.67, 1 / 2.23, -1 / 8.83])
    assert blend["estimator"] == "prototype"
    direct = grimm_dataset.blend(**GRIMM_ROLES, estimator="prototype").mean_nll(blend["weights"], split="test")
    assert blend["test"] == pytest.approx(np.exp(direct), rel=1e-9)


def test_eval_table_and_csv_label_the_blend_as_an_estimate(grimm_store):
    table = approxft("eval", grimm_store, *ROLE_ARGS)
    assert table.returncode == 0, table.stderr
    assert f"estimate: {CALIBRATED_ESTIMATOR}" in table.stdout
    assert "grimm-big-tuned" in table.stdout
    csv = approxft("eval", grimm_store, *ROLE_ARGS, "--format", "csv")
    lines = csv.stdout.strip().splitlines()
    header = lines[0].split(",")
    assert header[:6] == ["", "ppl val", "lo val", "hi val", "docs lo val", "docs hi val"]
    assert len(lines) == 1 + 4 + 1
    model, blend = (dict(zip(header, line.rsplit(",", len(header) - 1), strict=True)) for line in (lines[1], lines[-1]))
    assert model["lo val"] == model["ppl val"] == model["hi val"]  # an exact figure
    assert blend["lo val"] == blend["hi val"] == ""  # an estimate without a full-distribution sample
    for row in (model, blend):
        assert float(row["docs lo val"]) < float(row["ppl val"]) < float(row["docs hi val"])


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_the_same_model_in_two_roles_is_one_line_and_exit_1(grimm_store, command):
    done = approxft(command, grimm_store, "--big", "grimm-big", "--tuned", "grimm-small", "--untuned", "grimm-small")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"approxft {command}: error: grimm-small plays two roles (tuned and untuned); a blend needs "
                           "three different models\n")


def test_unknown_model_is_one_line_and_exit_1(grimm_store):
    done = approxft("eval", grimm_store, "--big", "davinci", "--tuned", "grimm-small-tuned", "--untuned", "grimm-small")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0
    assert "unknown model 'davinci'" in done.stderr and "grimm-big" in done.stderr


def test_a_multi_line_library_error_is_printed_as_one_line(grimm_store, tmp_path):
    # SQLAlchemy appends a "Background on this error" line to its messages.
    done = approxft("tune", grimm_store, *ROLE_ARGS, "--method", "tpe", "--trials", 2,
                    "--storage", f"sqlite:///{tmp_path}/no/such/dir/study.db")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("approxft tune: error: storage ") and done.stderr.count("\n") == 1, done.stderr


def test_usage_errors_exit_2(grimm_store):
    assert approxft("eval", grimm_store, *ROLE_ARGS, "--weights", "1,x,2").returncode == 2
    assert approxft("eval", grimm_store, *ROLE_ARGS, "--weights", "1,1,-1", "--temps", "1,1,1").returncode == 2
    assert approxft("frobnicate").returncode == 2


def test_wrong_number_of_weights_is_an_error(grimm_store):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--weights", "1,1")
    assert done.returncode == 1 and "takes 3 values" in done.stderr


def test_every_command_has_an_example_in_its_help(capsys):
    from engine.cli import COMMANDS, build_parser

    parser = build_parser()
    for command in (c.__name__.rsplit(".", 1)[1].removesuffix("_cmd") for c in COMMANDS):
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0
        assert "Example: approxft " + command in text, command
        assert "%%" not in text, f"{command} --help prints a doubled percent sign"


def test_ingest_malformed_json_names_file_and_line_and_leaves_no_store(tmp_path):
    lines = gzip.open(GRIMM_DIR / "grimm-big.jsonl.gz", "rt").read().splitlines()[:3]
    lines[1] = lines[1][:100]  # a truncated JSON object on line 2
    bad = tmp_path / "grimm-big.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    manifest = tmp_path / "requests.jsonl"
    manifest.write_text("".join((GRIMM_DIR / "requests.jsonl").read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "store"
    done = approxft("ingest", bad, "--requests", manifest, "--out", out)
    assert done.returncode == 1
    assert "grimm-big.jsonl" in done.stderr and "line 2" in done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grimm-big.jsonl", "requests.jsonl"]


def test_demo_prints_every_model_both_estimators_and_writes_the_plot(tmp_path):
    done = approxft("demo", "--cache", tmp_path / "cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for model, card in DATA_CARD.items():
        row = next(line for line in done.stdout.splitlines() if line.startswith(model + " "))
        assert f"{card['val']:,.2f}" in row and f"{card['test']:,.2f}" in row, row
    assert f"{CALIBRATED_ESTIMATOR} (default)" in done.stdout and "prototype" in done.stdout
    assert "exact, full vocabulary (data card)" in done.stdout
    formulas = done.stdout[done.stdout.index("The published formulas"):]
    for label in ("proxy-tuning, default", "dexperts, tuned (TPE", "contrastive, default", "loglinear, tuned (Newton)",
                  "grimm-big-tuned alone (reference, exact)", "4 models, tuned (Newton)"):
        assert label in formulas, label
    plot = tmp_path / "cache" / "demo" / "perplexity-by-context.png"
    assert str(plot) in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = approxft("demo", "--cache", tmp_path / "cache", cwd=tmp_path)
    assert again.returncode == 0 and "ingesting" not in again.stderr  # the store is reused

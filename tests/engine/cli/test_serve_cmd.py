"""``approxft serve`` without the local extra: one line with the install hint, exit 1."""

from __future__ import annotations

import sys

import pytest

from engine.cli import main


def test_serve_without_torch_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert main(["serve", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        "approxft serve: error: approxft serve needs torch and transformers: pip install 'approxft[local]'"
    )


def test_serve_help_has_an_example(capsys):
    try:
        main(["serve", "--help"])
    except SystemExit as done:
        assert done.code == 0
    assert "Example: approxft serve" in capsys.readouterr().out


def test_serve_help_points_collect_at_models_toml_not_an_environment_variable(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "OPENAI_BASE_URL" not in out  # collect never reads it
    assert 'base_url = "http://127.0.0.1:8000/v1"' in out and "models.toml" in out
    assert "tokenizer_backend=remote" in out


def test_serve_limits_must_be_positive(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--max-n", "0", "models/x"])
    assert done.value.code == 2
    assert "argument --max-n: expected a positive integer, got '0'" in capsys.readouterr().err

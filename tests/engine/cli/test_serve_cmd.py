"""``approxft serve`` without the local extra: one line with the install hint, exit 1."""

from __future__ import annotations

import sys

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

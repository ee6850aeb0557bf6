"""Replacing a store: one atomic swap, leftovers of killed writers cleaned up (and only those),
calibration fits kept for the same data and dropped with a notice for other data, and the
store's fingerprint."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.synthetic_store import synthetic_store
from engine import open_dataset
from ingest import atomic, ingest_responses, open_store
from ingest.atomic import exchange, remove_stale, staged_directory
from ingest.errors import IngestError
from ingest.store import CALIBRATION_DIR, STORE_JSON
from ingest.store_write import CalibrationDropped
from tests.helpers import GOLDEN_DIR, GRIMM_DIR, GRIMM_ROLES, REPO, run_cli

GOLDEN = sorted(p for p in GOLDEN_DIR.iterdir() if p.name.startswith("grimm-"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def golden_store(out: Path, requests: Path = GOLDEN_DIR / "requests.jsonl") -> Path:
    return ingest_responses(GOLDEN, requests=requests, out=out)


def swapped_splits(tmp_path: Path) -> Path:
    """The golden manifest with its two requests' splits swapped: other data, same size and models."""
    lines = [json.loads(line) for line in (GOLDEN_DIR / "requests.jsonl").read_text().splitlines()]
    lines[0]["split"], lines[1]["split"] = lines[1]["split"], lines[0]["split"]
    path = tmp_path / "swapped.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "from_a").write_text("a")
    inodes = os.stat(a).st_ino, os.stat(b).st_ino
    exchange(a, b)
    assert (b / "from_a").read_text() == "a" and not any(a.iterdir())
    assert (os.stat(a).st_ino, os.stat(b).st_ino) == inodes[::-1]
    with pytest.raises(FileNotFoundError):
        exchange(a, tmp_path / "missing")


def test_a_store_is_replaced_by_one_exchange_and_nothing_is_left_beside_it(tmp_path, monkeypatch):
    out = golden_store(tmp_path / "s")
    swaps = []
    real = atomic.exchange
    monkeypatch.setattr(atomic, "exchange", lambda a, b: (swaps.append((Path(a), Path(b))), real(a, b))[1])
    golden_store(out, swapped_splits(tmp_path))
    assert len(swaps) == 1 and swaps[0][1] == out and swaps[0][0].name.startswith("s.tmp-")
    assert open_store(out).positions["split"][0] == "test" and leftovers(tmp_path) == []


def test_where_the_exchange_is_refused_two_renames_do_and_a_kill_between_them_is_undone(tmp_path, monkeypatch):
    out = golden_store(tmp_path / "s")
    monkeypatch.setattr(atomic, "_renameat2", None)  # as on a kernel or filesystem without it
    golden_store(out, swapped_splits(tmp_path))
    assert open_store(out).positions["split"][0] == "test" and leftovers(tmp_path) == []
    # A writer killed between the fallback's two renames: no store at ``out``, the old one set
    # aside, the new one complete. The next write puts the old one back before anything else.
    before = snapshot(out)
    out.rename(tmp_path / "s.old-0123abcd")
    shutil.copytree(tmp_path / "s.old-0123abcd", tmp_path / "s.tmp-89abcdef")
    assert remove_stale(out) == [tmp_path / "s.tmp-89abcdef"]
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_only_unlocked_leftovers_with_our_names_are_removed(tmp_path):
    out = golden_store(tmp_path / "s")
    dead = [tmp_path / "s.tmp-0000abcd", tmp_path / "s.old-1111abcd"]
    theirs = [tmp_path / "s.tmp-notes", tmp_path / "s.tmp-0000abcd.bak", tmp_path / "other.tmp-2222abcd"]
    for folder in dead + theirs:
        folder.mkdir()
    (tmp_path / "s.tmp-4444abcd").write_text("a file, not a writer's directory")
    live = tmp_path / "s.tmp-3333abcd"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer at work (another open file: flock conflicts as across processes)
    try:
        assert remove_stale(out) == sorted(dead)
        assert all(p.is_dir() for p in [*theirs, live]) and (tmp_path / "s.tmp-4444abcd").is_file()
    finally:
        os.close(fd)
    assert remove_stale(out) == [live]


def test_write_store_itself_replaces_only_a_store(tmp_path):
    """The check is in ``write_store``, after the leftovers are dealt with, so that every writer
    (here the benchmarks' synthetic store) has it, and a store set aside by a killed writer is
    put back and replaced."""
    out = golden_store(tmp_path / "s")
    notes, text = tmp_path / "notes", tmp_path / "notes.txt"
    shutil.copytree(out, notes)
    (notes / "mine.md").write_text("keep me")  # a store's files and something else
    text.write_text("keep me too")
    for path in (notes, text):
        before = snapshot(tmp_path)
        refused = re.escape(f"{path}: exists and is not an approxft store: not replacing it")
        with pytest.raises(IngestError, match=refused):
            synthetic_store(path, 600)
        assert snapshot(tmp_path) == before
    out.rename(tmp_path / "s.old-0123abcd")  # a writer killed between the fallback's two renames
    assert open_store(synthetic_store(out, 600)).n_positions == 600 and leftovers(tmp_path) == []


def test_an_error_while_staging_leaves_the_old_store_and_no_leftover(tmp_path):
    out = golden_store(tmp_path / "s")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="boom"), staged_directory(out) as new:
        (new / "half").write_text("x")
        raise RuntimeError("boom")
    assert snapshot(out) == before and leftovers(tmp_path) == []


KILLED_INGEST = """
import os, signal, sys
import pyarrow.parquet as pq
from ingest import atomic
from engine.cli import main

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def write_first_table(*args, **kwargs):  # tables are written several at once: others may be begun
    write_table(*args, **kwargs)
    kill()

if sys.argv[1] == "writing":  # once the first table is written, whatever else is being written
    write_table, pq.write_table = pq.write_table, write_first_table
else:  # all written and fsynced, as the new store is swapped in
    atomic._swap = kill
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("moment", ["writing", "swapping"])
def test_a_killed_ingest_leaves_the_old_store_and_the_next_ingest_cleans_up(tmp_path, moment):
    """A real ``approxft ingest`` of the bundled data, SIGKILLed at a set moment: while its new
    store is being written beside the old one, or as it is about to be swapped in."""
    out = golden_store(tmp_path / "s")
    before = snapshot(out)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_INGEST, moment, "ingest", *sorted(GRIMM_DIR.glob("grimm-*.jsonl.gz")),
         "--requests", GRIMM_DIR / "requests.jsonl", "--out", out],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    [left] = leftovers(tmp_path)
    assert left.startswith("s.tmp-") and snapshot(out) == before and open_store(out).models
    if moment == "writing":  # one table of the new store at least, not all of them
        assert 1 <= len(list((tmp_path / left).iterdir())) < len(list(out.glob("*.parquet")))
    else:
        assert open_store(tmp_path / left).n_positions > open_store(out).n_positions  # the whole new store
    golden_store(out, swapped_splits(tmp_path))
    assert leftovers(tmp_path) == [] and open_store(out).positions["split"][0] == "test"


def test_fingerprint_is_recorded_and_the_same_when_computed_from_the_tables(tmp_path):
    store = open_store(golden_store(tmp_path / "a"))
    assert store.fingerprint.startswith("sha256:") and len(store.fingerprint) == 7 + 64
    assert dataclasses.replace(store, recorded_fingerprint=None).fingerprint == store.fingerprint
    # The same data from another path is the same store; other data of the same size are not.
    assert open_store(golden_store(tmp_path / "b")).fingerprint == store.fingerprint
    other = open_store(golden_store(tmp_path / "c", swapped_splits(tmp_path)))
    assert other.n_positions == store.n_positions and other.fingerprint != store.fingerprint
    assert open_dataset(store.path).fingerprint == store.fingerprint


def test_reingesting_the_same_data_keeps_the_calibration_fits(grimm_store, tmp_path, capsys):
    out = tmp_path / "grimm.store"
    shutil.copytree(grimm_store, out)
    fits = snapshot(out / CALIBRATION_DIR)
    assert fits and open_dataset(out).default_estimator(**GRIMM_ROLES) == "calibrated-tail"
    # A store written before fingerprints were recorded: its fingerprint is computed from its tables.
    meta = json.loads((out / STORE_JSON).read_text())
    del meta["fingerprint"]
    (out / STORE_JSON).write_text(json.dumps(meta))
    files = sorted(GRIMM_DIR.glob("grimm-*.jsonl.gz"))
    done = run_cli(capsys, "ingest", *files, "--requests", GRIMM_DIR / "requests.jsonl", "--out", out,
                   "--vocab-size", meta["vocab_size"])
    assert done.returncode == 0 and "warning" not in done.stderr
    assert snapshot(out / CALIBRATION_DIR) == fits
    assert open_dataset(out).default_estimator(**GRIMM_ROLES) == "calibrated-tail"


def test_reingesting_other_data_drops_the_fits_and_says_so(tmp_path, capsys):
    out = golden_store(tmp_path / "s")
    (out / CALIBRATION_DIR).mkdir()
    (out / CALIBRATION_DIR / "a+b+c.json").write_text("{}")
    done = run_cli(capsys, "ingest", *GOLDEN, "--requests", swapped_splits(tmp_path), "--out", out)
    assert done.returncode == 0
    assert done.stderr.splitlines()[0] == (
        f"approxft ingest: warning: {out}: dropped its calibration fits ({CALIBRATION_DIR}/a+b+c.json): they were "
        "made on other data than the new store's; rerun approxft calibrate to fit them again")
    assert not (out / CALIBRATION_DIR).exists()
    # The library says it too, as a warning of its own category.
    (out / CALIBRATION_DIR).mkdir()
    (out / CALIBRATION_DIR / "a+b+c.json").write_text("{}")
    with pytest.warns(CalibrationDropped, match="dropped its calibration fits"):
        golden_store(out)

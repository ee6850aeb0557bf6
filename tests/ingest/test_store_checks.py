"""A store whose Parquet is valid but whose contents are not consistent is refused with one
StoreError naming the file, column and first bad row, before any kernel sees it: the small
columns when the store opens, the candidate and top-k columns as they load. Through the real CLI
(in a subprocess, so that a crash would show as one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest import StoreError, ingest_responses, open_store
from tests.helpers import REPO
from tests.ingest.synthetic import dataset

MODELS = ("big", "tuned", "untuned")
EVAL = ["eval", "--big", "big", "--tuned", "tuned", "--untuned", "untuned"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A consistent store of three models (k = 2): positions of requests 0 and 2, 3 each."""
    root = tmp_path_factory.mktemp("checks")
    files, requests = dataset(root, models=MODELS)
    return ingest_responses(files, requests=requests, out=root / "store", vocab_size=50257)


def tampered(good: Path, tmp_path: Path, file: str, column: str, edit: Callable[[np.ndarray], None]) -> Path:
    """A copy of ``good`` with ``edit`` applied (in place) to one column of one table, rewritten
    as valid Parquet of the same schema."""
    store = tmp_path / "store"
    shutil.copytree(good, store)
    table = pq.read_table(store / file)
    array = table[column].combine_chunks()
    flat = array.flatten() if pa.types.is_fixed_size_list(array.type) else array
    values = flat.to_numpy(zero_copy_only=False).copy()
    edit(values)
    new = pa.array(values, flat.type)
    if pa.types.is_fixed_size_list(array.type):
        new = pa.FixedSizeListArray.from_arrays(new, array.type.list_size)
    table = table.set_column(table.schema.get_field_index(column), table.schema.field(column), new)
    pq.write_table(table, store / file, compression="zstd")
    return store


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_good_store_evaluates(good):
    done = cli(EVAL[0], str(good), *EVAL[1:])
    assert done.returncode == 0, done.stderr
    store = open_store(good)
    assert store.vocab_rows == len(store.vocab) and store.candidates().token.size == int(store.offsets()[-1])


def set_at(row: int, value: int) -> Callable[[np.ndarray], None]:
    def edit(values: np.ndarray) -> None:
        values[row] = value
    return edit


VOCAB = 15  # the good store's vocabulary rows (checked below)

# (file, column, edit, message): caught when the store opens, or when eval loads the ranks.
OPEN_AND_EVAL = {
    "no candidate": ("positions.parquet", "n_candidates", set_at(1, 0),
                     r"positions\.parquet: column 'n_candidates' row 1 is 0, outside 1\.\.2147483646"),
    "a negative count": ("positions.parquet", "n_candidates", set_at(0, -3),
                         r"positions\.parquet: column 'n_candidates' row 0 is -3, outside 1\.\."),
    "runs past the table": ("positions.parquet", "n_candidates", set_at(5, 40),
                            r"positions\.parquet: column 'n_candidates' sums to 55, but candidates\.parquet has 18 rows"),
    "target past the vocabulary": ("positions.parquet", "target", set_at(2, VOCAB),
                                   rf"positions\.parquet: column 'target' row 2 is {VOCAB}, outside 0\.\.{VOCAB - 1}"),
    "negative target": ("positions.parquet", "target", set_at(4, -1),
                        rf"positions\.parquet: column 'target' row 4 is -1, outside 0\.\.{VOCAB - 1}"),
    "no context": ("positions.parquet", "position", set_at(0, 0),
                   r"positions\.parquet: column 'position' row 0 is 0, outside 1\.\."),
    "a position twice": ("positions.parquet", "position", set_at(1, 1),
                         r"positions\.parquet: row 1 \(request 0, position 1\) does not follow row 0 \(request 0, "
                         r"position 1\): positions are ordered by \(request, position\), each once"),
    "requests out of order": ("positions.parquet", "request", set_at(3, 0),
                              r"positions\.parquet: row 3 \(request 0, position 1\) does not follow row 2"),
    "rank past k": ("candidates.parquet", "rank_tuned", set_at(4, 2),
                    r"candidates\.parquet: column 'rank_tuned' row 4 is 2, outside -1\.\.1"),
    "rank below -1": ("candidates.parquet", "rank_big", set_at(0, -2),
                      r"candidates\.parquet: column 'rank_big' row 0 is -2, outside -1\.\.1"),
}


@pytest.mark.parametrize("case", OPEN_AND_EVAL)
def test_inconsistent_store_through_the_cli(good, tmp_path, case):
    file, column, edit, message = OPEN_AND_EVAL[case]
    store = tampered(good, tmp_path, file, column, edit)
    done = cli(EVAL[0], str(store), *EVAL[1:])
    assert done.returncode == 1, (done.returncode, done.stderr)  # a crash would be a signal, not 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("approxft eval: error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    with pytest.raises(StoreError, match=message):
        open_store(store).union_columns(MODELS)


# Columns no evaluation reads: caught where they load.
def test_candidate_tokens_and_topk_ids_when_they_load(good, tmp_path):
    store = open_store(good)
    assert store.vocab_rows == VOCAB
    offsets = store.offsets()
    cases = [
        ("candidates.parquet", "token", set_at(3, VOCAB), lambda s: s.candidates(),
         rf"candidates\.parquet: column 'token' row 3 is {VOCAB}, outside 0\.\.{VOCAB - 1}"),
        ("candidates.parquet", "token", set_at(int(offsets[1]), 0), lambda s: s.candidates(),
         rf"candidates\.parquet: column 'token' row {int(offsets[1])} is 0, but the run of position row 1 starts "
         rf"with its target, {store.positions['target'][1]}"),
        ("topk_big.parquet", "ids", set_at(5, VOCAB), lambda s: s.topk("big"),
         rf"topk_big\.parquet: column 'ids' row 5 is {VOCAB}, outside -1\.\.{VOCAB - 1}"),
        ("topk_big.parquet", "ids", set_at(0, -2), lambda s: s.topk("big"),
         r"topk_big\.parquet: column 'ids' row 0 is -2, outside -1\.\."),
    ]
    for i, (file, column, edit, load, message) in enumerate(cases):
        path = tampered(good, tmp_path / str(i), file, column, edit)
        opened = open_store(path)  # the small columns are fine
        with pytest.raises(StoreError, match=message):
            load(opened)


@pytest.mark.parametrize("value", [10**400, 0, True, "50257"])
def test_a_vocabulary_size_no_store_can_have_is_one_error(good, tmp_path, value):
    store = Path(shutil.copytree(good, tmp_path / "store"))
    meta = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**meta, "vocab_size": value}))
    done = cli(EVAL[0], str(store), *EVAL[1:])
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "store.json: malformed" in done.stderr and "vocab_size" in done.stderr, done.stderr

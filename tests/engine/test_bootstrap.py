"""The bootstrap over documents (``engine.bootstrap``): its coverage on documents drawn from a
known population, its invariances, and its wiring into reports on the Grimm store."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from engine.bootstrap import DocumentSums, paired_difference, with_document_intervals
from engine.report import BY_CONTEXT_SCHEMA, Figures, Report


def report_of(sums: DocumentSums, f: int = 0, shift: float = 0.0) -> Report:
    """A report whose figure is the sums' own (plus ``shift`` nats per position)."""
    splits = {}
    for s, name in enumerate(sums.splits):
        docs = sums.split == s
        n = int(sums.positions[f, docs].sum())
        splits[name] = Figures(n, float(sums.nll[f, docs].sum()) + shift * n, n)
    return Report(name="m", estimator=None, weights=None, splits=splits, by_context=pl.DataFrame(schema=BY_CONTEXT_SCHEMA))


def documents(rng, n_docs: int, *, mean: float = 3.0) -> DocumentSums:
    """One split of ``n_docs`` documents of 50-400 positions, each with its own difficulty."""
    positions = rng.integers(50, 400, size=n_docs)
    difficulty = rng.normal(mean, 0.4, size=n_docs)
    nll = np.array([rng.exponential(d, size=p).sum() for d, p in zip(difficulty, positions, strict=True)])
    return DocumentSums(cell_nll=nll[None, :, None], cell_positions=positions[None, :, None],
                        split=np.zeros(n_docs, dtype=np.int32), splits=["test"])


def test_the_interval_covers_the_populations_perplexity_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth = math.exp(3.0)  # E[nll per position] = E[difficulty] = 3 nats: weighted by positions, still 3
    covered = 0
    for trial in range(200):
        sums = documents(rng, 60)
        [report] = with_document_intervals([report_of(sums)], sums, seed=trial)
        lo, hi = report.documents["test"]
        assert lo < report.splits["test"].perplexity < hi
        covered += lo <= truth <= hi
    assert 0.88 <= covered / 200 <= 0.99, covered  # 95% nominal; percentile intervals run a little narrow


def test_identical_documents_give_no_spread_and_a_shift_moves_the_interval():
    sums = DocumentSums(cell_nll=np.full((1, 8, 1), 300.0), cell_positions=np.full((1, 8, 1), 100),
                        split=np.zeros(8, np.int32), splits=["test"])
    [flat] = with_document_intervals([report_of(sums)], sums)
    assert flat.documents["test"] == pytest.approx((math.exp(3.0), math.exp(3.0)))
    rng = np.random.default_rng(1)
    sums = documents(rng, 20)
    [plain, shifted] = with_document_intervals([report_of(sums), report_of(sums, shift=0.1)],
                                               DocumentSums.stack(sums, sums))
    np.testing.assert_allclose(np.array(shifted.documents["test"]) / np.array(plain.documents["test"]), math.exp(0.1))


def test_a_paired_difference_cancels_what_both_figures_share():
    rng = np.random.default_rng(3)
    a = documents(rng, 30)
    # b: the same documents, every one 5% easier: a large shared spread, a small steady difference.
    b = DocumentSums(cell_nll=a.cell_nll * 0.95, cell_positions=a.cell_positions, split=a.split, splits=a.splits)
    ra, rb = report_of(a), report_of(b)
    d = paired_difference(ra, rb, DocumentSums.stack(a, b), "test")
    assert d.delta == pytest.approx(ra.splits["test"].perplexity - rb.splits["test"].perplexity)
    assert d.lo < d.delta < d.hi and d.lo > 0  # always positive: the pairing keeps it so
    [ia, ib] = with_document_intervals([ra, rb], DocumentSums.stack(a, b))
    unpaired = (ia.documents["test"][0] - ib.documents["test"][1], ia.documents["test"][1] - ib.documents["test"][0])
    assert d.hi - d.lo < (unpaired[1] - unpaired[0]) / 5
    same = paired_difference(ra, ra, DocumentSums.stack(a, a), "test")
    assert (same.delta, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_reports_on_the_grimm_store_carry_document_intervals(grimm_dataset):
    ds = grimm_dataset
    code, split = ds.whole.document, ds.layout.document_split
    assert code.shape == (ds.n_positions,) and split.size == sum(ds.documents_per_split.values())
    # A document lies in one split, and its code says which; codes number (split, document) pairs in order.
    np.testing.assert_array_equal(split[code], ds.whole.split_code)
    keys = ds.store.positions.select(pl.struct("split", pl.col("document").cast(pl.String)).rank("dense") - 1)
    np.testing.assert_array_equal(code, keys.to_series().to_numpy())
    model = ds.models[0]
    sums = ds.model_document_sums([model])
    report = ds.model_report(model)
    for s, name in enumerate(ds.splits):
        assert sums.nll[0, split == s].sum() == pytest.approx(report.splits[name].nll_sum, rel=1e-9)
    blend = ds.blend(big=ds.models[1], tuned=ds.models[2], untuned=ds.models[3])
    w = np.array([1.0, 1.0, -1.0])
    [r] = with_document_intervals([blend.evaluate(w)], blend.document_sums(w))
    for name in ds.splits:
        lo, hi = r.documents[name]
        assert lo < r.splits[name].perplexity < hi
    # Per context-length bucket too (the plot's bands): the same documents, that bucket's positions.
    rows = r.by_context.filter(pl.col("positions") > 1000)
    assert rows.height > 6
    assert ((rows["docs_lo"] < rows["perplexity"]) & (rows["perplexity"] < rows["docs_hi"])).all()

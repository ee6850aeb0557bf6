"""The batch-evaluation API the README shows: per-position frames agree with the reports."""

import numpy as np
import polars as pl
import pytest

from tests.helpers import GRIMM_ROLES


def test_nll_frame_is_the_per_position_nll_behind_the_report(golden_dataset):
    blend = golden_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail")
    weights = np.array([1.0, 0.7, -0.5])
    frame = blend.nll_frame(weights)
    assert frame.columns == ["request", "position", "split", "document", "target", "nll"]
    assert frame.height == golden_dataset.n_positions
    np.testing.assert_array_equal(frame["nll"].to_numpy(), blend.nll(weights))
    report = blend.evaluate(weights)
    for split, figures in report.splits.items():
        mean = frame.filter(pl.col("split") == split)["nll"].mean()
        assert mean == pytest.approx(figures.mean_nll, rel=1e-6)

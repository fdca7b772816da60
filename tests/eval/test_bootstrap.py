"""Bootstrap intervals: pooled ratios by hand, pairing across rows, a slow reference, verdicts."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_model.eval.bootstrap import gap_closed, interval, pooled, resample_indices, verdict


def test_pooled_by_hand():
    num, den = np.array([2.0, 6.0, 1.0]), np.array([1, 3, 1])
    assert pooled(num, den) == pytest.approx(9 / 5)
    idx = np.array([[0, 0, 0], [1, 2, 2], [2, 1, 0]])
    np.testing.assert_allclose(pooled(num, den, idx), [2.0, 8 / 5, 9 / 5])
    assert np.isnan(pooled(np.zeros(2), np.zeros(2)))
    with pytest.raises(ValueError, match="one shape"):
        pooled(num, den[:2])


def test_replicates_equal_a_loop_over_resampled_clips():
    rng = np.random.default_rng(3)
    num, den = rng.uniform(0, 5, 40), rng.integers(1, 9, 40).astype(float)
    idx = resample_indices(40, 300, seed=7)
    assert idx.shape == (300, 40) and idx.min() >= 0 and idx.max() <= 39
    slow = [sum(num[i] for i in row) / sum(den[i] for i in row) for row in idx]
    np.testing.assert_allclose(pooled(num, den, idx), slow)
    np.testing.assert_array_equal(idx, resample_indices(40, 300, seed=7))  # seeded


def test_interval_is_the_percentile_range():
    reps = np.arange(1001, dtype=float)  # 0 … 1000
    lo, hi = interval(reps)
    assert lo == pytest.approx(25.0) and hi == pytest.approx(975.0)
    assert np.isnan(interval(np.array([np.nan, np.inf]))).all()  # no finite replicate
    assert interval(np.array([1.0, np.nan, 3.0]), level=1.0) == [1.0, 3.0]


def test_paired_differences_are_tighter_than_unpaired():
    """Two rows that share most of their per-clip variation: the paired interval of their
    difference excludes 0 although each row's own interval overlaps the other's."""
    rng = np.random.default_rng(0)
    clip_level = rng.uniform(2, 10, 60)
    a = clip_level + rng.normal(0, 0.1, 60)
    b = clip_level + 0.3 + rng.normal(0, 0.1, 60)
    ones = np.ones(60)
    idx = resample_indices(60, 2000, seed=1)
    ra, rb = pooled(a, ones, idx), pooled(b, ones, idx)
    assert interval(ra)[1] > interval(rb)[0]  # the rows' own intervals overlap
    d = interval(rb - ra)
    assert 0.2 < d[0] < 0.3 < d[1] < 0.4
    assert verdict(d) == "better" and verdict([-d[1], -d[0]]) == "worse" and verdict([-0.1, 0.2]) == "cannot tell"


def test_gap_closed():
    assert gap_closed(8.0, 8.0, 2.0) == pytest.approx(0.0)
    assert gap_closed(8.0, 2.0, 2.0) == pytest.approx(1.0)
    assert gap_closed(8.0, 5.0, 2.0) == pytest.approx(0.5)
    np.testing.assert_allclose(gap_closed(np.array([8.0, 6.0]), np.array([5.0, 4.0]), np.array([2.0, 2.0])),
                               [0.5, 0.5])


def test_gap_closed_is_undefined_without_a_gap():
    assert float(gap_closed(8.0, 9.0, 2.0)) == pytest.approx(-1 / 6)
    # a floor no better than the frozen first frame: nothing to close, G undefined (not 1)
    assert np.isnan(gap_closed(10.43, 10.43, 10.4299))
    g = gap_closed(np.array([8.0, 8.0]), np.array([4.0, 8.0]), np.array([0.0, 7.9]))
    assert g[0] == 0.5 and np.isnan(g[1])

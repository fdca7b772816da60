import numpy as np
import pytest

from trackgo_model.eval.metrics.frechet import (
    FrechetError,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)

from .reference import frechet_by_eigh


def test_identical_sets_give_zero():
    f = np.random.default_rng(0).normal(size=(200, 8))
    assert abs(frechet_distance_from_features(f, f.copy())) < 1e-8


def test_known_gaussians_closed_form():
    # diagonal covariances commute: d² = |Δμ|² + Σ(√a − √b)² = 9 + (1 + 1 + 1) = 12
    d = frechet_distance([0, 0, 0], np.diag([1.0, 4.0, 9.0]), [1, 2, 2], np.diag([4.0, 1.0, 16.0]))
    assert d == pytest.approx(12.0, abs=1e-9)
    # 1-D: (m1 − m2)² + (s1 − s2)²  with s the standard deviations 3 and 5
    assert frechet_distance([1.0], [[9.0]], [4.0], [[25.0]]) == pytest.approx(9.0 + 4.0)


def test_non_commuting_covariances_match_eigh_implementation():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    ours = frechet_distance_from_features(a, b)
    assert ours == pytest.approx(frechet_by_eigh(a, b), rel=1e-6)
    assert ours > 1.0


def test_sampled_gaussians_approach_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal(3.0, 2.0, size=(20000, 2))
    # |Δμ|² = 18, Σ(1 − 2)² = 2
    assert frechet_distance_from_features(a, b) == pytest.approx(20.0, rel=0.03)


def test_singular_covariances_are_regularised():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 12)), rng.normal(size=(5, 12)) + 1.0  # rank ≤ 4 in 12 dims
    d = frechet_distance_from_features(a, b)
    assert np.isfinite(d)
    assert d == pytest.approx(frechet_by_eigh(a, b), rel=1e-2, abs=1e-2)


def test_large_imaginary_part_raises_and_bad_shapes_raise():
    with pytest.raises(FrechetError, match="imaginary"):
        frechet_distance([0, 0], np.diag([-1.0, 1.0]), [0, 0], np.eye(2))
    with pytest.raises(FrechetError):
        frechet_distance([0, 0], np.eye(2), [0, 0, 0], np.eye(3))
    with pytest.raises(FrechetError):
        feature_statistics(np.zeros((1, 4)))

"""K rule (Eq. 10) and K-means control points."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data.points import control_points, k_for_area, sample_points


@pytest.mark.parametrize("p,k", [(0.0, 16), (0.05, 16), (0.0999, 16), (0.1, 16), (0.175, 28),
                                 (0.25, 40), (0.4, 64), (0.4001, 64), (0.9, 64), (1.0, 64)])
def test_k_rule_breakpoints(p, k):
    assert k_for_area(p) == k


def test_k_rule_is_eq10_rounded_to_nearest():
    for p in np.linspace(0.1, 0.4, 31):
        assert k_for_area(p) == int(np.floor(16 + 48 * (p - 0.1) / 0.3 + 0.5 + 1e-9))
    with pytest.raises(ValueError):
        k_for_area(1.5)


def _blob(h=60, w=80):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - 30) ** 2 / 400 + (yy - 25) ** 2 / 200) <= 1


def test_control_points_inside_mask_and_deterministic():
    mask = _blob()
    a = control_points(mask, 16, 7)
    b = control_points(mask, 16, 7)
    c = control_points(mask, 16, 8)
    assert a.shape == (16, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    xs, ys = np.round(a[:, 0]).astype(int), np.round(a[:, 1]).astype(int)
    assert mask[ys, xs].all()  # centres of a convex blob lie inside it
    # evenly spread: no two centres closer than 2 px
    d = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.eye(16) * 1e9
    assert d.min() > 2.0


def test_control_points_agrees_with_direct_kmeans():
    """Same draw of 3K pixels + same KMeans → same centres (a second, plain implementation)."""
    from sklearn.cluster import KMeans

    mask = _blob()
    rng = np.random.default_rng(3)
    got = control_points(mask, 10, np.random.default_rng(3))
    ys, xs = np.nonzero(mask)
    pick = rng.choice(len(xs), 30, replace=False)
    km = KMeans(10, n_init=1, random_state=int(rng.integers(2**31 - 1)))
    ref = km.fit(np.stack([xs[pick], ys[pick]], 1).astype(float)).cluster_centers_
    ref = ref[np.lexsort((ref[:, 0], ref[:, 1]))]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_tiny_mask_gives_fewer_points():
    mask = np.zeros((10, 10), bool)
    mask[2, 3] = mask[5, 5] = mask[7, 1] = True
    pts = control_points(mask, 16, 0)
    assert sorted(map(tuple, pts.tolist())) == [(1.0, 7.0), (3.0, 2.0), (5.0, 5.0)]
    with pytest.raises(ValueError, match="empty"):
        control_points(np.zeros((4, 4), bool), 4, 0)


def test_sample_points_per_component():
    labels = np.zeros((100, 100), np.int32)
    labels[:5, :5] = 1             # 0.25 %  → 16 points
    labels[20:70, 10:60] = 2       # 25 %    → 40 points
    labels[80:, :] = 4             # 20 %    → 32 points (id 3 absent: component 3 stays unused)
    pts, comps = sample_points(labels, seed=1)
    assert pts.shape == (16 + 40 + 32, 2) and comps.dtype == np.int64
    assert np.bincount(comps).tolist() == [16, 40, 0, 32]
    xs, ys = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
    np.testing.assert_array_equal(labels[ys, xs], comps + 1)
    p2, c2 = sample_points(labels, seed=1)
    np.testing.assert_array_equal(pts, p2)
    p3, _ = sample_points(labels, seed=2)
    assert not np.array_equal(pts, p3)
    empty_p, empty_c = sample_points(np.zeros((8, 8), int), seed=0)
    assert empty_p.shape == (0, 2) and empty_c.shape == (0,)


def _ring(h=80, w=80, r_in=24, r_out=27):
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - 40, yy - 40)
    return (d >= r_in) & (d <= r_out)


def _thin_arc(h=60, w=90):
    """A one-pixel-wide curved stroke (a parabola), 8-connected."""
    mask = np.zeros((h, w), bool)
    xs = np.arange(5, 85)
    ys = np.round(10 + 0.012 * (xs - 45) ** 2).astype(int)
    mask[ys, xs] = True
    return mask


@pytest.mark.parametrize("make,k", [(_ring, 3), (_ring, 1), (_thin_arc, 16)])
def test_centres_of_thin_and_ring_masks_lie_on_the_mask(make, k):
    """Plain K-means puts centres of curved clusters off the object (a ring's single centre is its
    hole); every returned point must be a mask pixel, and no two may coincide."""
    from sklearn.cluster import KMeans

    mask = make()
    pts = control_points(mask, k, 5)
    xs, ys = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
    assert mask[ys, xs].all()
    assert len({(x, y) for x, y in zip(xs, ys)}) == len(pts) == k
    # the same draw through plain K-means has centres off the mask: the snapping did the work
    rng = np.random.default_rng(5)
    yy, xx = np.nonzero(mask)
    pick = rng.choice(len(xx), min(3 * k, len(xx)), replace=False)
    km = KMeans(k, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(
        np.stack([xx[pick], yy[pick]], 1).astype(float))
    c = km.cluster_centers_
    off = ~mask[np.round(c[:, 1]).astype(int), np.round(c[:, 0]).astype(int)]
    assert off.any()
    # centres already on the mask are kept as K-means placed them; the others moved onto the
    # nearest sample of their own cluster
    got = {tuple(p) for p in np.round(pts.astype(np.float64), 4).tolist()}
    for j in range(k):
        members = np.stack([xx[pick], yy[pick]], 1)[km.labels_ == j].astype(float)
        want = c[j] if not off[j] else members[np.argmin(((members - c[j]) ** 2).sum(1))]
        assert tuple(np.round(np.float32(want).astype(np.float64), 4)) in got


def test_ring_with_one_point_gets_the_sample_nearest_the_hole_centre():
    mask = _ring()
    (p,) = control_points(mask, 1, 0)
    assert mask[int(round(p[1])), int(round(p[0]))]
    assert np.hypot(p[0] - 40, p[1] - 40) <= 27.5

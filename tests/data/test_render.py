"""The renderer of P: exact pixel sets, colours, visibility, overlap order."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data.render import COLOURS, colour_of, overlay_tracks, render_trajectories


def test_colours_fixed_distinct_bright():
    assert COLOURS.shape[0] >= 6 and COLOURS.dtype == np.uint8
    assert len({tuple(c) for c in COLOURS.tolist()}) == len(COLOURS)
    assert (COLOURS.max(1) == 255).all()          # bright: one channel saturated
    d = np.abs(COLOURS[:6, None].astype(int) - COLOURS[None, :6]).sum(-1) + np.eye(6, dtype=int) * 999
    assert d.min() >= 255                          # first six far apart
    assert colour_of(2) == (0, 0, 255)


def _reference(tracks, vis, comps, h, w, s=4):
    """Plain loops: the documented pixel set, later points drawn over earlier ones."""
    out = np.zeros((len(tracks), h, w, 3), np.uint8)
    for t in range(len(tracks)):
        for n in range(tracks.shape[1]):
            if not vis[t, n]:
                continue
            cx, cy = int(np.round(tracks[t, n, 0])), int(np.round(tracks[t, n, 1]))
            for y in range(cy - s // 2, cy - s // 2 + s):
                for x in range(cx - s // 2, cx - s // 2 + s):
                    if 0 <= x < w and 0 <= y < h:
                        out[t, y, x] = COLOURS[comps[n]]
    return out


def test_exact_pixel_set_on_tiny_canvas():
    tracks = np.array([[[5.0, 4.0], [0.4, 0.0]]], np.float32)     # L=1, N=2
    vis = np.array([[True, True]])
    P = render_trajectories(tracks, vis, np.array([1, 3]), 10, 12)
    green = np.argwhere((P[0] == COLOURS[1]).all(-1))
    assert sorted(map(tuple, green.tolist())) == [(y, x) for y in range(2, 6) for x in range(3, 7)]
    yellow = np.argwhere((P[0] == COLOURS[3]).all(-1))               # clipped at the corner
    assert sorted(map(tuple, yellow.tolist())) == [(y, x) for y in range(0, 2) for x in range(0, 2)]
    assert (P[0].sum(-1) > 0).sum() == 16 + 4                        # black elsewhere


def test_invisible_draws_nothing_and_matches_reference():
    rng = np.random.default_rng(0)
    L, N, H, W = 5, 30, 20, 24
    tracks = rng.uniform(-3, 26, (L, N, 2)).astype(np.float32)
    vis = rng.random((L, N)) > 0.3
    comps = rng.integers(0, 6, N)
    P = render_trajectories(tracks, vis, comps, H, W)
    np.testing.assert_array_equal(P, _reference(tracks, vis, comps, H, W))
    none = render_trajectories(tracks, np.zeros_like(vis), comps, H, W)
    assert none.max() == 0


def test_bad_shapes():
    with pytest.raises(ValueError):
        render_trajectories(np.zeros((2, 3, 2)), np.zeros((2, 4), bool), np.zeros(3, int), 8, 8)
    with pytest.raises(ValueError):
        render_trajectories(np.zeros((2, 3, 2)), np.zeros((2, 3), bool), np.array([0, 1, 99]), 8, 8)


def test_overlay_tracks_draws_in_colour():
    img = np.zeros((20, 20, 3), np.uint8)
    tracks = np.array([[[2.0, 10.0]], [[10.0, 10.0]], [[17.0, 10.0]]], np.float32)
    out = overlay_tracks(img, tracks, np.ones((3, 1), bool), np.array([0]))
    assert out[10, 6, 0] > 100 and out[10, 6, 1] == 0      # red line between the positions
    assert out[0, 0].sum() == 0

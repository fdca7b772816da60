"""Clip statistics and named reject reasons, including a real shot cut in bikes.mp4."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data import filters as F
from trackgo_data.video import read_frames


def _tracks(L=6, N=4, step=(2.0, 0.0)):
    t = np.arange(L, dtype=np.float32)[:, None, None]
    base = np.linspace(10, 40, N, dtype=np.float32)[None, :, None].repeat(2, -1)
    return base + t * np.array(step, np.float32), np.ones((L, N), bool)


def test_reasons_are_named_constants():
    assert set(F.REASONS) == {"too_little_motion", "too_few_visible_points", "scene_cut", "camera_motion",
                              "too_small", "too_short", "undecodable", "empty_file", "no_components"}


def test_motion_and_visibility_stats_hand_computed():
    tracks, vis = _tracks(L=6, N=4, step=(3.0, 4.0))       # 5 px per frame
    vis[:, 3] = False                                      # point 3 never visible
    vis[5, 0] = False                                      # point 0 lost in the last frame
    s = F.clip_stats(tracks, vis, components=np.array([0, 0, 1, 1]))
    # largest visible displacement: point 0 → 4 frames · 5 px = 20, points 1, 2 → 25, point 3 → 0
    assert s["median_motion"] == pytest.approx(np.median([20, 25, 25, 0]))
    assert s["mean_motion"] == pytest.approx(70 / 4)
    assert s["visible_ratio"] == pytest.approx((24 - 6 - 1) / 24)
    assert s["num_points"] == 4 and s["num_components"] == 2
    assert s["scene_cut"] == -1.0 and s["camera_motion"] == -1.0


def test_check_clip_each_reason():
    cfg = F.FilterConfig(min_median_motion=4.0, min_visible_ratio=0.5, max_camera_motion=3.0)
    ok = {"num_points": 10, "num_components": 1, "visible_ratio": 0.9, "median_motion": 10.0,
          "scene_cut": 1.0, "camera_motion": 1.0}
    assert F.check_clip(ok, cfg) is None
    assert F.check_clip({**ok, "median_motion": 3.9}, cfg) == F.TOO_LITTLE_MOTION
    assert F.check_clip({**ok, "visible_ratio": 0.4}, cfg) == F.TOO_FEW_VISIBLE_POINTS
    assert F.check_clip({**ok, "scene_cut": 5.0}, cfg) == F.SCENE_CUT
    assert F.check_clip({**ok, "num_points": 0, "num_components": 0}, cfg) == F.NO_COMPONENTS
    assert F.check_clip({**ok, "camera_motion": 3.5}, cfg) == F.CAMERA_MOTION
    assert F.check_clip({**ok, "camera_motion": 3.5}, F.FilterConfig()) is None   # off by default


def test_camera_motion_of_a_pan():
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur((rng.random((120, 300)) * 255).astype(np.uint8), (0, 0), 2)
    grey = np.stack([big[20:100, 10 + 3 * t: 10 + 3 * t + 160] for t in range(6)])   # 3 px/frame pan
    assert F.camera_motion(grey) == pytest.approx(3.0, abs=0.2)
    assert F.camera_motion(grey, scale=2.0) == pytest.approx(6.0, abs=0.4)
    assert F.camera_motion(np.repeat(grey[:1], 4, 0)) == pytest.approx(0.0, abs=0.05)


def test_synthetic_cut_vs_fast_motion():
    import cv2

    rng = np.random.default_rng(0)
    a = [cv2.normalize(cv2.GaussianBlur(rng.random((40, 60)).astype(np.float32), (0, 0), 3), None, 0, 255,
                       cv2.NORM_MINMAX).astype(np.uint8) for _ in range(2)]
    steady = np.stack([np.roll(a[0], 3 * t, axis=1) for t in range(8)])  # fast pan: all pairs alike
    score, _ = F.scene_cut_score(steady)
    assert score < 1.8
    cut = steady.copy()
    cut[5:] = np.stack([np.roll(a[1], 3 * t, axis=1) for t in range(3)])  # another shot from t=5
    score, t = F.scene_cut_score(cut)
    assert score > 1.8 and t == 5


def _bikes_cut(path):
    """First shot cut of bikes.mp4, located independently: the frame pair whose mean absolute
    difference is an outlier (> 5× the median of all pairs)."""
    g = read_frames(path, count=60, size=(128, 72)).astype(np.float32).mean(-1)
    d = np.abs(np.diff(g, axis=0)).mean((1, 2))
    cuts = np.nonzero(d > 5 * np.median(d))[0] + 1
    assert len(cuts) >= 1
    return int(cuts[0]), g


def test_real_scene_cut_in_bikes(sample_videos):
    cut, _ = _bikes_cut(sample_videos["bikes"])
    assert 20 < cut < 40                                   # the first shot change (frame 30)
    L = 12
    across = read_frames(sample_videos["bikes"], cut - 6, L, size=(128, 72))
    before = read_frames(sample_videos["bikes"], cut - 1 - L, L, size=(128, 72))
    tracks, vis = _tracks(L=L, N=3, step=(2.0, 0.0))
    comps = np.zeros(3, int)
    s_cut = F.clip_stats(tracks, vis, across, components=comps)
    s_ok = F.clip_stats(tracks, vis, before, components=comps)
    assert s_cut["scene_cut_frame"] == 6
    assert F.check_clip(s_cut) == F.SCENE_CUT
    assert F.check_clip(s_ok) is None


def test_clip_stats_reuses_the_segmenters_grey_frames(sample_videos):
    """The flow segmenter's grey frames give the same stats as the filters' own reduction;
    a grey stack of the right shape is used as is, one of another shape is ignored."""
    from trackgo_data.segment import get_segmenter

    frames = read_frames(sample_videos["bikes"], 24, 10, size=(160, 96))
    tracks, vis = _tracks(L=10, N=3, step=(2.0, 0.0))
    comps = np.zeros(3, int)
    cfg = F.FilterConfig(analysis_long_side=128)
    seg = get_segmenter("flow", flow_long_side=128)
    seg.segment(frames)
    own = F.clip_stats(tracks, vis, frames, components=comps, cfg=cfg)
    assert own["scene_cut"] > 1.8                                      # this window spans the cut
    assert F.clip_stats(tracks, vis, frames, components=comps, cfg=cfg, grey=seg.last_grey) == own
    flat = np.full_like(seg.last_grey, 100)                            # used as is: no cut, no pan
    s = F.clip_stats(tracks, vis, frames, components=comps, cfg=cfg, grey=flat)
    assert s["scene_cut"] == 0.0 and s["camera_motion"] == pytest.approx(0.0, abs=0.05)
    wrong = np.full((10, 40, 64), 100, np.uint8)                        # another size: ignored
    assert F.clip_stats(tracks, vis, frames, components=comps, cfg=cfg, grey=wrong) == own

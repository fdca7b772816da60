"""Clip statistics and named reject reasons, including a real shot cut in bikes.mp4."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data import filters as F
from trackgo_data.samples import sample_video_paths
from trackgo_data.video import read_frames


def sample_videos_path(name):
    return sample_video_paths()[name]


def _tracks(L=6, N=4, step=(2.0, 0.0)):
    t = np.arange(L, dtype=np.float32)[:, None, None]
    base = np.linspace(10, 40, N, dtype=np.float32)[None, :, None].repeat(2, -1)
    return base + t * np.array(step, np.float32), np.ones((L, N), bool)


def test_reasons_are_named_constants():
    assert set(F.REASONS) == {"too_little_motion", "too_few_visible_points", "scene_cut", "camera_motion",
                              "too_small", "too_short", "undecodable", "empty_file", "no_components",
                              "low_quality_blur", "low_quality_blocks", "low_quality_letterbox",
                              "low_quality_static", "low_frame_rate"}
    assert set(F.FRAME_REASONS) <= set(F.REASONS)


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
    cfg = F.FilterConfig(min_median_motion=4.0, min_visible_ratio=0.5)
    ok = {"num_points": 10, "num_components": 1, "visible_ratio": 0.9, "median_motion": 10.0,
          "scene_cut": 1.0, "camera_motion_rel": 0.001, "static_ratio": 0.0, "letterbox": 0.0,
          "sharpness": 1.5, "blockiness": 0.0}
    assert F.check_clip(ok, cfg) is None
    assert F.check_clip({**ok, "median_motion": 3.9}, cfg) == F.TOO_LITTLE_MOTION
    assert F.check_clip({**ok, "visible_ratio": 0.4}, cfg) == F.TOO_FEW_VISIBLE_POINTS
    assert F.check_clip({**ok, "scene_cut": 5.0}, cfg) == F.SCENE_CUT
    assert F.check_clip({**ok, "num_points": 0, "num_components": 0}, cfg) == F.NO_COMPONENTS
    # the camera filter is on by default, at the measured threshold
    assert cfg.max_camera_motion_rel == 0.008
    assert F.check_clip({**ok, "camera_motion_rel": 0.0081}, cfg) == F.CAMERA_MOTION
    assert F.check_clip({**ok, "camera_motion_rel": 0.0079}, cfg) is None
    assert F.check_clip({**ok, "camera_motion_rel": 0.05}, F.FilterConfig(max_camera_motion_rel=None)) is None
    assert F.check_clip({**ok, "sharpness": 0.49}, cfg) == F.LOW_QUALITY_BLUR
    assert F.check_clip({**ok, "blockiness": 0.6}, cfg) == F.LOW_QUALITY_BLOCKS
    assert F.check_clip({**ok, "letterbox": 0.25}, cfg) == F.LOW_QUALITY_LETTERBOX
    assert F.check_clip({**ok, "static_ratio": 0.5}, cfg) == F.LOW_QUALITY_STATIC
    # frame reasons come before track reasons; frozen frames before the cut they look like
    assert F.check_clip({**ok, "static_ratio": 0.5, "scene_cut": 9.0, "median_motion": 0.0}, cfg) == F.LOW_QUALITY_STATIC
    assert F.check_clip({**ok, "camera_motion_rel": 0.05, "median_motion": 0.0}, cfg) == F.CAMERA_MOTION
    assert F.check_frames({**ok, "median_motion": 0.0}, cfg) is None
    assert F.check_tracks({**ok, "sharpness": 0.0}, cfg) is None


def _texture(h, w, seed=0, sigma=2.0):
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.uint8), (0, 0), sigma)


def test_camera_motion_of_a_pan():
    big = _texture(120, 300)
    grey = np.stack([big[20:100, 10 + 3 * t: 10 + 3 * t + 160] for t in range(6)])   # 3 px/frame pan
    assert F.camera_motion(grey) == pytest.approx(3.0, abs=0.2)
    assert F.camera_motion(grey, scale=2.0) == pytest.approx(6.0, abs=0.4)
    assert F.camera_motion(np.repeat(grey[:1], 4, 0)) == pytest.approx(0.0, abs=0.05)
    diag = np.stack([big[10 + 2 * t: 90 + 2 * t, 10 + 2 * t: 170 + 2 * t] for t in range(6)])
    assert F.camera_motion(diag) == pytest.approx(2 * np.sqrt(2), abs=0.25)


def test_camera_motion_ignores_a_large_moving_object():
    """A still camera with a textured object over 30 % of the frame moving 6 px/frame: the
    camera did not move (a global phase correlation locks onto the object instead)."""
    import cv2

    bg, obj = _texture(90, 160, seed=1), _texture(40, 108, seed=2)
    frames = []
    for t in range(8):
        f = bg.copy()
        f[25:65, 6 + 6 * t: 114 + 6 * t] = obj                                          # 30 % of 90×160
        frames.append(f)
    grey = np.stack(frames)
    assert F.camera_motion(grey) == pytest.approx(0.0, abs=0.1)
    win = cv2.createHanningWindow((160, 90), cv2.CV_32F)
    (dx, _), _ = cv2.phaseCorrelate(grey[0].astype(np.float32), grey[1].astype(np.float32), win)
    assert abs(dx) > 3   # why phase correlation alone was not used


def test_static_ratio_and_letterbox_hand_computed():
    moving = np.stack([np.roll(_texture(72, 128), 3 * t, axis=1) for t in range(9)])
    assert F.static_ratio(moving) == 0.0
    doubled = np.repeat(moving[::2], 2, axis=0)[:9]                       # pairs: same, new, same, …
    assert F.static_ratio(doubled) == 0.5                                 # 4 of the 8 pairs
    assert F.static_ratio(np.repeat(moving[:1], 9, axis=0)) == 1.0
    boxed = moving.copy()
    boxed[:, :9] = 0
    boxed[:, -12:] = 16                                                   # dark, flat bars
    assert F.letterbox(boxed) == pytest.approx(21 / 72)
    pillar = moving.copy()
    pillar[:, :, :16] = 0
    pillar[:, :, -16:] = 0
    assert F.letterbox(pillar) == pytest.approx(32 / 128)
    assert F.letterbox(moving) == 0.0
    bright = moving.copy()
    bright[:, :9] = 200                                                   # flat but not dark: picture
    assert F.letterbox(bright) == 0.0


def test_sharpness_against_a_second_implementation_and_blur():
    """sharpness = E[(f − G₁f)²] / E[(G₁f − G₂f)²]; checked with scipy's Gaussian, and it falls as
    the frame is blurred or up-scaled."""
    import cv2
    from scipy.ndimage import gaussian_filter

    frame = read_frames(sample_videos_path("bigbuckbunny"), 40, 1, size=(512, 288))[0]
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    f = g.astype(np.float64)
    b1, b2 = gaussian_filter(f, 1.0, mode="mirror"), gaussian_filter(f, 2.0, mode="mirror")
    ref = np.mean((f - b1) ** 2) / np.mean((b1 - b2) ** 2)
    assert F.sharpness(g) == pytest.approx(ref, rel=0.03)
    assert F.sharpness(g) > 1.0
    blurred = [F.sharpness(cv2.GaussianBlur(g, (0, 0), s)) for s in (0.7, 1.0, 2.0)]
    assert blurred == sorted(blurred, reverse=True) and blurred[1] < 0.5 < blurred[0]
    up3 = cv2.resize(cv2.resize(g, (170, 96), interpolation=cv2.INTER_AREA), (512, 288))
    assert F.sharpness(up3) < 0.5
    assert F.sharpness(np.full((64, 64), 90, np.uint8)) == 0.0


def test_blockiness_of_a_block_grid():
    """A smooth picture plus 8×8 blocks of random levels: the column (row) differences gain the
    blocks' |step| at every 8th position and nothing elsewhere, so the score (the extra step at
    the grid, max over axes) is about the mean |step| between neighbouring blocks."""
    import cv2

    rng = np.random.default_rng(0)
    levels = rng.integers(60, 200, (18, 32)).astype(np.float64)
    blocks = np.kron(levels, np.ones((8, 8)))                             # 144×256, block edges only
    smooth = _texture(144, 256, seed=3, sigma=3).astype(np.float64)
    img = np.clip(smooth * 0.5 + 0.05 * (blocks - 128), 0, 255).astype(np.uint8)
    step = max(np.abs(np.diff(0.05 * levels, axis=a)).mean() for a in (0, 1))   # ≈ 2.4 grey levels
    assert 0.6 * step < F.blockiness(img, 8.0) < 1.2 * step
    assert F.blockiness(smooth.astype(np.uint8), 8.0) == 0.0              # no grid: no peak
    assert F.blockiness(img, 3.0) == 0.0                                  # blocks below 4 px: not measured
    # JPEG at quality 10 on a real frame gives a grid; at 95 none
    frame = cv2.cvtColor(read_frames(sample_videos_path("bikes"), 40, 1)[0], cv2.COLOR_RGB2GRAY)
    def jpeg(q):
        return cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_GRAYSCALE)
    assert F.blockiness(jpeg(10), 8.0) > 1.0 > F.FilterConfig().max_blockiness > F.blockiness(jpeg(95), 8.0)


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
    # the shot before the cut is a tracking shot: no cut, but the camera filter takes it
    assert F.check_clip(s_ok, F.FilterConfig(max_camera_motion_rel=None)) is None
    assert F.check_clip(s_ok) == F.CAMERA_MOTION and s_ok["camera_motion_rel"] > 0.02


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
    assert s["static_ratio"] == 1.0
    wrong = np.full((10, 40, 64), 100, np.uint8)                        # another size: ignored
    assert F.clip_stats(tracks, vis, frames, components=comps, cfg=cfg, grey=wrong) == own

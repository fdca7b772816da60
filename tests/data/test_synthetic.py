"""The toy's synthetic world: determinism, ground truth that matches the pixels, files, idempotency."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trackgo_data.config import ConfigError
from trackgo_data.synthetic import (SyntheticConfig, signed_distance, generate_videos, load_ground_truth,
                                    make_video, video_id_for)

SMALL = dict(width=64, height=64, num_frames=6, min_radius=6.0, max_radius=8.0, min_speed=2.0, max_speed=3.0)


def test_deterministic_and_distinct():
    cfg = SyntheticConfig(**SMALL)
    a, b, c = make_video(cfg, 3), make_video(cfg, 3), make_video(cfg, 4)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.paths, b.paths)
    assert not np.array_equal(a.frames, c.frames)
    other_seed = make_video(SyntheticConfig(**SMALL, seed=1), 3)
    assert not np.array_equal(a.frames, other_seed.frames)
    assert a.frames.shape == (6, 64, 64, 3) and a.frames.dtype == np.uint8
    assert a.labels.shape == (6, 64, 64) and a.paths.shape == (6, len(a.shape), 2)
    assert len(set(a.shape)) == len(a.shape)  # distinct shapes


def test_signed_distance_by_hand():
    dx, dy = np.array([0.0, 5.0, 0.0, 3.0]), np.array([0.0, 0.0, 7.0, 4.0])
    assert np.allclose(signed_distance("disc", dx, dy, 5.0), [-5.0, 0.0, 2.0, 0.0])
    # square of half-side 0.85 r = 4.25: Chebyshev distance − 4.25
    assert np.allclose(signed_distance("square", dx, dy, 5.0), [-4.25, 0.75, 2.75, -0.25])
    # triangle (apex up, circumradius 1.15 r): the apex at (0, −1.15 r) lies on the boundary
    assert abs(signed_distance("triangle", np.array([0.0]), np.array([-5.75]), 5.0)[0]) < 1e-9


def test_labels_follow_the_paths():
    """A lone object's visible mask at frame t is its frame-0 mask moved by the path offset, and its
    centroid moves with the path; everything stays inside the frame and within the speed bounds."""
    cfg = SyntheticConfig(**SMALL, min_objects=1, max_objects=1, pan_prob=0.0)
    for i in range(6):
        v = make_video(cfg, i)
        c0 = np.argwhere(v.labels[0] == 1).mean(0)[::-1]  # (x, y)
        for t in range(1, cfg.num_frames):
            ct = np.argwhere(v.labels[t] == 1).mean(0)[::-1]
            assert np.allclose(ct - c0, v.paths[t, 0] - v.paths[0, 0], atol=1.0), (i, t)
        step = np.linalg.norm(np.diff(v.paths[:, 0], axis=0), axis=1)
        assert step.max() <= cfg.max_speed + 1e-4 and np.allclose(step, step[0], atol=1e-4)  # constant speed
        r = v.radius[0] * 1.15
        assert (v.paths[..., 0] - r >= -1).all() and (v.paths[..., 0] + r <= cfg.width + 1).all()
        if v.path_kind[0] == "line":  # straight: every step in the same direction
            d = np.diff(v.paths[:, 0], axis=0)
            assert np.allclose(d, d[0], atol=1e-4)


def test_occlusion_hides_the_back_object_only():
    cfg = SyntheticConfig(**SMALL, min_objects=2, max_objects=2, occlusion_prob=1.0, pan_prob=0.0)
    occluded = 0
    for i in range(8):
        v = make_video(cfg, i)
        area = np.array([[(v.labels[t] == j + 1).sum() for j in range(2)] for t in range(cfg.num_frames)])
        # the front object (drawn last) is never covered: its visible area varies only by aliasing
        assert area[:, 1].max() - area[:, 1].min() <= 0.25 * area[:, 1].max() + 4, i
        occluded += int(area[:, 0].min() < 0.8 * area[:, 0].max())
    assert occluded >= 3  # paths aimed across each other do occlude


def test_background_pans_by_the_recorded_offset():
    """frame_T(x) = frame_0(x + pan_T) on the background (bilinear resampling of frame 0)."""
    import cv2

    cfg = SyntheticConfig(**{**SMALL, "min_radius": 4.0, "max_radius": 4.0, "num_frames": 8},
                          min_objects=1, max_objects=1, pan_prob=1.0, max_pan_speed=1.0, crf=0)
    v = make_video(cfg, 2)
    assert np.linalg.norm(v.pan[1] - v.pan[0]) <= 1.0 + 1e-6 and np.linalg.norm(v.pan[-1]) > 1.0
    H, W = v.labels.shape[1:]
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    f0, fT = v.frames[0].astype(np.float32), v.frames[-1].astype(np.float32)
    moved = cv2.remap(f0, gx + v.pan[-1][0], gy + v.pan[-1][1], cv2.INTER_LINEAR)
    fg = cv2.dilate(((v.labels[0] > 0) | (v.labels[-1] > 0)).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    keep = ~fg
    keep[:6], keep[-6:], keep[:, :6], keep[:, -6:] = False, False, False, False
    err_pan = np.abs(moved - fT)[keep].mean()
    err_still = np.abs(f0 - fT)[keep].mean()
    assert err_pan < 1.5 and err_pan < 0.3 * err_still, (err_pan, err_still)


def test_files_idempotent_and_config_checked(tmp_path):
    from trackgo_data.video import decode_mp4

    cfg = SyntheticConfig(**SMALL, num_videos=3, crf=10)
    paths = generate_videos(tmp_path, cfg)
    assert [p.name for p in paths] == [f"{video_id_for(0, i)}.mp4" for i in range(3)]
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert generate_videos(tmp_path, cfg) == paths
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes  # nothing rewritten
    frames = decode_mp4(paths[1])
    ref = make_video(cfg, 1)
    mse = np.mean((frames.astype(float) - ref.frames.astype(float)) ** 2)
    assert frames.shape == ref.frames.shape and 10 * np.log10(255 ** 2 / mse) > 30
    gt = load_ground_truth(paths[1].with_suffix(".npz"))
    assert np.array_equal(gt["labels"], ref.labels) and np.allclose(gt["paths"], ref.paths)
    assert gt["shape"] == ref.shape
    assert json.loads((tmp_path / "synthetic_config.json").read_text())["config"]["num_videos"] == 3
    with pytest.raises(ConfigError, match="another config"):
        generate_videos(tmp_path, SyntheticConfig(**SMALL, num_videos=3, seed=5))
    paths[2].unlink()  # a missing video is filled in, the others are kept
    generate_videos(tmp_path, cfg)
    assert paths[2].is_file() and paths[0].stat().st_mtime_ns == mtimes[paths[0]]


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        SyntheticConfig(width=63)
    with pytest.raises(ValueError):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(FileNotFoundError, match="ground truth"):
        load_ground_truth("/nonexistent/x.npz")


def test_object_hues_come_from_the_palette():
    import colorsys

    from trackgo_data.synthetic import object_hues

    cfg = SyntheticConfig(num_videos=4, seed=3, object_hues=(0.0, 0.5), hue_jitter=0.02, min_objects=2,
                          max_objects=2, texture_contrast=0.0, object_saturation=(0.9, 0.9), object_value=(0.9, 0.9))
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = object_hues(cfg, 2, rng)
        dist = np.minimum(np.abs(h[:, None] - np.array([0.0, 0.5, 1.0])[None]), 1).min(axis=1)
        assert (dist <= 0.02 + 1e-12).all()
        assert abs(((h[0] - h[1] + 0.5) % 1.0) - 0.5) > 0.4  # two objects: one of each hue
    video = make_video(cfg, 1)
    for j in (1, 2):  # the rendered colour of each object is one of the palette's hues
        inside = video.labels[0] == j
        rgb = video.frames[0][inside].mean(axis=0) / 255.0
        hue = colorsys.rgb_to_hsv(*rgb)[0]
        assert min(abs(hue - 0.0), abs(hue - 0.5), abs(hue - 1.0)) < 0.06
    with pytest.raises(ValueError, match="object_hues"):
        SyntheticConfig(object_hues=(1.2,))

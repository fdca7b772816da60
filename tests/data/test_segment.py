"""Motion segmentation: synthetic ground truth, the real sample clips, DEVA's error and selection."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data.segment import available_segmenters, get_segmenter, relabel_by_area
from trackgo_data.video import read_frames


def _texture(h, w, seed):
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 1.2)


def _scene(L=10, h=144, w=256, obj_step=(3, 1), pan=(0, 0), seed=0):
    """Textured background (optionally panning) with a textured 40×30 square moving on it.
    Returns frames and the square's true mask per frame."""
    pad = 40
    bg = _texture(h + 2 * pad + abs(pan[1]) * L, w + 2 * pad + abs(pan[0]) * L, seed)
    obj = _texture(30, 40, seed + 1)
    frames, masks = [], []
    for t in range(L):
        ox, oy = pad + pan[0] * t, pad + pan[1] * t
        f = bg[oy:oy + h, ox:ox + w].copy()
        x0, y0 = 60 + obj_step[0] * t, 50 + obj_step[1] * t
        f[y0:y0 + 30, x0:x0 + 40] = obj
        m = np.zeros((h, w), bool)
        m[y0:y0 + 30, x0:x0 + 40] = True
        frames.append(f)
        masks.append(m)
    return np.stack(frames), np.stack(masks)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_registry_and_config():
    assert set(available_segmenters()) == {"flow", "deva"}
    with pytest.raises(ValueError, match="unknown segmenter"):
        get_segmenter("sam9")
    with pytest.raises(ValueError, match="unknown config"):
        get_segmenter("flow", threshold=3)
    seg = get_segmenter("flow")
    assert seg.name == "flow" and seg.version


def test_static_video_has_no_components():
    frames = np.repeat(_texture(144, 256, 0)[None], 8, 0)
    labels = get_segmenter("flow").segment(frames)
    assert labels.shape == (8, 144, 256) and labels.dtype == np.int32
    assert labels.max() == 0


@pytest.mark.parametrize("pan", [(0, 0), (2, 1)])
def test_moving_square_found_with_and_without_camera_pan(pan):
    frames, masks = _scene(pan=pan)
    labels = get_segmenter("flow").segment(frames)
    assert labels.max() == 1                         # one component, not the (panning) background
    assert _iou(labels[0] == 1, masks[0]) > 0.6
    for t in (5, 9):                                 # followed over time
        assert _iou(labels[t] == 1, masks[t]) > 0.5, t


def test_relabel_by_area_orders_and_caps():
    lab = np.zeros((2, 10, 10), np.int64)
    lab[:, :2, :2] = 70000            # big DEVA-style ids are fine
    lab[:, 5:, 5:] = 3
    lab[1, 0, 9] = 9                  # appears only later: ranked after first-frame components
    out = relabel_by_area(lab, max_components=2)
    assert out.dtype == np.int32
    assert (out[:, 5:, 5:] == 1).all() and (out[:, :2, :2] == 2).all() and out[1, 0, 9] == 0


def _centroid_and_area(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0], mask.mean()


def test_bigbuckbunny_finds_the_rabbit(sample_videos):
    frames = read_frames(sample_videos["bigbuckbunny"], 0, 12, size=(256, 144))
    labels = get_segmenter("flow").segment(frames)
    assert 1 <= labels.max() <= 6
    # the rabbit (checked on overlays) stands in the left-centre: x 15–50 %, y 25–85 % of the frame
    cx, cy, area = _centroid_and_area(labels[0] == 1)
    assert 0.15 < cx < 0.5 and 0.3 < cy < 0.75
    assert 0.02 < area < 0.6
    assert set(np.unique(labels[-1])) <= set(np.unique(labels[0]))   # ids never appear from nowhere
    cx_end, _, _ = _centroid_and_area(labels[-1] == 1)
    assert abs(cx_end - cx) < 0.15                                    # same object, followed


def test_bikes_finds_the_cars(sample_videos):
    # frames 150–161: a car passes behind a fence (camera nearly still), a second car on the left
    frames = read_frames(sample_videos["bikes"], 150, 12, size=(256, 144))
    labels = get_segmenter("flow").segment(frames)
    assert labels.max() >= 1
    cx, cy, area = _centroid_and_area(labels[0] == 1)
    assert 0.4 < cx < 0.8 and 0.3 < cy < 0.7 and 0.02 < area < 0.6


# ---- DEVA -----------------------------------------------------------------------------------

def test_deva_without_package_is_one_clear_error():
    import importlib.util

    if importlib.util.find_spec("deva") is not None and importlib.util.find_spec("deva.inference") is not None:
        pytest.skip("DEVA is installed here")
    from trackgo_data.segment.deva import DevaUnavailable

    with pytest.raises(DevaUnavailable, match="Tracking-Anything-with-DEVA"):
        get_segmenter("deva")


def test_deva_missing_weights_named(monkeypatch, tmp_path):
    from trackgo_data.segment import deva

    monkeypatch.setattr(deva, "_import_deva", lambda: {})
    with pytest.raises(deva.DevaUnavailable, match="deva_weights=.*nope.pth.*sam_weights"):
        get_segmenter("deva", deva_weights=str(tmp_path / "nope.pth"), sam_weights=str(tmp_path / "sam.pth"))


def test_deva_id_decoding_and_moving_selection():
    from trackgo_data.segment.deva import decode_id_png, select_moving

    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (1, 2, 3)
    assert decode_id_png(rgb)[0, 1] == 1 + 2 * 256 + 3 * 65536
    frames, masks = _scene(L=8)
    ids = np.zeros(masks.shape, np.int64)
    ids[:, 100:140, 150:250] = 7             # a static "stuff" segment
    ids[masks] = 70000                      # the moving square
    labels = select_moving(ids, frames)
    assert labels.max() == 1
    np.testing.assert_array_equal(labels == 1, masks)


@pytest.mark.parametrize("size", [(36, 64), (48, 80), (30, 50), (9, 16)])
def test_upscale_labels_matches_nearest_resize(size):
    import cv2

    from trackgo_data.segment.flow import upscale_labels

    rng = np.random.default_rng(1)
    small = rng.integers(0, 7, (3, 9, 16)).astype(np.int32)
    H, W = size
    out = upscale_labels(small, H, W)
    assert out.shape == (3, H, W) and out.dtype == np.int32
    for t in range(3):
        np.testing.assert_array_equal(out[t], cv2.resize(small[t], (W, H), interpolation=cv2.INTER_NEAREST))


def test_segmenter_keeps_its_grey_frames_for_the_filters():
    frames, _ = _scene(L=4)
    seg = get_segmenter("flow", flow_long_side=128)
    seg.segment(frames)
    assert seg.last_grey.shape == (4, 72, 128) and seg.last_grey.dtype == np.uint8
    np.testing.assert_array_equal(seg.last_grey, seg._small(frames))


def test_threads_may_share_a_segmenter():
    """Each thread gets its own DIS instance and its own by-products (last_grey/last_labels)."""
    from concurrent.futures import ThreadPoolExecutor

    scenes = [_scene(L=6, pan=(0, 0), seed=s)[0] for s in (0, 5, 9, 13)]
    seg = get_segmenter("flow")
    expected = [get_segmenter("flow").segment(f) for f in scenes]

    def run(i):
        labels = seg.segment(scenes[i])
        return labels, seg.last_grey, seg.last_labels

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for (labels, grey, coarse), frames, exp in zip(results, scenes, expected):
        np.testing.assert_array_equal(labels, exp)
        np.testing.assert_array_equal(grey, seg._small(frames))
        np.testing.assert_array_equal(coarse, exp)       # 256×144 frames: flow resolution = clip

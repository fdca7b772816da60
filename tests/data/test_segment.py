"""Motion segmentation with the offline ``flow`` backend: synthetic ground truth, the real sample
clips, label helpers, threads (DEVA: test_segment_deva.py)."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data.filters import small_grey
from trackgo_data.segment import available_segmenters, get_segmenter, relabel_by_area
from trackgo_data.video import read_frames

from .scenes import moving_square, texture


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
    frames = np.repeat(texture(144, 256, 0)[None], 8, 0)
    labels = get_segmenter("flow").segment(frames)
    assert labels.shape == (8, 144, 256) and labels.dtype == np.int32
    assert labels.max() == 0


@pytest.mark.parametrize("pan", [(0, 0), (2, 1)])
def test_moving_square_found_with_and_without_camera_pan(pan):
    frames, masks = moving_square(pan=pan)
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
    frames, _ = moving_square(L=4)
    seg = get_segmenter("flow", flow_long_side=128)
    seg.segment(frames)
    assert seg.last_grey.shape == (4, 72, 128) and seg.last_grey.dtype == np.uint8
    np.testing.assert_array_equal(seg.last_grey, small_grey(frames, 128))


def test_threads_may_share_a_segmenter():
    """Each thread gets its own DIS instance and its own by-products (last_grey/last_labels)."""
    from concurrent.futures import ThreadPoolExecutor

    scenes = [moving_square(L=6, pan=(0, 0), seed=s)[0] for s in (0, 5, 9, 13)]
    seg = get_segmenter("flow")
    expected = [get_segmenter("flow").segment(f) for f in scenes]

    def run(i):
        labels = seg.segment(scenes[i])
        return labels, seg.last_grey, seg.last_labels

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for (labels, grey, coarse), frames, exp in zip(results, scenes, expected):
        np.testing.assert_array_equal(labels, exp)
        np.testing.assert_array_equal(grey, small_grey(frames, seg.cfg.flow_long_side))
        np.testing.assert_array_equal(coarse, exp)       # 256×144 frames: flow resolution = clip

"""Point trackers: LK on a known synthetic motion; Co-Tracker through torch.hub source="local"."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from trackgo_data.track import available_trackers, get_tracker


def _textured(h, w, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.5)


def _translated_video(L, d, h=96, w=128, pad=40, seed=0):
    """Frames of a textured image shifted by t·d (sub-pixel, bilinear), cropped from a larger one."""
    import cv2

    big = _textured(h + 2 * pad, w + 2 * pad, seed)
    frames = []
    for t in range(L):
        M = np.float32([[1, 0, d[0] * t], [0, 1, d[1] * t]])
        f = cv2.warpAffine(big, M, (w + 2 * pad, h + 2 * pad), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
        frames.append(f[pad:pad + h, pad:pad + w])
    return np.stack(frames)


def test_registry():
    assert {"lk", "cotracker3_offline", "cotracker3_online", "cotracker2"} <= set(available_trackers())
    with pytest.raises(ValueError, match="unknown tracker"):
        get_tracker("nope")
    with pytest.raises(ValueError, match="unknown config"):
        get_tracker("lk", win=3)


def test_lk_recovers_known_translation():
    L, d = 10, np.array([1.6, -0.8])
    frames = _translated_video(L, d)
    rng = np.random.default_rng(1)
    pts = rng.uniform([20, 30], [100, 80], (40, 2)).astype(np.float32)
    trk = get_tracker("lk")
    assert trk.name == "lk" and trk.version.startswith("opencv-")
    tracks, vis = trk.track(frames, pts)
    assert tracks.shape == (L, 40, 2) and tracks.dtype == np.float32
    assert vis.shape == (L, 40) and vis.dtype == bool
    expected = pts[None] + np.arange(L)[:, None, None] * d
    np.testing.assert_array_equal(tracks[0], pts)
    assert vis.mean() > 0.95
    assert np.abs(tracks - expected)[vis].max() < 1.0


def test_lk_marks_vanished_points_invisible():
    frames = _translated_video(6, np.array([0.0, 0.0]))
    frames[3:, 40:80, 40:80] = 0                       # texture replaced by a flat black square
    pts = np.array([[60.0, 60.0], [15.0, 15.0]], np.float32)
    tracks, vis = get_tracker("lk").track(frames, pts)
    assert vis[:3, 0].all() and not vis[3:, 0].any()   # lost when its texture disappears …
    np.testing.assert_allclose(tracks[3:, 0], np.broadcast_to(tracks[2, 0], (3, 2)))  # … stays put
    # the far static point stays put (the pyramid's coarse levels may see the change once)
    assert vis[:, 1].sum() >= 5
    assert np.abs(tracks[:, 1] - pts[1]).max() < 1.0
    off = get_tracker("lk").track(frames, np.array([[-5.0, 10.0]], np.float32))[1]
    assert not off.any()                               # outside the image: never visible


def test_cotracker_without_clone_or_weights_is_one_clear_error(tmp_path, monkeypatch):
    from trackgo_data.track.cotracker import CoTrackerUnavailable

    trk = get_tracker("cotracker3_offline", repo=str(tmp_path))   # a folder without hubconf.py
    with pytest.raises(CoTrackerUnavailable, match="hubconf.py"):
        trk.track(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((1, 2), np.float32))


# ---- integration: the real Co-Tracker source, random weights ---------------------------------

# Our own minimal hub entry file, written next to the downloaded source when it ships none. It
# mirrors the official entry points' names and `pretrained` keyword; weights come from
# torch.hub.load_state_dict_from_url exactly as there (monkeypatched below to simulate no network).
_HUBCONF = '''
import torch

def _build(online, window_len, v2, pretrained):
    from cotracker.predictor import CoTrackerOnlinePredictor, CoTrackerPredictor
    sd = None
    if pretrained:
        sd = torch.hub.load_state_dict_from_url("https://example.invalid/cotracker.pth", map_location="cpu")
    cls = CoTrackerOnlinePredictor if online else CoTrackerPredictor
    model = cls(checkpoint=None, window_len=window_len, v2=v2)
    if sd is not None:
        model.model.load_state_dict(sd)
    return model

def cotracker3_offline(*, pretrained=True, window_len=60, **kw):
    return _build(False, window_len, False, pretrained)

def cotracker3_online(*, pretrained=True, window_len=16, **kw):
    return _build(True, window_len, False, pretrained)

def cotracker2(*, pretrained=True, window_len=8, **kw):
    return _build(False, window_len, True, pretrained)
'''


@pytest.fixture(scope="module")
def cotracker_hub(tmp_path_factory):
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("cotrack")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
           "napari-cotrack", "-d", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    wheels = list(tmp.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        pytest.skip(f"napari-cotrack could not be downloaded (no package index?): {res.stderr[-300:]}")
    root = tmp / "src"
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(root)
    hub = next((p.parent for p in root.rglob("hubconf.py")), None)
    if hub is None:
        pred = next(root.rglob("cotracker/predictor.py"))
        hub = pred.parent.parent
        (hub / "hubconf.py").write_text(_HUBCONF)
    return hub


@pytest.mark.parametrize("variant", ["cotracker3_offline", "cotracker3_online"])
def test_cotracker_local_hub_random_weights(cotracker_hub, variant):
    import torch

    torch.manual_seed(0)
    L, H, W = 5, 64, 96
    frames = _translated_video(L, np.array([1.0, 0.5]), h=H, w=W)
    pts = np.array([[20.0, 20.0], [70.0, 40.0]], np.float32)
    trk = get_tracker(variant, repo=str(cotracker_hub), pretrained=False, device="cpu",
                      model_resolution=[64, 96], hub_kwargs={"window_len": 4})
    assert trk.version.endswith("+random-weights")
    tracks, vis = trk.track(frames, pts)
    assert tracks.shape == (L, 2, 2) and tracks.dtype == np.float32
    assert vis.shape == (L, 2) and vis.dtype == bool
    np.testing.assert_array_equal(tracks[0], pts)            # the query frame is pinned
    assert vis[0].all()
    assert np.isfinite(tracks).all()
    # loaded once per process: a second tracker with the same settings reuses the model
    again = get_tracker(variant, repo=str(cotracker_hub), pretrained=False, device="cpu",
                        model_resolution=[64, 96], hub_kwargs={"window_len": 4})
    assert again.model is trk.model


def test_cotracker_missing_weights_is_one_clear_error(cotracker_hub, monkeypatch):
    import torch
    import urllib.error

    from trackgo_data.track.cotracker import CoTrackerUnavailable

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    trk = get_tracker("cotracker2", repo=str(cotracker_hub), pretrained=True, device="cpu")
    with pytest.raises(CoTrackerUnavailable, match="checkpoints"):
        trk.track(np.zeros((4, 32, 32, 3), np.uint8), np.ones((1, 2), np.float32))

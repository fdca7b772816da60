"""Point trackers: LK on a known synthetic motion; Co-Tracker through the hub entries of a real clone
(torch.hub source="local", random weights)."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_data.track import available_trackers, get_tracker

from ..third_party import CO_TRACKER, requires_cotracker, tree_state


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


def test_cotracker_folder_without_hubconf_is_one_clear_error(tmp_path):
    from trackgo_data.track.cotracker import CoTrackerUnavailable

    trk = get_tracker("cotracker3_offline", repo=str(tmp_path))   # a folder without hubconf.py
    with pytest.raises(CoTrackerUnavailable, match="hubconf.py"):
        trk.track(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((1, 2), np.float32))


def test_cotracker_options_are_checked():
    from trackgo_data.config import ConfigError

    with pytest.raises(ConfigError, match="exclude each other"):
        get_tracker("cotracker2", random_init=True, checkpoint="/x/cotracker2.pth")
    with pytest.raises(ConfigError, match="unknown config key.*pretrained"):
        get_tracker("cotracker2", pretrained=False)                 # replaced by random_init


# ---- the real Co-Tracker code (a clone's hubconf.py), random weights -------------------------

class _Spy:
    """Stands in for the hub predictor: records what it is given and what it returns."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, video, **kw):
        out = self.inner(video, **kw)
        self.calls.append((video.clone(), {k: v.clone() if hasattr(v, "clone") else v for k, v in kw.items()},
                           tuple(None if o is None else o.clone() for o in out)))
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _reference_video(frames):
    """What the repository's predictors take: (1,T,3,H,W) float32 0..255."""
    import torch

    return torch.tensor(frames, dtype=torch.float32).permute(0, 3, 1, 2).unsqueeze(0)


_PTS = np.array([[20.0, 12.0], [70.5, 40.25], [95.0, 3.0]], np.float32)   # x, y; the last on the right edge


@requires_cotracker
@pytest.mark.parametrize("variant,resolution", [("cotracker3_offline", [64, 96]), ("cotracker2", None)])
def test_cotracker_hub_entry_contract(variant, resolution, monkeypatch):
    import sys

    import torch

    monkeypatch.setattr(sys, "dont_write_bytecode", False)    # as in a plain Python: the backend must guard
    before = tree_state(CO_TRACKER)
    L, H, W = 4, 64, 96
    frames = _translated_video(L, np.array([1.0, 0.5]), h=H, w=W)
    trk = get_tracker(variant, repo=str(CO_TRACKER), random_init=True, device="cpu", model_resolution=resolution)
    assert trk.random_init and trk.version == f"{variant}@{CO_TRACKER}+random-init"
    spy = _Spy(trk.load())
    trk.load = lambda: spy                                 # the predictor the backend then drives
    tracks, vis = trk.track(frames, _PTS)
    assert tracks.shape == (L, 3, 2) and tracks.dtype == np.float32
    assert vis.shape == (L, 3) and vis.dtype == bool
    # handed over as the repository documents: float 0..255 (1,T,3,H,W), queries (t=0, x, y) pixels
    (video, kw, (raw_tracks, raw_vis)), = spy.calls
    assert torch.equal(video, _reference_video(frames))
    assert torch.equal(kw["queries"], torch.tensor([[[0.0, *p] for p in _PTS]]))
    assert kw["backward_tracking"] is False
    # the repository returns pixel coordinates: its query frame comes back as the query itself
    assert raw_tracks.shape == (1, L, 3, 2) and raw_vis.dtype == torch.bool
    np.testing.assert_allclose(raw_tracks[0, 0].numpy(), _PTS, atol=1e-3)
    assert raw_vis[0, 0].all()
    np.testing.assert_array_equal(tracks[1:], raw_tracks[0, 1:].numpy())
    np.testing.assert_array_equal(vis[1:], raw_vis[0, 1:].numpy())
    np.testing.assert_array_equal(tracks[0], _PTS)
    assert vis[0].all() and np.isfinite(tracks).all()
    # loaded once per process; the clone is only read (no __pycache__ written into it)
    again = get_tracker(variant, repo=str(CO_TRACKER), random_init=True, device="cpu", model_resolution=resolution)
    assert again.model is spy.inner
    after = tree_state(CO_TRACKER)
    assert after == before and not any("__pycache__" in p for p in after)


@requires_cotracker
def test_cotracker3_online_hub_entry_protocol():
    import torch

    L, H, W = 9, 64, 96
    frames = _translated_video(L, np.array([1.0, 0.5]), h=H, w=W)
    trk = get_tracker("cotracker3_online", repo=str(CO_TRACKER), random_init=True, device="cpu",
                      model_resolution=[64, 96])
    spy = _Spy(trk.load())
    trk.load = lambda: spy                                 # the predictor the backend then drives
    assert spy.step == 8                                   # half of the hub entry's window of 16
    tracks, vis = trk.track(frames, _PTS)
    ref = _reference_video(frames)
    # the repository's online protocol: frames 0..7 register the queries; the last call feeds the rest
    (v1, kw1, out1), (v2, kw2, (raw_tracks, raw_vis)) = spy.calls
    assert kw1["is_first_step"] is True and out1 == (None, None) and torch.equal(v1, ref[:, :8])
    assert torch.equal(kw1["queries"], torch.tensor([[[0.0, *p] for p in _PTS]]))
    assert kw2["is_first_step"] is False and torch.equal(v2, ref)
    assert raw_tracks.shape == (1, L, 3, 2) and raw_vis.dtype == torch.bool
    assert tracks.shape == (L, 3, 2) and tracks.dtype == np.float32 and vis.dtype == bool
    np.testing.assert_array_equal(tracks[1:], raw_tracks[0, 1:].numpy())
    np.testing.assert_array_equal(tracks[0], _PTS)        # the online model only estimates frame 0
    with pytest.raises(ValueError, match="more than 8 frames"):
        trk.track(frames[:8], _PTS)


@requires_cotracker
def test_cotracker_missing_weights_is_one_clear_error(monkeypatch, tmp_path):
    import urllib.error

    import torch

    from trackgo_data.track.cotracker import CoTrackerWeightsMissing

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    trk = get_tracker("cotracker3_offline", repo=str(CO_TRACKER), device="cpu")
    assert not trk.random_init and trk.version == f"cotracker3_offline@{CO_TRACKER}"
    with pytest.raises(CoTrackerWeightsMissing, match="scaled_offline.pth") as err:
        trk.track(np.zeros((4, 32, 32, 3), np.uint8), np.ones((1, 2), np.float32))
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "hub" / "checkpoints") in msg and "random_init=true" in msg and "checkpoint=" in msg
    with pytest.raises(CoTrackerWeightsMissing, match="nope.pth"):
        get_tracker("cotracker2", repo=str(CO_TRACKER), checkpoint=str(tmp_path / "nope.pth")).load()


@requires_cotracker
def test_cotracker_checkpoint_file_is_loaded(tmp_path):
    import torch

    ref = get_tracker("cotracker3_offline", repo=str(CO_TRACKER), random_init=True, device="cpu").load()
    gen = torch.Generator().manual_seed(7)
    state = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in ref.model.state_dict().items()}
    torch.save(state, tmp_path / "scaled_offline.pth")
    trk = get_tracker("cotracker3_offline", repo=str(CO_TRACKER), device="cpu",
                      checkpoint=str(tmp_path / "scaled_offline.pth"))
    assert trk.version.endswith("+scaled_offline.pth") and not trk.random_init
    loaded = trk.load().model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

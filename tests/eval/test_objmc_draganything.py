"""DragAnything's ObjMC protocol: hand-computed grid, centres, snapping and flat mean through a
tracker whose tracks are known; then the real upstream Co-Tracker2 through its hub entry."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trackgo_model.eval.metrics.objmc import ObjMCError, inscribed_centres, read_peer_tracks
from trackgo_model.eval.metrics.objmc_draganything import (
    clip_trajectories,
    cotracker_grid,
    objmc_videos,
    pair_trajectories,
    peer_centres,
    snap_to_grid,
)

from ..third_party import CO_TRACKER, requires_cotracker, tree_state


def test_grid_is_cotrackers_grid_in_clip_pixels():
    # at the 384×512 working size: margin 512/64 = 8, then evenly spaced to 504 / 376
    np.testing.assert_allclose(cotracker_grid(3, 384, 512),
                               [[8, 8], [256, 8], [504, 8], [8, 192], [256, 192], [504, 192],
                                [8, 376], [256, 376], [504, 376]], atol=1e-4)
    # mapped as the predictor maps tracks back: x·(W−1)/511, y·(H−1)/383
    g = cotracker_grid(3, 576, 1024)
    assert g[0] == pytest.approx([8 * 1023 / 511, 8 * 575 / 383], abs=1e-4)
    assert g[8] == pytest.approx([504 * 1023 / 511, 376 * 575 / 383], abs=1e-4)
    assert g.shape == (9, 2) and g.dtype == np.float32
    assert cotracker_grid(1, 384, 512).tolist() == [[256.0, 192.0]]
    with pytest.raises(ObjMCError):
        cotracker_grid(0, 10, 10)


def test_centres_are_the_peers_distance_transform_maxima():
    lab = np.zeros((30, 40), np.int32)
    lab[3:14, 20:31] = 2                  # 11×11 square → its centre
    lab[:5, :12] = 7                      # touches the top and left edge: beyond the edge is inside
    lab[20:26, 2:9] = 4                   # rows 22–23 × columns 4–6 all lie 3 px inside → the first
    assert peer_centres(lab) == {2: (25, 8), 4: (4, 22), 7: (0, 0)}
    assert peer_centres(lab, [4]) == {4: (4, 22)}
    assert inscribed_centres(lab)[7] == (2.0, 2.0)   # the `ours` definition keeps away from the edge
    with pytest.raises(ObjMCError, match="absent"):
        peer_centres(lab, [9])


def test_snap_takes_the_nearest_grid_point_first_on_ties():
    grid = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    assert snap_to_grid(grid, [[6, 1], [5, 5], [1, 9], [100, 100]]).tolist() == [1, 0, 2, 3]


class FrameCodedTracker:
    """Moves every query point by what the clip encodes in pixel (0, 0) of each frame, as the
    tracker sees it: channel 0 / 4 → x, channel 2 / 4 → y (relative to frame 0)."""
    name = version = "frame-coded"

    def track(self, frames, points):
        code = frames[:, 0, 0].astype(np.float64) / 4
        shift = np.stack([code[:, 0] - code[0, 0], code[:, 2] - code[0, 2]], 1)
        tracks = (points[None].astype(np.float64) + shift[:, None]).astype(np.float32)
        return tracks, np.ones(tracks.shape[:2], bool)


def _clip(L, H, W, r, b):
    """(L, H, W, 3) RGB; pixel (0, 0) of frame t holds R = r(t), B = b(t)."""
    v = np.zeros((L, H, W, 3), np.uint8)
    for t in range(L):
        v[t, 0, 0, 0], v[t, 0, 0, 2] = r(t), b(t)
    return v


def _save_frames(folder: Path, clip):
    folder.mkdir(parents=True)
    for t, f in enumerate(clip):
        Image.fromarray(f).save(folder / f"{t * 3}.png")


def test_protocol_with_known_tracks_hand_computed(tmp_path):
    L, H, W, G = 4, 32, 48, 5
    # grid for G=5 on 32×48: x = (8, 132, 256, 380, 504)·47/511, y = (8, 100, 192, 284, 376)·31/383
    gx = np.array([8, 132, 256, 380, 504]) * 47 / 511
    gy = np.array([8, 100, 192, 284, 376]) * 31 / 383
    lab = np.zeros((H, W), np.uint8)
    lab[10:21, 20:31] = 1                 # centre (25, 15) → grid point (gx[2], gy[2]) = (23.5, 15.5)
    lab[0:5, 40:48] = 2                   # top-right corner: centre (44, 0) → grid point (gx[4], gy[0])
    real = _clip(L, H, W, r=lambda t: 10 * t, b=lambda t: 0)
    ids, gt = clip_trajectories(FrameCodedTracker(), real, lab, G, "bgr")
    # BGR: the tracker's channel 0 is B (still), channel 2 is R: y moves 2.5 px per frame, truncated
    assert ids == [1, 2]
    want1 = np.stack([np.full(L, np.trunc(gx[2])), np.trunc(gy[2] + 2.5 * np.arange(L))], 1)
    want2 = np.stack([np.full(L, np.trunc(gx[4])), np.trunc(gy[0] + 2.5 * np.arange(L))], 1)
    np.testing.assert_array_equal(gt[:, 0], want1)
    np.testing.assert_array_equal(gt[:, 1], want2)
    _, gt_rgb = clip_trajectories(FrameCodedTracker(), real, lab, G, "rgb")   # RGB: x moves instead
    np.testing.assert_array_equal(gt_rgb[:, 0], np.stack([np.trunc(gx[2] + 2.5 * np.arange(L)),
                                                          np.full(L, np.trunc(gy[2]))], 1))

    # two videos; generated = real + (4, 3) px from frame 1 on (v1), + (8, 6) px (v2) → 5 and 10 px
    gen1 = _clip(L, H, W, r=lambda t: 10 * t + 12 * (t > 0), b=lambda t: 16 * (t > 0))
    gen2 = _clip(L, H, W, r=lambda t: 10 * t + 24 * (t > 0), b=lambda t: 32 * (t > 0))
    for d, clips in (("real", (real, real, real)), ("gen", (gen1, gen2, gen1))):
        for name, c in zip(("v1", "v2", "v3"), clips):
            _save_frames(tmp_path / d / name, c)
    masks = tmp_path / "masks"
    masks.mkdir()
    one = np.zeros((H, W), np.uint8)
    one[10:21, 20:31] = 61                # v1: one object
    Image.fromarray(one).save(masks / "v1.png")
    (masks / "v2").mkdir()
    Image.fromarray(lab).save(masks / "v2" / "0.png")           # v2: two objects (frame folder)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "v2" / "10.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "v3.png")   # v3: no object
    r = objmc_videos(FrameCodedTracker(), tmp_path / "real", tmp_path / "gen", masks, grid_size=G,
                     num_frames=None, save_dir=tmp_path / "tracks")
    # flat mean: (1 object · 3 frames · 5 + 2 objects · 3 frames · 10) / (1·4 + 2·4) entries
    assert r["objmc"] == pytest.approx((15 + 60) / 12)
    assert r["per_video"] == pytest.approx({"v1": 15 / 4, "v2": 60 / 8})
    assert (r["num_videos"], r["num_objects"], r["num_entries"]) == (2, 3, 12)
    assert list(r["skipped"]) == ["v3"]
    saved = read_peer_tracks(tmp_path / "tracks" / "gt" / "v2.json")
    np.testing.assert_array_equal(saved["2"], want2)
    assert set(read_peer_tracks(tmp_path / "tracks" / "pred" / "v1.json")) == {"61"}
    # the first frames only
    r3 = objmc_videos(FrameCodedTracker(), tmp_path / "real", tmp_path / "gen", masks, grid_size=G, num_frames=2)
    assert r3["objmc"] == pytest.approx((5 + 2 * 10) / 6)
    with pytest.raises(ObjMCError, match="differ in size"):
        pair_trajectories(FrameCodedTracker(), real, real[:, :16], lab, G)


@requires_cotracker
def test_cotracker2_hub_entry_random_weights_grid_mode():
    """The real upstream Co-Tracker2 through the project's backend: one grid call per clip."""
    import torch

    from trackgo_data.track import get_tracker

    torch.manual_seed(0)
    L, H, W, G = 4, 32, 48, 4
    frames = np.random.default_rng(0).integers(0, 256, (L, H, W, 3), dtype=np.uint8)
    lab = np.zeros((H, W), np.int32)
    lab[4:15, 6:17] = 3                   # centre (11, 9)
    lab[20:31, 30:41] = 5                 # centre (35, 25)
    before = tree_state(CO_TRACKER)
    trk = get_tracker("cotracker2", repo=str(CO_TRACKER), random_init=True, device="cpu")
    seen = {}
    hook = trk.model.register_forward_hook(lambda m, args, kwargs, out: seen.update(video=args[0], kw=kwargs,
                                                                                     out=out), with_kwargs=True)
    try:
        ids, got = clip_trajectories(trk, frames, lab, grid_size=G, channel_order="bgr")
    finally:
        hook.remove()
    assert seen["kw"]["grid_size"] == G and seen["kw"].get("queries") is None
    np.testing.assert_array_equal(seen["video"][0].permute(0, 2, 3, 1).numpy(), frames[..., ::-1])
    tracks = seen["out"][0][0].numpy()                                   # (L, G·G, 2)
    assert tracks.shape == (L, G * G, 2) and np.isfinite(tracks).all()
    # upstream's own grid at frame 0 is the grid of the second implementation
    np.testing.assert_allclose(tracks[0], cotracker_grid(G, H, W), atol=1e-3)
    # each object follows the grid track nearest to its centre, truncated to integers
    near = [int(np.argmin(((tracks[0] - c) ** 2).sum(1))) for c in ((11, 9), (35, 25))]
    assert ids == [3, 5]
    np.testing.assert_array_equal(got, np.trunc(tracks[:, near]))
    assert "random" in trk.version
    assert tree_state(CO_TRACKER) == before                              # the clone is only read

import json

import numpy as np
import pytest

from trackgo_data.track import get_tracker
from trackgo_data.video import encode_mp4, decode_mp4, read_frames
from trackgo_model.eval.metrics.objmc import (
    ObjMCError,
    inscribed_centres,
    objmc_ours,
    objmc_peer_files,
    peer_tracks,
    read_peer_tracks,
    track_from,
    tracks_to_peer,
    write_peer_tracks,
)


def _tracks(L=5, N=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 100, size=(L, N, 2))


def test_identical_is_zero_and_offset_is_offset():
    gt = _tracks()
    assert objmc_ours(gt, gt.copy()).mean == 0.0
    assert objmc_ours(gt, gt + [3.0, 4.0]).mean == pytest.approx(5.0)


def test_visibility_mask_selects_entries():
    gt = _tracks(L=2, N=2)
    pred = gt.copy()
    pred[1, 1] += [6.0, 8.0]                        # error 10 on one entry
    vis = np.array([[True, True], [True, False]])
    assert objmc_ours(gt, pred).mean == pytest.approx(10.0 / 4)
    assert objmc_ours(gt, pred, vis).mean == 0.0
    assert objmc_ours(gt, pred, ~vis).mean == pytest.approx(10.0)
    with pytest.raises(ObjMCError):
        objmc_ours(gt, pred[:, :1])


def test_inscribed_centre():
    lab = np.zeros((40, 50), np.int32)
    lab[5:16, 10:21] = 3                             # 11×11 square → centre (15, 10)
    lab[0:11, 39:50] = 7                             # touches top and right border → (44, 5)
    yy, xx = np.mgrid[:40, :50]
    lab[(xx - 20) ** 2 + (yy - 30) ** 2 <= 36] = 9   # disk radius 6 at (20, 30)
    c = inscribed_centres(lab)
    assert c == {3: (15.0, 10.0), 7: (44.0, 5.0), 9: (20.0, 30.0)}


def test_peer_format_round_trip_and_flat_mean(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    a, b = _tracks(L=6, N=2, seed=1), _tracks(L=6, N=3, seed=2)
    write_peer_tracks(gt_dir / "v1.json", tracks_to_peer(a, [61, 6100]))
    write_peer_tracks(gt_dir / "v2.json", tracks_to_peer(b, [1, 2, 3]))
    back = read_peer_tracks(gt_dir / "v1.json")
    assert set(back) == {"61", "6100"}
    np.testing.assert_allclose(back["6100"], a[:, 1], atol=1e-4)
    assert json.loads((gt_dir / "v1.json").read_text())["61"][0] == pytest.approx(list(a[0, 0]), abs=1e-4)
    # predictions: v1 offset by (3, 4) → 5 px on 2×6 entries; v2 exact on 3×6 entries
    write_peer_tracks(pred_dir / "v1.json", tracks_to_peer(a + [3.0, 4.0], [61, 6100]))
    write_peer_tracks(pred_dir / "v2.json", tracks_to_peer(b, [1, 2, 3]))
    r = objmc_peer_files(gt_dir, pred_dir)
    assert r["num_videos"] == 2 and r["num_objects"] == 5 and r["num_entries"] == 30
    assert r["objmc"] == pytest.approx(5.0 * 12 / 30, abs=1e-3)
    assert r["per_video"]["v1"] == pytest.approx(5.0, abs=1e-3)
    write_peer_tracks(pred_dir / "v2.json", tracks_to_peer(b[:, :2], [1, 2]))
    with pytest.raises(ObjMCError, match="missing"):
        objmc_peer_files(gt_dir, pred_dir)


@pytest.fixture(scope="module")
def clip(sample_videos):
    return read_frames(sample_videos["carphone"], count=8)  # (8, 144, 176, 3)


def _grid_points():
    xs, ys = np.meshgrid(np.arange(40, 140, 20), np.arange(40, 110, 20))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)


def test_tracker_objmc_real_clip_against_itself_reencoded(clip):
    lk = get_tracker("lk")
    gt, vis = lk.track(clip, _grid_points())
    reenc = decode_mp4(encode_mp4(clip, fps=10, crf=23))
    pred = track_from(lk, reenc, gt[0])
    err = objmc_ours(gt, pred, vis).mean
    assert err < 1.0


def test_tracker_objmc_shifted_clip_gives_the_offset(clip):
    import cv2

    lk = get_tracker("lk")
    gt, vis = lk.track(clip, _grid_points())
    dx, dy = 4.0, 3.0                                       # 5 px
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = clip.copy()
    for t in range(1, len(clip)):                           # frame 0 stays: the start points agree
        moved[t] = cv2.warpAffine(clip[t], shift, (clip.shape[2], clip.shape[1]),
                                  borderMode=cv2.BORDER_REPLICATE)
    pred = track_from(lk, moved, gt[0])
    L = len(clip)
    # frame 0 contributes 0, frames 1..L−1 contribute 5 px each
    assert objmc_ours(gt, pred, vis).mean == pytest.approx(5.0 * (L - 1) / L, abs=0.5)
    # peer definition on a labelled frame: one centre per segment, same expectation
    lab = np.zeros(clip.shape[1:3], np.int32)
    lab[30:80, 40:100] = 1
    lab[80:120, 90:150] = 2
    ids, g = peer_tracks(lk, clip, lab)
    _, p = peer_tracks(lk, moved, lab)
    assert ids == [1, 2]
    assert objmc_ours(g, p).mean == pytest.approx(5.0 * (L - 1) / L, abs=0.75)

"""The toy's scores and results against hand-computed cases: per-clip records, G, intervals,
paired differences and Table 2 verdicts."""
from __future__ import annotations

import numpy as np
import pytest

from trackgo_model.toy.summary import FLOOR, REAL, STATIC, comparison_pairs, summarise, summarise_seeds, table2_verdicts


class FixedTracker:
    """Returns the tracks and visibility it was built with, whatever the video."""

    def __init__(self, tracks, visible):
        self.tracks, self.visible = np.asarray(tracks, np.float32), np.asarray(visible, bool)

    def track(self, frames, points):
        assert np.allclose(points, self.tracks[0])  # starts from the requested frame-0 points
        return self.tracks, self.visible


def test_score_clip_by_hand():
    from trackgo_model.toy.scoring import score_clip

    requested = np.array([[[0, 0], [10, 10]], [[3, 4], [10, 10]], [[6, 8], [10, 10]]], np.float32)  # (L=3, N=2, 2)
    seen = np.array([[1, 1], [1, 0], [1, 1]], bool)
    pred = requested.copy()
    pred[1, 0] = [0, 0]        # 5 px off, seen → counted
    pred[1, 1] = [13, 14]      # 5 px off, not seen → not counted
    pred[2, 0] = [6, 8 + 2]    # 2 px off
    pred_seen = np.array([[1, 1], [0, 1], [1, 1]], bool)  # lost at (1, 0)
    video = np.zeros((3, 4, 4, 3), np.uint8)
    real = video.copy()
    real[0, 0, 0, 0] = 12      # MSE 144 / 144 = 1 → PSNR = 20·log10(255)
    rec = score_clip(FixedTracker(pred, pred_seen), video, requested, seen, real, np.zeros((3, 0, 2)))
    assert rec["objmc_sum"] == pytest.approx(7.0) and rec["objmc_n"] == 5 and rec["lost_n"] == 1
    assert rec["psnr"] == pytest.approx(20 * np.log10(255.0)) and rec["path_n"] == 0


def test_static_video_and_gt_paths():
    from trackgo_model.toy.scoring import gt_object_tracks, static_video

    real = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    assert (static_video(real) == real[[0, 0]]).all()
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:5, 2:5] = 1  # a 3×3 object centred at (3, 3) on an 8×8 source frame
    paths = np.array([[[3.0, 3.0]], [[5.0, 4.0]]], np.float32)
    tracks = gt_object_tracks({"labels": labels, "paths": paths}, 0, 2, (4, 4))  # half size
    np.testing.assert_allclose(tracks[:, 0], [[(3 + 0.5) / 2 - 0.5, (3 + 0.5) / 2 - 0.5],
                                              [(5 + 0.5) / 2 - 0.5, (4 + 0.5) / 2 - 0.5]])


def clip(key, objmc_sum, n=10, lost=0, psnr=20.0):
    return {"key": key, "objmc_sum": objmc_sum, "objmc_n": n, "lost_n": lost, "psnr": psnr,
            "path_sum": 0.0, "path_n": 0}


def fixture_scores():
    keys = ["a", "b", "c", "d"]
    per = {STATIC: [clip(k, 80.0) for k in keys],                     # ObjMC 8
           FLOOR: [clip(k, 20.0) for k in keys],                      # ObjMC 2
           REAL: [clip(k, 10.0) for k in keys],                       # ObjMC 1
           "base": [clip(k, 80.0, psnr=18.0) for k in keys],         # G 0
           "trackgo": [clip(k, s, lost=1) for k, s in zip(keys, (40.0, 50.0, 30.0, 40.0))],  # ObjMC 4, G 2/3
           "no_attn_loss": [clip(k, s) for k, s in zip(keys, (41.0, 51.0, 31.0, 41.0))],    # always 0.1 worse
           "no_mask_no_loss": [clip(k, 50.0) for k in keys]}          # ObjMC 5, G 0.5
    return per


def test_summarise_by_hand():
    rows = ["base", "trackgo", "no_attn_loss", "no_mask_no_loss"]
    res = summarise(fixture_scores(), rows, replicates=500, seed=0)
    tg = res["rows"]["trackgo"]
    assert tg["objmc"] == pytest.approx(4.0) and tg["gap_closed"] == pytest.approx(2 / 3)
    assert tg["lost_points"] == pytest.approx(0.1) and tg["num_clips"] == 4
    lo, hi = tg["objmc_ci95"]
    assert 3.0 <= lo < 4.0 < hi <= 5.0  # the clips' own ObjMC range
    assert res["references"][STATIC]["gap_closed"] == 0.0 and res["references"][FLOOR]["gap_closed"] == 1.0
    assert res["references"][REAL]["gap_closed"] == pytest.approx(7 / 6)
    assert res["rows"]["base"]["gap_closed_ci95"] == [0.0, 0.0]
    # paired: the ablation is 0.1 px worse on every clip, so the interval is a point
    d = res["differences"]["trackgo-no_attn_loss"]
    assert d["objmc"] == pytest.approx(-0.1) and d["objmc_ci95"] == pytest.approx([-0.1, -0.1])
    assert d["gap_closed"] == pytest.approx(0.1 / 6)
    assert set(res["differences"]) == {f"{a}-{b}" for a, b in comparison_pairs(rows)}
    verdicts = {c["than"] + ">" + c["better"]: c for c in res["claims"]}
    assert verdicts["no_attn_loss>trackgo"]["gap_closed"]["verdict"] == "confirms"
    assert verdicts["no_mask_no_loss>trackgo"]["gap_closed"]["verdict"] == "confirms"
    assert verdicts["no_mask_no_loss>trackgo"]["psnr"]["verdict"] == "cannot tell"  # equal PSNR


def test_verdict_sign_follows_the_claim():
    diffs = {"no_mask_no_loss-no_attn_loss": {"gap_closed": 0.2, "gap_closed_ci95": [0.1, 0.3],
                                              "psnr": -1.0, "psnr_ci95": [-2.0, 0.5]}}
    (claim,) = table2_verdicts(diffs)  # only the claim whose pair is present
    assert claim["better"] == "no_attn_loss" and claim["gap_closed"]["difference"] == pytest.approx(-0.2)
    assert claim["gap_closed"]["ci95"] == pytest.approx([-0.3, -0.1]) and claim["gap_closed"]["verdict"] == "refutes"
    assert claim["psnr"]["verdict"] == "cannot tell"


def test_rows_must_share_clips():
    per = fixture_scores()
    per["trackgo"] = per["trackgo"][::-1]
    with pytest.raises(ValueError, match="other clips"):
        summarise(per, ["base", "trackgo"], replicates=100)


def test_one_run_per_row_gives_exactly_the_clip_bootstrap():
    rows = ["base", "trackgo", "no_attn_loss", "no_mask_no_loss"]
    per = fixture_scores()
    plain = summarise(per, rows, replicates=300, seed=4)
    seeded = summarise_seeds(per, {r: [r] for r in rows}, replicates=300, seed=4)
    for r in rows:
        got = {k: v for k, v in seeded["rows"][r].items() if k != "runs"}
        assert got.keys() == plain["rows"][r].keys()
        for k, v in got.items():
            assert np.allclose(v, plain["rows"][r][k], equal_nan=True), (r, k)
    for pair, d in plain["differences"].items():
        for k, v in d.items():
            assert np.allclose(seeded["differences"][pair][k], v, equal_nan=True), (pair, k)
    assert seeded["rows"]["trackgo"]["runs"]["trackgo"]["gap_closed"] == pytest.approx(2 / 3)


def test_seeds_average_and_widen_the_interval_by_hand():
    """A second seed of trackgo 1 px worse on every clip: the row's ObjMC is the mean (4.5); its
    paired difference with no_attn_loss (one run, 0.1 px worse than seed 0) is −0.1 or +0.9 per
    drawn seed, so its interval spans [−0.1, 0.9] instead of the point −0.1."""
    keys = ["a", "b", "c", "d"]
    per = fixture_scores()
    per["trackgo-seed1"] = [clip(k, c["objmc_sum"] + 10.0) for k, c in zip(keys, per["trackgo"])]
    runs = {"base": ["base"], "trackgo": ["trackgo", "trackgo-seed1"], "no_attn_loss": ["no_attn_loss"]}
    res = summarise_seeds(per, runs, replicates=2000, seed=0)
    tg = res["rows"]["trackgo"]
    assert tg["objmc"] == pytest.approx(4.5) and tg["gap_closed"] == pytest.approx(3.5 / 6)
    assert tg["runs"]["trackgo-seed1"]["objmc"] == pytest.approx(5.0)
    d = res["differences"]["trackgo-no_attn_loss"]
    assert d["objmc"] == pytest.approx(0.4) and d["objmc_ci95"] == pytest.approx([-0.1, 0.9])
    assert {c["than"] + ">" + c["better"]: c for c in res["claims"]}["no_attn_loss>trackgo"][
        "gap_closed"]["verdict"] == "cannot tell"

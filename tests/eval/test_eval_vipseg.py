"""The whole protocol end-to-end on a tiny VIPSeg-layout fixture with the tiny random model."""
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trackgo_data.points import k_for_area
from trackgo_data.video import decode_mp4, encode_lossless_rgb, read_frames
from trackgo_data.vipseg import VIPSeg
from trackgo_model.eval.vipseg import EvalConfig, run

from ..third_party import CO_TRACKER, requires_cotracker
from .reference import clip_features, frame_features, frechet_by_eigh
from .tiny_extractors import TinyFIDNet, TinyI3D
from .vipseg_fixture import build_fixture


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_videos):
    from trackgo_model.tiny import init_tiny

    tmp = tmp_path_factory.mktemp("eval")
    clip = read_frames(sample_videos["carphone"], count=8)
    root = build_fixture(tmp, clip)
    ckpt = init_tiny(tmp / "tiny", seed=0)
    return tmp, root, ckpt


@pytest.fixture(scope="module")
def evaluated(setup):
    tmp, root, ckpt = setup
    (tmp / "no-clone").mkdir()           # Co-Tracker cannot load from here: the default tracker falls back to LK
    cfg = EvalConfig(vipseg=str(root), checkpoint=str(ckpt), out=str(tmp / "run"), num_frames=6, width=128,
                     height=64, num_inference_steps=2, num_side_by_side=1, metrics_batch_size=4,
                     tracker_options={"repo": str(tmp / "no-clone")})
    res = run(cfg, fid_model=TinyFIDNet().eval(), i3d_model=torch.jit.script(TinyI3D()))
    return cfg, res


def test_protocol_end_to_end(evaluated, monkeypatch):
    monkeypatch.delenv("TRACKGO_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("TRACKGO_I3D_PATH", raising=False)
    cfg, res = evaluated
    out = Path(cfg.out)
    m = res["metrics"]
    assert res["num_videos"] == 2 and set(res["rejects"]) == {"short_c", "missing_d"}
    assert res["rejects"]["short_c"] == "too_short" and res["rejects"]["missing_d"].startswith("unreadable")
    for k in ("fvd", "fid", "objmc", "objmc_ours"):
        assert m[k]["status"] == "ok" and np.isfinite(m[k]["value"]) and m[k]["value"] >= 0, k
    gen = decode_mp4(out / "generated" / "vid_a.mp4")
    real = decode_mp4(out / "real" / "vid_a.mp4")
    assert gen.shape == real.shape == (6, 64, 128, 3)
    np.testing.assert_array_equal(real, VIPSeg(cfg.vipseg).video("vid_a").read(6, size=(128, 64))[0])
    # FID and FVD (features streamed video by video) against a second implementation: features
    # straight from the extractors' contracts, the Fréchet distance through eigh (reference.py)
    reals = [decode_mp4(out / "real" / f"{v}.mp4") for v in ("vid_a", "vid_b")]
    gens = [decode_mp4(out / "generated" / f"{v}.mp4") for v in ("vid_a", "vid_b")]
    fid_net, i3d_net = TinyFIDNet().eval(), TinyI3D()
    fid_want = frechet_by_eigh(frame_features(fid_net, reals), frame_features(fid_net, gens))
    fvd_want = frechet_by_eigh(clip_features(i3d_net, reals), clip_features(i3d_net, gens))
    assert m["fid"]["value"] == pytest.approx(fid_want, rel=1e-5) and fid_want > 1e-3
    assert m["fvd"]["value"] == pytest.approx(fvd_want, rel=1e-4) and fvd_want > 1e-3
    assert decode_mp4(out / "side_by_side" / "vid_a.mp4").shape == (6, 64, 384, 3)
    assert not (out / "side_by_side" / "vid_b.mp4").exists()
    # conditioning: components from the masks (moving thing first), K rule on each mask's area
    with np.load(out / "condition" / "vid_a.npz") as z:
        assert z["segment_ids"].tolist() == [6100, 6101]
        lab = z["labels0"]
        n = sum(k_for_area((lab == j).mean()) for j in (1, 2))
        assert n >= 32 and z["points"].shape == (n, 2) and z["tracks"].shape == (6, n, 2)
        assert (z["components"] == 0).sum() == k_for_area((lab == 1).mean())
        # the tracker follows the pasted patch: +6 px per source frame, ×128/176 after resizing
        moving = z["tracks"][:, z["components"] == 0, 0]
        shift = np.median(moving[-1] - moving[0])
        assert shift == pytest.approx(5 * 6 * 128 / 176, abs=1.5)
    P = decode_mp4(out / "trajectories" / "vid_a.mp4")
    assert P.shape == (6, 64, 128, 3) and P.any()
    gt = json.loads((out / "objmc_gt" / "vid_a.json").read_text())
    assert set(gt) == {"6100", "6101"} and len(gt["6100"]) == 6
    rows = list(csv.DictReader((out / "per_video.csv").open()))
    assert [r["video"] for r in rows] == ["vid_a", "vid_b"]
    per_video_peer = np.mean([float(r["objmc_peer"]) for r in rows])   # same object count per video
    assert m["objmc"]["value"] == pytest.approx(per_video_peer, abs=1e-3)
    # the fallback to LK is recorded and results.md opens by saying the ObjMC is not comparable
    record = json.loads((out / "tracker.json").read_text())
    assert (record["requested"], record["name"]) == ("auto", "lk") and "hubconf.py" in record["fallback_reason"]
    assert res["tracker"] == record and res["comparable_to_paper"] is False
    assert res["objmc_protocol"]["protocol"] == "ours"
    md = (out / "results.md").read_text()
    lines = md.splitlines()
    banner = "\n".join(lines[2: lines.index("", 2)])
    assert lines[2] == "> **This ObjMC is not comparable to the paper's Table 1:**"
    assert "`lk`" in lines[3] and "fell back" in lines[3] and "hubconf.py" in lines[3]
    assert "--objmc-protocol draganything" in banner
    for number in ("248.27", "25.60", "191.15", "294.91", "236.02", "321.31", "30.15", "298.98"):
        assert number in md
    assert json.loads((out / "results.json").read_text())["metrics"]["fvd"]["value"] == m["fvd"]["value"]

    # rerun: nothing regenerated; score-only without extractor weights marks FID/FVD missing
    stamp = (out / "generated" / "vid_a.mp4").stat().st_mtime_ns
    res2 = run(cfg)
    assert (out / "generated" / "vid_a.mp4").stat().st_mtime_ns == stamp
    m2 = res2["metrics"]
    assert m2["fid"]["status"] == "missing" and "TRACKGO_FID_WEIGHTS" in m2["fid"]["reason"]
    assert m2["fvd"]["status"] == "missing" and "TRACKGO_I3D_PATH" in m2["fvd"]["reason"]
    assert m2["objmc"]["value"] == pytest.approx(m["objmc"]["value"])
    assert m2["objmc_ours"]["value"] == pytest.approx(m["objmc_ours"]["value"])
    assert "Missing metrics" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="different num_frames"):
        run(dataclasses.replace(cfg, num_frames=5))


def _rescore_with(evaluated, tmp_path, make_generated) -> tuple[dict, Path]:
    """A copy of the evaluated folder whose generated clips are ``make_generated(real clip)``,
    scored again (score only) with the same extractors."""
    import shutil

    cfg, _ = evaluated
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    for video in sorted((out / "real").glob("*.mp4")):
        encode_lossless_rgb(make_generated(decode_mp4(video)), out / "generated" / video.name, fps=cfg.save_fps)
    again = dataclasses.replace(cfg, out=str(out))
    return run(again, score_only=True, fid_model=TinyFIDNet().eval(), i3d_model=torch.jit.script(TinyI3D())), out


def test_objmc_fid_fvd_of_known_generated_videos(evaluated, tmp_path):
    """Hand-computed cases through the whole scoring: generated = the real clip gives 0 for every
    metric; generated = the real clip moved by (4, 3) px from frame 1 on gives an ObjMC of 5 px on
    every visible entry after frame 0 (the tracker follows the moved content), by hand
    5 · (visible entries in frames 1..L−1) / (visible entries)."""
    import cv2

    same, _ = _rescore_with(evaluated, tmp_path / "same", lambda real: real)
    for key in ("objmc", "objmc_ours"):
        assert same["metrics"][key]["value"] == 0.0, key
    assert same["metrics"]["fid"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert same["metrics"]["fvd"]["value"] == pytest.approx(0.0, abs=1e-6)

    def moved(real):
        out = real.copy()
        for t in range(1, len(real)):
            out[t] = cv2.warpAffine(real[t], np.float32([[1, 0, 4], [0, 1, 3]]), real.shape[2:0:-1],
                                    borderMode=cv2.BORDER_REPLICATE)
        return out

    shifted, out = _rescore_with(evaluated, tmp_path / "moved", moved)
    visible = [np.load(out / "condition" / f"{v}.npz")["visibility"] for v in ("vid_a", "vid_b")]
    by_hand = 5.0 * sum(int(vis[1:].sum()) for vis in visible) / sum(int(vis.sum()) for vis in visible)
    assert by_hand > 4.0
    assert shifted["metrics"]["objmc_ours"]["value"] == pytest.approx(by_hand, abs=0.15)
    assert shifted["metrics"]["objmc"]["value"] == pytest.approx(5.0 * 5 / 6, abs=0.15)   # 1 point per object


def _flat_mean_of_files(gt_dir: Path, pred_dir: Path) -> float:
    """The peer's scoring, written out plainly: every (object, frame) distance, one mean."""
    dists = []
    for f in sorted(gt_dir.glob("*.json")):
        gt, pred = json.loads(f.read_text()), json.loads((pred_dir / f.name).read_text())
        for sid, traj in gt.items():
            dists += [float(np.hypot(a[0] - b[0], a[1] - b[1])) for a, b in zip(traj, pred[sid])]
    return float(np.mean(dists))


def test_draganything_protocol_rescores_saved_videos(evaluated):
    """Score-only rerun with DragAnything's protocol (grid tracking, snapped centres), LK standing in
    for Co-Tracker2: the real clip's moving patch is followed, the value is the files' flat mean."""
    cfg, first = evaluated
    da = dataclasses.replace(cfg, objmc_protocol="draganything", objmc_tracker="lk", objmc_grid_size=12)
    res = run(da, score_only=True)
    out = Path(cfg.out)
    proto = res["objmc_protocol"]
    assert (proto["protocol"], proto["tracker"], proto["grid_size"], proto["channel_order"]) == \
        ("draganything", "lk", 12, "bgr")
    gt = json.loads((out / "objmc_gt" / "vid_a.json").read_text())
    assert set(gt) == {"6100", "6101"} and len(gt["6100"]) == 6
    assert all(float(v).is_integer() for traj in gt.values() for p in traj for v in p)
    # patch 6100 moves +6 px per source frame, ×128/176 after resizing; 6101 stands still
    assert gt["6100"][-1][0] - gt["6100"][0][0] == pytest.approx(5 * 6 * 128 / 176, abs=2)
    assert gt["6101"][-1] == pytest.approx(gt["6101"][0], abs=1)
    assert res["metrics"]["objmc"]["value"] == pytest.approx(_flat_mean_of_files(out / "objmc_gt", out / "objmc_pred"))
    assert res["metrics"]["objmc_ours"]["value"] == pytest.approx(first["metrics"]["objmc_ours"]["value"])
    notes = res["not_comparable_because"]
    assert any("tracker is `lk`, the peer's is `cotracker2`" in n for n in notes)
    assert any("grid_size is `12`" in n for n in notes)
    assert "protocol `draganything`" in (out / "results.md").read_text()


@pytest.mark.slow
def test_prefect_flow_scores_and_posts_the_table(evaluated, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.eval_vipseg import eval_vipseg_flow

    monkeypatch.delenv("TRACKGO_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("TRACKGO_I3D_PATH", raising=False)
    cfg, first = evaluated
    over = [f"{k}={getattr(cfg, k)}" for k in ("num_frames", "width", "height", "num_inference_steps")]
    over.append(f"tracker_options.repo={cfg.tracker_options['repo']}")
    with prefect_test_harness(server_startup_timeout=240):
        from prefect import get_client

        res = eval_vipseg_flow(vipseg=cfg.vipseg, checkpoint=cfg.checkpoint, out=cfg.out, score_only=True,
                               overrides=over)
        with get_client(sync_client=True) as client:
            art = client.read_latest_artifacts()
    assert res["metrics"]["objmc"]["value"] == pytest.approx(first["metrics"]["objmc"]["value"])
    assert res["metrics"]["fvd"]["status"] == "missing"
    table = [a for a in art if a.key == "eval-vipseg-results"]
    assert table and "248.27" in table[0].data and "| **ours**" in table[0].data


def test_comparability_verdict_hand_cases():
    from trackgo_model.eval.report import comparability

    paper = {"width": 1024, "height": 576, "num_frames": 14}
    co = {"name": "cotracker3_offline", "version": "cotracker3_offline@clone", "options": {}, "fallback_reason": None}
    da = {"protocol": "draganything", "tracker": "cotracker2", "version": "cotracker2@clone", "options": {},
          "grid_size": 100, "channel_order": "bgr"}
    assert comparability(paper, co, da) == []
    lk = {"name": "lk", "version": "opencv", "options": {}, "fallback_reason": "no weights in /hub/checkpoints"}
    (note,) = comparability(paper, lk, da)
    assert "`lk`" in note and "fell back" in note and "no weights in /hub/checkpoints" in note
    assert "chosen explicitly" in comparability(paper, {**lk, "fallback_reason": None}, da)[0]
    ours = {"protocol": "ours", "tracker": "cotracker3_offline", "version": "v"}
    assert len(comparability(paper, co, ours)) == 1
    random_da = {**da, "options": {"random_init": True}}
    assert comparability(paper, co, random_da) == ["the ObjMC tracker `cotracker2` ran with random weights"]
    assert comparability({**paper, "width": 512}, co, da) == ["width is 512, the paper's is 1024"]


@requires_cotracker
def test_auto_tracker_falls_back_to_lk_only_when_not_named(monkeypatch):
    """No weights (the hub download fails offline): `auto` falls back to LK and says why; a named
    Co-Tracker is an error; explicit random weights are used, and recorded."""
    import urllib.error

    from trackgo_data.track.cotracker import CoTrackerUnavailable
    from trackgo_model.eval.trackers import choose_tracker

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    opts = {"repo": str(CO_TRACKER), "device": "cpu"}
    trk, rec = choose_tracker(EvalConfig(tracker_options=opts))
    assert trk.name == "lk" and (rec["requested"], rec["name"], rec["options"]) == ("auto", "lk", {})
    assert "checkpoints" in rec["fallback_reason"] and rec["version"] == trk.version
    with pytest.raises(CoTrackerUnavailable, match="checkpoints"):
        choose_tracker(EvalConfig(tracker="cotracker3_offline", tracker_options=opts))
    with pytest.raises(CoTrackerUnavailable, match="does not exist"):  # weights named: no fallback either
        choose_tracker(EvalConfig(tracker_options={**opts, "checkpoint": "/nowhere/scaled_offline.pth"}))
    trk, rec = choose_tracker(EvalConfig(tracker_options={**opts, "random_init": True}))
    assert rec["name"] == trk.name == "cotracker3_offline" and rec["fallback_reason"] is None
    assert "random" in rec["version"]


def test_generation_settings_of_a_folder_are_fixed_and_a_newer_field_reads_as_its_default(tmp_path):
    """A folder written before ``trajectory_guidance`` existed (no key) holds g = 1 results: the
    default is accepted there, another g is refused with what differs."""
    import json

    from trackgo_model.eval.config import EvalConfig, check_config_file

    check_config_file(EvalConfig(), tmp_path)
    record = json.loads((tmp_path / "eval_config.json").read_text())
    del record["trajectory_guidance"]
    (tmp_path / "eval_config.json").write_text(json.dumps(record))
    check_config_file(EvalConfig(), tmp_path, write=False)
    with pytest.raises(ValueError, match="trajectory_guidance: 1.0 there, 2.0 now"):
        check_config_file(EvalConfig(trajectory_guidance=2.0), tmp_path)
    with pytest.raises(ValueError, match="num_inference_steps"):
        check_config_file(EvalConfig(num_inference_steps=3), tmp_path)
    with pytest.raises(ValueError, match="≥ 1"):
        EvalConfig(trajectory_guidance=0.5)

"""The whole protocol end-to-end on a tiny VIPSeg-layout fixture with the tiny random model."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trackgo_data.points import k_for_area
from trackgo_data.video import decode_mp4, read_frames
from trackgo_data.vipseg import VIPSeg
from trackgo_model.eval.vipseg import EvalConfig, run
from trackgo_model.eval.metrics.fid import fid_from_videos
from trackgo_model.eval.metrics.fvd import fvd_from_videos

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
    cfg = EvalConfig(vipseg=str(root), checkpoint=str(ckpt), out=str(tmp / "run"), num_frames=6, width=128,
                     height=64, num_inference_steps=2, num_side_by_side=1, metrics_batch_size=4)
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
    # streamed per-video features give the same numbers as all clips at once
    reals = [decode_mp4(out / "real" / f"{v}.mp4") for v in ("vid_a", "vid_b")]
    gens = [decode_mp4(out / "generated" / f"{v}.mp4") for v in ("vid_a", "vid_b")]
    with torch.no_grad():
        assert m["fid"]["value"] == pytest.approx(fid_from_videos(TinyFIDNet().eval(), reals, gens), rel=1e-6)
    assert m["fvd"]["value"] == pytest.approx(fvd_from_videos(torch.jit.script(TinyI3D()), reals, gens), rel=1e-6)
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
    md = (out / "results.md").read_text()
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
        run(EvalConfig(**{**cfg.__dict__, "num_frames": 5}))


@pytest.mark.slow
def test_prefect_flow_scores_and_posts_the_table(evaluated, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.eval_vipseg import eval_vipseg_flow

    monkeypatch.delenv("TRACKGO_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("TRACKGO_I3D_PATH", raising=False)
    cfg, first = evaluated
    over = [f"{k}={getattr(cfg, k)}" for k in ("num_frames", "width", "height", "num_inference_steps")]
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

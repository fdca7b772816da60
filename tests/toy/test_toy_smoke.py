"""The whole toy chain at a few steps: every stage's product exists with the right shapes and keys,
results.json has its schema (rows, references, intervals, paired differences, claims, end-to-end
seconds), every generated clip and request is on disk, a rerun skips every stage, and changed
inputs are refused. Checks the plumbing, not the outcome (that is `make toy`)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trackgo_model.eval.bootstrap import MIN_GAP

WORLD = ("width=64", "height=64", "min_radius=6.0", "max_radius=9.0", "min_speed=2.0", "max_speed=4.0",
         "max_pan_speed=0.5")
SMOKE = [
    *(f"train_videos.{w}" for w in WORLD), "train_videos.num_videos=6",
    *(f"heldout_videos.{w}" for w in WORLD), "heldout_videos.num_videos=3",
    "build.clip={num_frames: 8, width: 64, height: 64, min_source_width: 64, min_source_height: 64}",
    "build.filters={max_camera_motion_rel: null, min_sharpness: null, min_median_motion: 1.0}",
    "build_processes=1", "processes=1", "threads=1", "subprocesses=false",
    "vae_overrides=[max_steps=2, batch_size=1, checkpoint_every=1, log_every=1, scale_samples=2, "
    "eval_samples=1, data.val_holdout_shards=0]",
    "base_overrides=[max_steps=2, global_batch_size=2, data.batch_size=2, checkpoint_every=1, log_every=1]",
    "trackgo_overrides=[max_steps=2, global_batch_size=2, data.batch_size=2, checkpoint_every=1, log_every=1]",
    "eval={num_clips: 2, num_inference_steps: 1, max_guidance_scale: 1.0, curve_clips: 1, side_by_side_clips: 1, "
    "bootstrap_replicates: 100}",
    "calibrate_batches=1",
]
VARIANTS = ("trackgo", "no_attn_loss", "no_mask_no_loss", "gated")


def run_toy(config: str, out, overrides: list[str]):
    """Every stage of the toy config ``config`` into ``out`` → (config, {stage: record})."""
    from trackgo_model.toy.cli import run
    from trackgo_model.toy.config import load_toy_config
    from trackgo_model.toy.stages import STAGES

    cfg = load_toy_config(config, [f"out={out}", *overrides])
    return cfg, run(cfg, STAGES)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return run_toy("toy", tmp_path_factory.mktemp("toy"), SMOKE)


def test_every_stage_made_its_product(toy_run):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from trackgo_data.loader import make_dataset
    from trackgo_model.model import read_trackgo_config

    cfg, recs = toy_run
    out = cfg.out_path
    assert all(not r.get("skipped") for r in recs.values())
    assert len(list((out / "videos" / "train").glob("*.mp4"))) == 6
    assert len(list((out / "videos" / "train").glob("*.npz"))) == 6
    batch = next(iter(make_dataset(str(out / "data" / "train" / "shards"), batch_size=0, num_frames=8, size=(64, 64))))
    assert batch.video.shape == (8, 64, 64, 3) and batch.trajectory.shape == (8, 64, 64, 3)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(out / "vae" / "vae")
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor != 1.0
    assert math.isclose(vae.config.scaling_factor, 1 / json.loads((out / "vae" / "result.json").read_text())["latent_std"])
    unet = UNetSpatioTemporalConditionModel.from_pretrained(out / "base-model" / "unet")
    init = UNetSpatioTemporalConditionModel.from_pretrained(out / "init-model" / "unet")
    assert list(unet.config.block_out_channels) == list(cfg.unet["block_out_channels"])
    moved = [k for k, v in unet.state_dict().items() if not np.allclose(v.numpy(), init.state_dict()[k].numpy())]
    assert moved  # the base stage trained the UNet (and exported it)
    lam = json.loads((out / "stages" / "calibrate.json").read_text())["product"]["weight"]
    assert lam > 0
    expect = {"trackgo": ("paper", True, lam), "no_attn_loss": ("paper", True, 0.0),
              "no_mask_no_loss": ("paper", False, 0.0), "gated": ("gated", True, lam)}
    for v, (mode, masked, weight) in expect.items():
        steps = sorted((out / "trackgo" / v / "checkpoints").glob("checkpoint-*"))
        assert [p.name for p in steps] == ["checkpoint-000001", "checkpoint-000002"]
        meta = read_trackgo_config(steps[-1] / "trackgo")["trackgo"]
        assert meta["mode"] == mode and (meta["mask_value"] != 0.0) == masked
        run_config = json.loads((out / "trackgo" / v / "config.json").read_text())
        assert run_config["objective"]["attn_loss_weight"] == weight
    walls = {}
    for stage in ("videos", "data", "vae", "base", "calibrate", "trackgo", "eval"):
        record = json.loads((out / "stages" / f"{stage}.json").read_text())
        walls[stage] = record["wall_s"]
        assert record["wall_s"] > 0 and record["cpu_s"] > 0, stage
    seconds = json.loads((out / "results.json").read_text())["seconds"]
    assert sum(walls.values()) - walls["eval"] < seconds <= sum(walls.values()) + 1


def test_results_have_their_schema(toy_run):
    cfg, _ = toy_run
    out = cfg.out_path
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"base", *VARIANTS}
    assert set(res["references"]) == {"static", "vae_roundtrip", "real"}
    # G is defined only when the floor leaves a gap below the static reference (MIN_GAP); a VAE
    # trained for two steps sometimes does not, and then every G is NaN (its interval comes from
    # the resamples that do leave a gap: NaN when none does)
    static, floor = res["references"]["static"]["objmc"], res["references"]["vae_roundtrip"]["objmc"]
    has_gap = static - floor > MIN_GAP * static
    for stats in [*res["rows"].values(), *res["references"].values()]:
        for name in ("objmc", "gap_closed", "psnr"):
            lo, hi = stats[f"{name}_ci95"]
            if name == "gap_closed" and not has_gap:
                assert math.isnan(stats[name]) and (math.isnan(lo) and math.isnan(hi) or lo <= hi)
                continue
            assert math.isfinite(stats[name]) and lo <= stats[name] <= hi, name
        assert 0.0 <= stats["lost_points"] <= 1.0 and stats["num_clips"] == 2
    if has_gap:
        assert res["references"]["static"]["gap_closed"] == 0.0
        assert res["references"]["vae_roundtrip"]["gap_closed"] == 1.0
    # the metric itself: the real clip re-tracked sits far below a clip that does not move
    assert res["references"]["real"]["objmc"] < 0.5 * res["references"]["static"]["objmc"]
    assert "trackgo-no_attn_loss" in res["differences"] and "trackgo-base" in res["differences"]
    d = res["differences"]["trackgo-base"]
    assert d["objmc"] == pytest.approx(res["rows"]["trackgo"]["objmc"] - res["rows"]["base"]["objmc"])
    assert [c["better"] + ">" + c["than"] for c in res["claims"]] == [
        "trackgo>no_mask_no_loss", "trackgo>no_attn_loss", "no_attn_loss>no_mask_no_loss"]
    assert all(c["gap_closed"]["verdict"] in ("confirms", "refutes", "cannot tell") for c in res["claims"])
    assert set(res["objmc_vs_steps"]) == set(VARIANTS)
    assert [s for s, _ in res["objmc_vs_steps"]["gated"]] == [0, 1, 2]
    assert set(res["target"]) >= {"gap_closed", "gap_closed_ci95", "met", "objmc_ratio_to_base"}
    keys = [c["key"] for c in res["per_clip"]["static"]]
    from trackgo_data.video import decode_mp4

    for row in ("base", *VARIANTS):
        for key in keys:
            assert decode_mp4(out / "eval" / row / f"{key}.mp4").shape == (8, 64, 64, 3)
    for key in keys:
        request = np.load(out / "eval" / "requests" / f"{key}.npz")
        assert request["tracks"].shape[0] == 8 and request["tracks"].shape[2] == 2
        assert request["visibility"].shape == request["tracks"].shape[:2]
    md = (out / "results.md").read_text()
    assert "gap closed" in md and "w/o attention loss" in md and "Table 2" in md
    for f in ("objmc_vs_steps.png", "gap_closed.png", "side_by_side.mp4"):
        assert (out / f).stat().st_size > 0
    sbs = decode_mp4(out / "side_by_side.mp4")
    assert sbs.shape[1:] == (64 * 3, 3 * 64 * 3, 3)  # one band: real | base | TrackGo, ×3


def test_compare_trains_and_scores_the_injection_row(toy_run):
    from trackgo_model.model import read_trackgo_config
    from trackgo_model.toy.compare import compare

    cfg, _ = toy_run
    out = cfg.out_path
    record = compare(cfg)
    assert not record.get("skipped") and set(record["product"]) == {"base", "trackgo", "injection"}
    steps = sorted((out / "compare" / "injection" / "checkpoints").glob("checkpoint-*"))
    assert read_trackgo_config(steps[-1] / "trackgo")["trackgo"]["mode"] == "injection"
    res = json.loads((out / "compare.json").read_text())
    assert set(res["rows"]) == {"base", "trackgo", "injection"} and "injection-trackgo" not in res["differences"]
    assert "trackgo-injection" in res["differences"] and "injection-base" in res["differences"]
    res_main = json.loads((out / "results.json").read_text())
    assert res["rows"]["trackgo"]["objmc"] == res_main["rows"]["trackgo"]["objmc"]  # the same videos, same score
    assert "peers' injection" in (out / "compare.md").read_text()
    assert compare(cfg).get("skipped")


def test_seeds_train_every_variant_again_and_score_over_seeds(toy_run):
    import dataclasses

    from trackgo_model.toy.seeds import seeds

    cfg, _ = toy_run
    cfg = dataclasses.replace(cfg, seeds=[1])
    out = cfg.out_path
    record = seeds(cfg)
    assert not record.get("skipped") and set(record["product"]) == {"base", *VARIANTS}
    for v in VARIANTS:
        run = out / "seeds" / f"{v}-seed1"
        assert json.loads((run / "config.json").read_text())["seed"] == 1, v
        assert (out / "eval" / f"{v}-seed1").is_dir(), v
    res = json.loads((out / "seeds.json").read_text())
    assert res["seeds"] == [0, 1] and set(res["rows"]["trackgo"]["runs"]) == {"trackgo", "trackgo-seed1"}
    main = json.loads((out / "results.json").read_text())
    tg = res["rows"]["trackgo"]["runs"]
    assert tg["trackgo"]["objmc"] == pytest.approx(main["rows"]["trackgo"]["objmc"])  # seed 0 is the main run
    assert res["rows"]["trackgo"]["objmc"] == pytest.approx((tg["trackgo"]["objmc"] + tg["trackgo-seed1"]["objmc"]) / 2)
    assert len(res["claims"]) == 3 and "over seeds and clips" in (out / "seeds.md").read_text()
    assert seeds(cfg).get("skipped")


def test_rerun_skips_and_changed_inputs_are_refused(toy_run):
    from trackgo_model.toy.cli import run
    from trackgo_model.toy.stages import STAGES
    from trackgo_model.toy.config import load_toy_config
    from trackgo_model.toy.stages import StageMismatch

    cfg, _ = toy_run
    again = run(cfg, STAGES)
    assert all(r.get("skipped") for r in again.values())
    changed = load_toy_config("toy", [f"out={cfg.out}", *SMOKE, "variants.gated=[model.trackgo.mode=gated, optim.lr=2e-3]"])
    with pytest.raises(StageMismatch, match="trackgo"):
        run(changed, ("trackgo",))

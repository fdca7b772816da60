"""The whole toy chain at a few steps: every stage's product exists with the right shapes and keys,
the results hold every row with finite numbers, a rerun skips every stage, and changed inputs are
refused. Checks the plumbing, not the outcome (that is `make toy`)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

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
    "eval={num_clips: 2, num_inference_steps: 1, max_guidance_scale: 1.0, curve_clips: 1, side_by_side_clips: 1}",
]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from trackgo_model.toy.cli import ORDER, run
    from trackgo_model.toy.config import load_toy_config

    cfg = load_toy_config("toy", [f"out={tmp_path_factory.mktemp('toy')}", *SMOKE])
    return cfg, run(cfg, ORDER)


def test_every_stage_made_its_product(toy_run):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from trackgo_data.loader import make_dataset
    from trackgo_model.model import read_trackgo_config
    from trackgo_model.train.config import load_train_config

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
    lam = float(load_train_config(cfg.trackgo_config).objective.attn_loss_weight)
    assert lam > 0
    expect = {"trackgo": ("paper", -1e4, lam), "no_mask": ("paper", 0.0, lam),
              "no_attn_loss": ("paper", -1e4, 0.0), "gated": ("gated", -1e4, lam)}
    for v, (mode, mask_value, lam) in expect.items():
        steps = sorted((out / "trackgo" / v / "checkpoints").glob("checkpoint-*"))
        assert [p.name for p in steps] == ["checkpoint-000001", "checkpoint-000002"]
        meta = read_trackgo_config(steps[-1] / "trackgo")["trackgo"]
        assert (meta["mode"], meta["mask_value"], meta["attn_loss"]["weight"]) == (mode, mask_value, lam)
    for stage in ("videos", "data", "vae", "base", "trackgo", "eval"):
        rec = json.loads((out / "stages" / f"{stage}.json").read_text())
        assert rec["wall_s"] >= 0 and rec["cpu_s"] >= 0


def test_results_have_every_row(toy_run):
    cfg, _ = toy_run
    out = cfg.out_path
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"base", "trackgo", "no_mask", "no_attn_loss", "gated"}
    for row in res["rows"].values():
        assert math.isfinite(row["objmc"]) and math.isfinite(row["psnr"]) and row["num_clips"] == 2
    # the metric itself: the real clip re-tracked sits far below a clip that does not move
    assert res["reference"]["real"]["objmc"] < 0.5 * res["reference"]["static"]["objmc"]
    assert set(res["objmc_vs_steps"]) == {"trackgo", "no_mask", "no_attn_loss", "gated"}
    assert [s for s, _ in res["objmc_vs_steps"]["gated"]] == [0, 1, 2]
    md = (out / "results.md").read_text()
    assert "ObjMC @ 1" in md and "w/o attention loss" in md
    for f in ("objmc_vs_steps.png", "side_by_side.mp4"):
        assert (out / f).stat().st_size > 0
    from trackgo_data.video import decode_mp4

    sbs = decode_mp4(out / "side_by_side.mp4")
    assert sbs.shape[1:] == (64 * 3, 3 * 64 * 3, 3)  # one band: real | base | TrackGo, ×3


def test_rerun_skips_and_changed_inputs_are_refused(toy_run):
    from trackgo_model.toy.cli import ORDER, run
    from trackgo_model.toy.config import load_toy_config
    from trackgo_model.toy.stages import StageMismatch

    cfg, _ = toy_run
    again = run(cfg, ORDER)
    assert all(r.get("skipped") for r in again.values())
    changed = load_toy_config("toy", [f"out={cfg.out}", *SMOKE, "variants.gated=[model.trackgo.mode=gated, optim.lr=2e-3]"])
    with pytest.raises(StageMismatch, match="trackgo"):
        run(changed, ("trackgo",))

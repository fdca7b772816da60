"""Wan2.2-I2V-A14B's two experts: one TrackGo run per expert, each on its own noise levels, and a
pipeline that samples with both, switching where diffusers does (t ≥ boundary·1000: the first)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.wan.conftest import wan_overrides
from trackgo_model.wan import TrackGoWan
from trackgo_model.wan import conditioning as wcond
from trackgo_model.wan.pipeline import MissingWeightsError, WanTrackGoPipeline


@pytest.fixture(scope="module")
def two_expert_dir(tmp_path_factory):
    from trackgo_model.wan.tiny import init_tiny_wan

    return init_tiny_wan(tmp_path_factory.mktemp("wan22") / "wan", seed=0, preset="tiny-2.2", experts=2)


def test_expert_noise_ranges_by_hand():
    # σ = 3u / (1 + 2u); σ_b = 0.9 ⇒ u_b = 0.9 / (3 − 2·0.9) = 0.75
    assert wcond.expert_u_range("high", 0.9, 3.0) == pytest.approx((0.75, 1.0))
    assert wcond.expert_u_range("low", 0.9, 3.0) == pytest.approx((0.0, 0.75))
    assert float(wcond.shift_sigmas(torch.tensor(0.75), 3.0)) == pytest.approx(0.9)
    assert wcond.expert_u_range(None, None, 3.0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wcond.expert_u_range("middle", 0.9, 3.0)


def _spy_timesteps(monkeypatch):
    seen = []
    forward = TrackGoWan.forward

    def spy(self, x, t, *a, **k):
        seen.append((id(self), t.detach().float().flatten().tolist()))
        return forward(self, x, t, *a, **k)

    monkeypatch.setattr(TrackGoWan, "forward", spy)
    return seen


def test_each_expert_trains_on_its_noise_levels_and_both_sample(wan_shards, two_expert_dir, tmp_path, monkeypatch):
    from trackgo_data.config import ConfigError
    from trackgo_model.train.checkpoint import latest_checkpoint
    from trackgo_model.train.config import load_train_config
    from trackgo_model.train.loop import train

    def run(name, **extra):
        over = wan_overrides(wan_shards, two_expert_dir, tmp_path / name, max_steps=4, checkpoint_every=4,
                             **{"data.batch_size": 2, "global_batch_size": 2, **extra})
        return train(load_train_config("tiny-wan-cpu", over))

    with pytest.raises(ConfigError, match="model.expert=high or low"):
        run("none")
    seen = _spy_timesteps(monkeypatch)
    run("high", **{"model.expert": "high"})
    high = [t for _, ts in seen for t in ts]
    seen.clear()
    run("low", **{"model.expert": "low"})
    low = [t for _, ts in seen for t in ts]
    assert len(high) == len(low) == 8 and min(high) >= 900 and max(low) < 900
    ckpt = {e: latest_checkpoint(tmp_path / e) / "trackgo" for e in ("high", "low")}
    assert json.loads((ckpt["low"] / "trackgo_config.json").read_text())["expert"] == "low"

    pipe = WanTrackGoPipeline.from_pretrained(two_expert_dir, ckpt["high"], trackgo_checkpoint_2=ckpt["low"])
    # each expert is its own trained transformer + TrackGo weights
    assert pipe.model.transformer is not pipe.model_2.transformer
    seen.clear()
    tracks = np.stack([np.linspace([4.0, 4.0], [28.0, 20.0], 5), np.linspace([20.0, 8.0], [8.0, 24.0], 5)], 1)
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pipe(img, (tracks, np.ones((5, 2), bool), np.array([0, 1])), num_frames=5, num_inference_steps=6, seed=0,
         guidance_scale=2.0, guidance_scale_2=1.0)
    by_model = {id(pipe.model): [], id(pipe.model_2): []}
    for who, ts in seen:
        by_model[who] += ts
    first, second = by_model[id(pipe.model)], by_model[id(pipe.model_2)]
    assert first and second and min(first) >= 900 and max(second) < 900
    # guidance 2 on the high-noise steps (two calls each), none on the low-noise ones (one call)
    steps = pipe.parts.scheduler.timesteps
    assert len(first) == 2 * int((steps >= 900).sum()) and len(second) == int((steps < 900).sum())
    with pytest.raises(MissingWeightsError, match="checkpoint-2"):
        WanTrackGoPipeline.from_pretrained(two_expert_dir, ckpt["high"])
    with pytest.raises(ValueError, match="expert"):
        WanTrackGoPipeline.from_pretrained(two_expert_dir, ckpt["low"], trackgo_checkpoint_2=ckpt["high"])
    _generate_with_both(tmp_path, two_expert_dir, ckpt)


def _generate_with_both(tmp_path, folder, ckpt):
    """`trackgo generate --checkpoint … --checkpoint-2 …` on the two-expert folder; without the
    second checkpoint one message and nothing written."""
    from PIL import Image

    from trackgo_model.cli import main as cli_main

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    common = ["generate", "--base", "wan", "--wan", str(folder), "--checkpoint", str(ckpt["high"]), "--image",
              str(tmp_path / "i.png"), "--masks", str(tmp_path / "m.png"), "--arrows", "14,14,24,20", "--steps", "2",
              "--frames", "5"]
    assert cli_main([*common, "--checkpoint-2", str(ckpt["low"]), "--guidance-2", "1.5",
                     "--out", str(tmp_path / "two.mp4")]) == 0
    assert (tmp_path / "two.mp4").is_file()
    with pytest.raises(SystemExit, match="checkpoint-2"):
        cli_main([*common, "--out", str(tmp_path / "one.mp4")])
    assert not (tmp_path / "one.mp4").exists()
    from studio import core
    from studio.model import load_model

    model = load_model(ckpt["high"], wan=folder, checkpoint_2=ckpt["low"], base="wan", device="cpu")
    assert "(low noise)" in model.banner() and model.pipe.model_2 is not None
    run = core.run_generation(model, tmp_path / "i.png", [tmp_path / "m.png"], "14,14,24,20",
                              frames=5, steps=2, strength=1.0, seed=0, out_root=tmp_path / "studio")
    assert f"--checkpoint-2 {ckpt['low']}" in run.command and run.video.is_file()

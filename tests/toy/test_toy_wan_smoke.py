"""`make toy BASE=wan` at a few steps: the Wan VAE, the Wan-layout base DiT, TrackGo and Wan-Move on
it, the evaluation's rows and references. Checks the plumbing, not the outcome."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.toy.test_toy_smoke import SMOKE as SVD_SMOKE
from tests.toy.test_toy_smoke import run_toy

#: the SVD toy's smoke settings, with clips of 4k + 1 frames, a smaller Wan VAE and no guidance
CHANGED = {
    "build.clip": "build.clip={num_frames: 9, width: 64, height: 64, min_source_width: 64, min_source_height: 64}",
    "vae_overrides": "vae_overrides=[max_steps=2, batch_size=1, checkpoint_every=1, log_every=1, scale_samples=2, "
                     "eval_samples=1, data.val_holdout_shards=0, 'model.block_out_channels=[8, 16, 16, 16]', "
                     "image_steps=1, teacher_steps=1, video_teacher_steps=1, image_batch_size=2]",
    "eval": "eval={num_clips: 2, num_inference_steps: 1, curve_clips: 1, side_by_side_clips: 1, "
            "bootstrap_replicates: 100}",
}
SMOKE = [CHANGED.get(s.split("=", 1)[0], s) for s in SVD_SMOKE]


@pytest.fixture(scope="module")
def toy_wan(tmp_path_factory):
    return run_toy("toy-wan", tmp_path_factory.mktemp("toy-wan"), SMOKE)


def test_wan_toy_models_and_rows(toy_wan):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from trackgo_model.model import read_trackgo_config

    cfg, recs = toy_wan
    out = cfg.out_path
    vae = AutoencoderKLWan.from_pretrained(out / "vae" / "vae")
    assert vae.config.z_dim == 16 and vae.config.latents_std != [1.0] * 16
    base = WanTransformer3DModel.from_pretrained(out / "base-model", subfolder="transformer")
    init = WanTransformer3DModel.from_pretrained(out / "init-model", subfolder="transformer")
    assert base.config.num_layers == cfg.transformer["num_layers"] and base.config.image_dim is None
    moved = [k for k, v in base.state_dict().items() if not np.allclose(v.numpy(), init.state_dict()[k].numpy())]
    assert moved  # the base stage trained the DiT and exported it
    assert not (out / "base-model" / "image_encoder").exists()
    assert read_trackgo_config(sorted((out / "trackgo" / "trackgo" / "checkpoints").glob("checkpoint-*"))[-1]
                               / "trackgo")["base"] == "wan"
    move = json.loads((out / "trackgo" / "wan_move" / "config.json").read_text())["model"]
    assert move["wan_move"] and move["trainable"] == ["unet"] and not move["trajectories"]
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert "Wan-layout DiT" in md and "Table 2" not in md and "Wan-Move's latent trajectory guidance" in md
    assert results["target"]["goal_lower"] == 0.5
    assert set(results["rows"]) == {"base", "trackgo", "gated", "wan_move"}
    assert set(results["references"]) == {"static", "vae_roundtrip", "real"}
    assert "wan_move-trackgo" in results["differences"] or "trackgo-wan_move" in results["differences"]
    for row in ("base", "trackgo", "gated", "wan_move"):
        clips = sorted((out / "eval" / row).glob("*.mp4"))
        assert len(clips) == 2, row
    from trackgo_data.video import decode_mp4

    assert decode_mp4(clips[0]).shape == (9, 64, 64, 3)
    # Wan-Move generated along its guide: its clips differ from the base model's
    a, b = decode_mp4(out / "eval" / "base" / clips[0].name), decode_mp4(out / "eval" / "wan_move" / clips[0].name)
    assert not np.array_equal(a, b)

"""Pieces of the toy reproduction, against hand-computed values: stage records, metrics, VAE helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trackgo_data.config import ConfigError


def _cfg(tmp_path, *over):
    from trackgo_model.toy.config import load_toy_config

    return load_toy_config("toy", [f"out={tmp_path}", *over])


def test_config_validation(tmp_path):
    cfg = _cfg(tmp_path)
    assert set(cfg.variants) >= {"trackgo", "no_attn_loss", "no_mask_no_loss", "gated"}
    with pytest.raises(ConfigError, match="must differ"):
        _cfg(tmp_path, "heldout_videos.seed=0")
    with pytest.raises(ConfigError, match="variants must include"):
        _cfg(tmp_path, "variants={trackgo: []}")
    with pytest.raises(ConfigError, match="unknown config key"):
        _cfg(tmp_path, "evaluation.num_clips=3")
    with pytest.raises(ConfigError, match="trajectory_guidance must be >= 1"):
        _cfg(tmp_path, "eval.trajectory_guidance=0.5")
    from trackgo_model.toy.config import load_toy_config
    with pytest.raises(ConfigError, match="base=wan takes 1"):
        load_toy_config("toy-wan", [f"out={tmp_path}", "eval.trajectory_guidance=2"])


def test_run_stage_skips_and_refuses_other_inputs(tmp_path):
    from trackgo_model.toy.stages import StageMismatch, read_record, run_stage

    cfg = _cfg(tmp_path)
    calls = []
    rec = run_stage(cfg, "videos", {"a": 1}, lambda: calls.append(1) or {"made": 1})
    assert rec["product"] == {"made": 1}  # the seconds it records: test_stage_times_are_measured
    again = run_stage(cfg, "videos", {"a": 1}, lambda: calls.append(2) or {})
    assert calls == [1] and again["skipped"] and read_record(cfg, "videos")["hash"] == rec["hash"]
    with pytest.raises(StageMismatch, match="other inputs"):
        run_stage(cfg, "videos", {"a": 2}, lambda: {})

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):  # an interrupted stage leaves no record, only its start
        run_stage(cfg, "data", {"b": 1}, boom)
    assert read_record(cfg, "data") is None
    with pytest.raises(StageMismatch):  # … and cannot be resumed with other inputs
        run_stage(cfg, "data", {"b": 2}, lambda: {})
    assert run_stage(cfg, "data", {"b": 1}, lambda: {"ok": True})["product"] == {"ok": True}


def test_psnr_by_hand():
    from trackgo_model.toy.scoring import psnr

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 10  # MSE = 100 / 96
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / (100 / 96)))


def test_ground_truth_tracks_scale_and_follow_the_path():
    from trackgo_model.toy.scoring import gt_object_tracks

    labels = np.zeros((3, 16, 16), np.uint8)
    labels[0, 2:7, 2:7] = 1      # 5×5 square: inscribed-circle centre at (4, 4)
    labels[0, 10:15, 9:14] = 2   # centre (11, 12)
    paths = np.array([[[4.0, 4.0], [11.0, 12.0]], [[6.0, 4.0], [11.0, 10.0]], [[8.0, 5.0], [11.0, 8.0]]])
    gt = {"labels": labels, "paths": paths}
    t = gt_object_tracks(gt, 0, 3, (16, 16))
    assert t.shape == (3, 2, 2)
    assert np.allclose(t[:, 0], [[4, 4], [6, 4], [8, 5]]) and np.allclose(t[:, 1], [[11, 12], [11, 10], [11, 8]])
    half = gt_object_tracks(gt, 0, 3, (8, 8))  # pixel-centre convention x' = (x + 0.5)/2 − 0.5
    assert np.allclose(half[2, 0], [(8 + 0.5) / 2 - 0.5, (5 + 0.5) / 2 - 0.5])


def test_vae_windows_and_schedule():
    from trackgo_model.train.vae import VAETrainConfig, learning_rate, random_windows

    g = torch.Generator().manual_seed(0)
    v = torch.arange(2 * 6 * 3 * 16 * 24, dtype=torch.float32).reshape(2, 6, 3, 16, 24)
    w = random_windows(v, 4, 8, g)
    assert w.shape == (2, 4, 3, 8, 8)
    for i in range(2):  # each window is a contiguous block of the clip on the ×8 grid
        flat = v[i].flatten()
        start = int((flat == w[i, 0, 0, 0, 0]).nonzero()[0])
        t0, rest = divmod(start, 3 * 16 * 24)
        y, x = divmod(rest, 24)
        assert y % 8 == 0 and x % 8 == 0 and torch.equal(w[i], v[i, t0:t0 + 4, :, y:y + 8, x:x + 8])
    cfg = VAETrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.1) and learning_rate(cfg, 9) == pytest.approx(1.0)
    assert learning_rate(cfg, 10) == pytest.approx(1.0) and learning_rate(cfg, 60) == pytest.approx(0.55)
    assert learning_rate(cfg, 110) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        VAETrainConfig(crop=12)


def test_vae_learns_a_constant_clip():
    """A few steps on one clip lower the reconstruction loss (the objective has a usable gradient)."""
    from diffusers import AutoencoderKLTemporalDecoder

    from trackgo_model.train.vae import VAEModelConfig, vae_loss

    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(**VAEModelConfig(block_out_channels=(32, 32, 32, 32)).diffusers_config(16))
    clip = torch.tensor([0.6, -0.4, 0.1]).view(1, 1, 3, 1, 1).expand(1, 2, 3, 16, 16).contiguous()
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(10):
        loss, parts = vae_loss(vae, clip, 1e-6, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else parts["l1"]
    assert parts["l1"] < 0.7 * first


def test_vae_loss_terms_by_hand():
    """L1, MSE and the chroma term on a stub VAE that decodes a fixed error: a grey error (equal in
    the three channels) has no chroma; a hue error does."""
    from types import SimpleNamespace

    from trackgo_model.train.vae import vae_loss

    class Stub:
        def __init__(self, error):
            self.error = error

        def encode(self, x):
            self.x = x
            mean = torch.zeros(x.shape[0], 4, 1, 1)
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.ones_like(mean),
                                                               kl=lambda: torch.zeros(x.shape[0])))

        def decode(self, z, num_frames):
            return SimpleNamespace(sample=self.x + self.error.view(1, 3, 1, 1))

    clips = torch.zeros(1, 2, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    _, grey = vae_loss(Stub(torch.tensor([0.3, 0.3, 0.3])), clips, 0.0, g, mse_weight=1.0, chroma_weight=1.0)
    assert grey["l1"] == pytest.approx(0.3) and grey["mse"] == pytest.approx(0.09) and grey["chroma"] == pytest.approx(0)
    loss, hue = vae_loss(Stub(torch.tensor([0.3, -0.3, 0.0])), clips, 0.0, g, mse_weight=1.0, chroma_weight=2.0)
    assert hue["l1"] == pytest.approx(0.2) and hue["mse"] == pytest.approx(0.06)
    assert hue["chroma"] == pytest.approx(0.06)  # zero-mean error: chroma = the whole error
    assert float(loss) == pytest.approx(0.2 + 0.06 + 2 * 0.06)


def test_stage_times_are_measured(tmp_path):
    """A stage's wall and CPU seconds are what it spent (a half-second sleep and a busy loop)."""
    import time

    from trackgo_model.toy.stages import run_stage

    cfg = _cfg(tmp_path)

    def work():
        time.sleep(0.3)
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        return {"made": True}

    record = run_stage(cfg, "videos", {"x": 1}, work)
    # wall ≥ sleep + busy CPU; CPU ≥ the busy loop and ≤ the wall beyond the sleep (one thread)
    assert record["wall_s"] >= 0.6 and 0.3 <= record["cpu_s"] <= record["wall_s"] - 0.29


def test_wan_vae_learns_and_carries_its_latent_statistics(tmp_path, sample_videos):
    """model.family=wan: Wan's causal 3D VAE, 4k + 1 frames: a few steps on one clip lower the loss;
    a short run writes a diffusers folder whose latents_mean/std normalise its latents."""
    from diffusers import AutoencoderKLWan

    from tests.train.conftest import write_tiny_shards
    from trackgo_model.train.vae import VAEModelConfig, load_vae_config, train_vae, vae_loss
    from trackgo_model.wan.conditioning import encode_video

    model = VAEModelConfig(family="wan", block_out_channels=(8, 16, 16, 16), latent_channels=16)
    torch.manual_seed(0)
    vae = model.build(16)
    clip = torch.tensor([0.6, -0.4, 0.1]).view(1, 1, 3, 1, 1).expand(1, 5, 3, 16, 16).contiguous()
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        loss, parts = vae_loss(vae, clip, 1e-6, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["l1"])
    assert losses[-1] < 0.7 * losses[0] and parts["kl"] >= 0
    with pytest.raises(ValueError, match="4k \\+ 1"):
        load_vae_config("toy-vae", ["model.family=wan", "window=2"])
    shards = write_tiny_shards(tmp_path / "shards", sample_videos["carphone"], frames=5)
    cfg = load_vae_config("toy-vae", [
        f"data.shards={shards}", f"run_dir={tmp_path / 'run'}", "model.family=wan", "model.latent_channels=16",
        "model.block_out_channels=[8,16,16,16]", "window=5", "data.num_frames=5", "data.width=32",
        "data.height=32", "max_steps=2", "checkpoint_every=2", "scale_samples=2", "eval_samples=1"])
    result = train_vae(cfg)
    assert result["family"] == "wan" and len(result["latents_mean"]) == 16 and result["psnr_heldout"] > 0
    loaded = AutoencoderKLWan.from_pretrained(tmp_path / "run" / "vae")
    assert loaded.config.latents_std == result["latents_std"]
    from trackgo_data.loader import make_dataset

    batch = next(iter(make_dataset(str(shards / "clips-000000.tar"), batch_size=2, num_frames=5, size=(32, 32),
                                   shuffle=0, resampled=False)))
    with torch.no_grad():
        z = encode_video(loaded, batch.video.float() / 127.5 - 1)  # normalised by the recorded statistics
    assert abs(float(z.mean())) < 1.0 and 0.3 < float(z.std()) < 3.0


def test_vae_patch_code_teacher_and_image_steps(tmp_path, sample_videos, monkeypatch):
    """PatchCode: the principal components of 8×8 patches, checked against numpy's SVD; a patch made
    of the mean plus one component codes to a one-hot; on Wan's VAE the teacher term compares latent
    frame k with the code of pixel frame 4k. teacher_steps / image_steps / video_teacher_steps: the
    first steps see one frame of image_batch_size clips (the first ones decoding the code, pulling
    the posterior mean to it), then windows of the clip with a posterior sample (the first ones
    decoding the code)."""
    from tests.train.conftest import write_tiny_shards
    from trackgo_model.train import vae as vae_mod

    frames = torch.rand(3, 3, 16, 24) * 2 - 1
    code = vae_mod.PatchCode.fit(frames, 4)
    rows = frames.numpy().reshape(3, 3, 2, 8, 3, 8).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 192)
    _, _, vh = np.linalg.svd(rows - rows.mean(0), full_matrices=False)
    assert np.allclose(np.abs(code.components.numpy()), np.abs(vh[:4].T), atol=1e-4)
    got = code(frames)
    assert got.shape == (3, 4, 2, 3) and float(got.std()) == pytest.approx(1.0, rel=1e-4)
    patch = (code.mean + 2.0 * code.components[:, 1]).view(3, 8, 8).unsqueeze(0)  # pixel_unshuffle order
    assert torch.allclose(code(patch).flatten(), torch.tensor([0.0, 2.0, 0.0, 0.0]) / code.scale, atol=1e-5)

    clip = torch.rand(2, 9, 3, 16, 24) * 2 - 1  # Wan: latent frame k is coded from pixel frame 4k
    torch.manual_seed(0)
    wan = vae_mod.VAEModelConfig(family="wan", block_out_channels=(8, 16, 16, 16), latent_channels=4).build(16)
    _, parts = vae_mod.vae_loss(wan, clip, 0.0, torch.Generator().manual_seed(0), sample=False, code=code)
    with torch.no_grad():
        mu = wan.encode(clip.permute(0, 2, 1, 3, 4)).latent_dist.mean
    want = torch.stack([code(clip[:, k]) for k in (0, 4, 8)], dim=2)
    assert parts["teacher"] == pytest.approx(float((mu - want).pow(2).mean()), rel=1e-4)

    seen = []
    loss = vae_mod.vae_loss
    monkeypatch.setattr(vae_mod, "vae_loss", lambda v, c, *a, **k: (
        seen.append((tuple(c.shape), k["sample"], k["code"] is not None)), loss(v, c, *a, **k))[1])
    shards = write_tiny_shards(tmp_path / "shards", sample_videos["carphone"], frames=5)
    cfg = vae_mod.load_vae_config("toy-wan-vae", [
        f"data.shards={shards}", f"run_dir={tmp_path / 'run'}", "model.block_out_channels=[8,16,16,16]",
        "window=5", "data.num_frames=5", "data.width=32", "data.height=32", "max_steps=5", "image_steps=3",
        "teacher_steps=2", "video_teacher_steps=1", "image_batch_size=3", "batch_size=1", "checkpoint_every=5",
        "scale_samples=1", "eval_samples=1", "init_logvar=-6"])
    result = vae_mod.train_vae(cfg)
    image, video = (3, 1, 3, 32, 32), (1, 5, 3, 32, 32)
    assert seen == [(image, False, True)] * 2 + [(image, False, False), (video, True, True), (video, True, False)]
    assert result["psnr_heldout_zero_latents"] > 0
    from diffusers import AutoencoderKLWan

    with torch.no_grad():  # the posterior starts narrow (log-variance −6 + diffusers' small init) and stays so
        post = AutoencoderKLWan.from_pretrained(tmp_path / "run" / "vae").encode(torch.zeros(1, 3, 5, 32, 32))
    assert -7.0 < float(post.latent_dist.logvar.mean()) < -5.0
    with pytest.raises(ValueError, match="teacher_steps"):
        vae_mod.load_vae_config("toy-wan-vae", ["image_steps=2", "teacher_steps=3"])


def test_wan_vae_starts_frame_by_frame():
    """start_causal_as_2d: a video of one repeated frame codes to that frame's latent at every latent
    frame and decodes to that frame's decoding at every pixel frame (default init: it does not)."""
    from trackgo_model.train.vae_model import VAEModelConfig, start_causal_as_2d

    torch.manual_seed(0)
    vae = VAEModelConfig(family="wan", block_out_channels=(8, 16, 16, 16), latent_channels=4).build(32).eval()
    img = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    video = img.expand(1, 3, 9, 16, 16).contiguous()

    def gaps():
        with torch.no_grad():
            zi, zv = vae.encode(img).latent_dist.mean, vae.encode(video).latent_dist.mean
            di, dv = vae.decode(zi).sample, vae.decode(zv).sample
        return float((zv - zi).abs().max()), float((dv - di).abs().max())

    assert min(gaps()) > 1e-3
    assert start_causal_as_2d(vae) > 0
    z_gap, frame_gap = gaps()
    assert z_gap < 1e-5 and frame_gap < 1e-5

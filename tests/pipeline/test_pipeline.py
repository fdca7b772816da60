"""TrackGoPipeline on the tiny random model: layout, equivalence with diffusers' SVD sampler,
the motion knobs, loading errors, saving and memory options."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from trackgo_model.pipeline import MissingWeightsError, TrackGoPipeline

H, W, L = 64, 128, 4


def _image(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _trajectories(h=H, w=W, frames=L):
    from trackgo_data.render import render_trajectories

    pts = np.array([[20.0, 16.0], [30.0, 20.0], [90.0, 40.0]], np.float32)
    tracks = np.stack([pts + [6.0 * t, 2.0 * t] for t in range(frames)])
    return render_trajectories(tracks, np.ones(tracks.shape[:2], bool), np.array([0, 0, 1]), h, w)


def test_tiny_folder_layout(tiny_dir):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionConfig

    for sub in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler"):
        assert (tiny_dir / sub).is_dir(), sub
    for name in ("model_index.json", "trackgo_config.json", "trackgo.safetensors"):
        assert (tiny_dir / name).is_file(), name
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKLTemporalDecoder"]
    vae = AutoencoderKLTemporalDecoder.from_pretrained(tiny_dir / "vae")
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 64, 96)).latent_dist.mode()
    assert z.shape == (1, 4, 8, 12)                            # ×8 spatial down-sampling
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    clip = CLIPVisionConfig.from_pretrained(tiny_dir / "image_encoder")
    unet_cfg = json.loads((tiny_dir / "unet" / "config.json").read_text())
    assert clip.image_size == 224 and clip.projection_dim == unet_cfg["cross_attention_dim"]
    sch = EulerDiscreteScheduler.from_pretrained(tiny_dir / "scheduler").config
    assert (sch.prediction_type, sch.use_karras_sigmas, sch.timestep_type) == ("v_prediction", True, "continuous")
    assert (sch.sigma_min, sch.sigma_max) == (0.002, 700.0)
    # the saved UNet is the bare SVD UNet: no adapter tensors inside it
    from safetensors import safe_open

    with safe_open(str(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as fh:
        assert not [k for k in fh.keys() if "processor" in k]


def test_init_tiny_is_deterministic(tmp_path, tiny_dir):
    from safetensors.torch import load_file

    from trackgo_model.tiny import init_tiny

    again = init_tiny(tmp_path / "again", seed=0)
    other = init_tiny(tmp_path / "other", seed=1)
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "image_encoder/model.safetensors", "trackgo.safetensors"):
        a, b, c = (load_file(str(d / rel)) for d in (tiny_dir, again, other))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), rel
        assert not all(torch.equal(a[k], c[k]) for k in a), rel
    init_tiny(tmp_path / "again", seed=1)                      # rerun replaces the folder whole
    a, c = (load_file(str(d / "trackgo.safetensors")) for d in (tmp_path / "again", other))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not list(tmp_path.glob(".again*"))                  # no temp folders left behind


def test_matches_diffusers_svd_pipeline_without_trajectories(tiny_dir, tiny_pipe):
    """No motion condition → TrackGo samples exactly what diffusers' own SVD pipeline samples
    from the same folder: CLIP token, noise augmentation, time ids, Karras/Euler v-prediction,
    frame-wise guidance 1→3 and the random draws all agree."""
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    ref_pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    img = _image(224, 224)   # at the CLIP size both resizers are the identity
    kw = dict(num_frames=L, height=224, width=224, num_inference_steps=2, fps=7, motion_bucket_id=127,
              noise_aug_strength=0.02, min_guidance_scale=1.0, max_guidance_scale=3.0)
    ref = ref_pipe(Image.fromarray(img), generator=torch.Generator().manual_seed(3), output_type="latent",
                   decode_chunk_size=L, **kw).frames
    ours = tiny_pipe(img, None, generator=torch.Generator().manual_seed(3), output_type="latent", **kw)
    assert ours.shape == ref.shape == (1, L, 4, 28, 28)
    # equal up to float32 rounding (the VAE convolutions see differently laid-out inputs: ~1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-3)
    # and guidance matters: a flat schedule at 1 gives something else
    flat = tiny_pipe(img, None, generator=torch.Generator().manual_seed(3), output_type="latent",
                     **{**kw, "max_guidance_scale": 1.0})
    assert (flat - ours).abs().max() > 1e-2
    other_fps = tiny_pipe(img, None, generator=torch.Generator().manual_seed(3), output_type="latent",
                          **{**kw, "fps": 8})
    assert (other_fps - ours).abs().max() > 1e-2


def test_trajectories_and_knobs_change_output_only_with_trajectories(tiny_pipe):
    img, P = _image(), _trajectories()
    run = lambda traj, **k: tiny_pipe(img, traj, num_frames=L, num_inference_steps=2, seed=0,
                                      output_type="latent", **k)
    base_none = run(None)
    base = run(P)
    assert not torch.allclose(base, base_none, atol=1e-4)      # P steers the tiny model
    torch.testing.assert_close(run(P), base)                   # deterministic given the seed
    # knobs are no-ops without trajectories (the adapters are bypassed) ...
    torch.testing.assert_close(run(None, motion=0.0), base_none)
    torch.testing.assert_close(run(None, tau=-1e4, mode="paper"), base_none)
    # ... and act with them
    assert not torch.allclose(run(P, motion=0.0), base, atol=1e-4)
    assert not torch.allclose(run(P, tau=-1e4), base, atol=1e-4)   # τ = mask value: no masking
    assert not torch.allclose(run(P, mode="paper"), base, atol=1e-4)
    torch.testing.assert_close(run(P), base)                   # knobs do not leak between calls


def test_trajectory_guidance_adds_the_difference_that_P_makes(tiny_pipe):
    """One Euler step is affine in the model's prediction, so with trajectory guidance g the result
    must be the image-guided one plus (g − 1)·(conditional with P − conditional with the empty P),
    each of those sampled alone (batch 1, no image guidance) by the same pipeline."""
    img, P = _image(), _trajectories()
    run = lambda traj, lo, hi, g=1.0: tiny_pipe(img, traj, num_frames=L, num_inference_steps=1, seed=0,
                                                output_type="latent", min_guidance_scale=lo,
                                                max_guidance_scale=hi, trajectory_guidance=g)
    with_p, empty = run(P, 1.0, 1.0), run(np.zeros_like(P), 1.0, 1.0)
    assert (with_p - empty).abs().max() > 0.05                  # the empty P is a different condition
    guided = run(P, 1.0, 3.0)
    for g in (2.0, 3.5):
        torch.testing.assert_close(run(P, 1.0, 3.0, g), guided + (g - 1.0) * (with_p - empty),
                                   atol=2e-3, rtol=0)  # Euler from σ 700: float32 ulps at |x| ≈ 10³
        torch.testing.assert_close(run(P, 1.0, 1.0, g), with_p + (g - 1.0) * (with_p - empty),
                                   atol=2e-3, rtol=0)  # Euler from σ 700: float32 ulps at |x| ≈ 10³
    torch.testing.assert_close(run(P, 1.0, 3.0, 1.0), guided)    # g = 1 is off
    with pytest.raises(ValueError, match=">= 1"):
        run(P, 1.0, 3.0, 0.5)
    with pytest.raises(ValueError, match="give trajectories"):
        run(None, 1.0, 3.0, 2.0)


def test_output_frames_uint8_and_tracks_input(tiny_pipe):
    from trackgo_data.render import render_trajectories
    from trackgo_model.conditioning import trajectory_video

    img = _image()
    pts = np.array([[[10.0, 10.0]], [[14.0, 12.0]], [[18.0, 14.0]], [[22.0, 16.0]]], np.float32)
    vis, comp = np.ones((L, 1), bool), np.array([0])
    # tracks given in input-image pixels are rescaled to the output size before rendering
    P2 = trajectory_video((pts, vis, comp), (W, H), 2 * H, 2 * W)
    np.testing.assert_array_equal(P2, render_trajectories(pts * 2, vis, comp, 2 * H, 2 * W))
    frames = tiny_pipe(img, (pts, vis, comp), num_inference_steps=1, seed=0)
    assert frames.shape == (L, H, W, 3) and frames.dtype == np.uint8
    pt = tiny_pipe(img, (pts, vis, comp), num_inference_steps=1, seed=0, output_type="pt")
    np.testing.assert_array_equal(((pt[0] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                                  frames)


def test_bad_sizes_and_frame_counts(tiny_pipe):
    img, P = _image(), _trajectories()
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_pipe(img, None, num_frames=L, height=72, width=128, num_inference_steps=1)
    with pytest.raises(ValueError, match="frames"):
        tiny_pipe(img, P, num_frames=L + 1, num_inference_steps=1)
    with pytest.raises(ValueError, match="output is"):
        tiny_pipe(img, P, height=2 * H, width=W, num_inference_steps=1)


def test_missing_subfolders_one_clear_error(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "vae")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingWeightsError) as err:
        TrackGoPipeline.from_pretrained(broken)
    msg = str(err.value)
    assert "vae/" in msg and "unet/diffusion_pytorch_model.safetensors" in msg and "init-tiny" in msg
    with pytest.raises(MissingWeightsError, match="trackgo_config.json, trackgo.safetensors"):
        TrackGoPipeline.from_pretrained(tiny_dir, trackgo_checkpoint=tmp_path / "nothing")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        TrackGoPipeline.from_pretrained(tmp_path / "absent")


def test_save_pretrained_roundtrip_and_cpu_offload(tmp_path, tiny_pipe):
    img, P = _image(), _trajectories()
    kw = dict(num_inference_steps=1, seed=0, output_type="latent")
    ref = tiny_pipe(img, P, **kw)
    out = tiny_pipe.save_pretrained(tmp_path / "saved")
    tiny_pipe.save_pretrained(tmp_path / "saved")              # rerun: replaced, not nested
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["unet", "vae", "image_encoder", "feature_extractor", "scheduler", "model_index.json",
         "trackgo_config.json", "trackgo.safetensors"])
    again = TrackGoPipeline.from_pretrained(out, enable_model_cpu_offload=True)
    torch.testing.assert_close(again(img, P, **kw), ref)
    assert next(again.unet.parameters()).device.type == "cpu"


def test_reduced_precision_loading(tiny_dir):
    bf = TrackGoPipeline.from_pretrained(tiny_dir, torch_dtype="bf16")
    assert {next(m.parameters()).dtype for m in (bf.unet, bf.vae, bf.image_encoder)} == {torch.bfloat16}
    assert next(bf.unet.encoder.parameters()).dtype == torch.bfloat16
    fp16 = TrackGoPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float16)
    assert next(fp16.unet.parameters()).dtype == torch.float16
    assert next(fp16.vae.parameters()).dtype == torch.float32   # force_upcast VAE stays float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="reduced-precision sampling needs a GPU")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_sampling_on_gpu(tiny_dir, dtype):
    pipe = TrackGoPipeline.from_pretrained(tiny_dir, torch_dtype=dtype, device="cuda")
    kw = dict(num_inference_steps=2, seed=0, output_type="pt")
    out = pipe(_image(), _trajectories(), **kw)
    assert out.shape == (1, L, 3, H, W) and out.dtype == torch.float32 and torch.isfinite(out).all()
    offload = TrackGoPipeline.from_pretrained(tiny_dir, torch_dtype=dtype, device="cuda",
                                              enable_model_cpu_offload=True)
    torch.testing.assert_close(offload(_image(), _trajectories(), **kw), out)
    assert next(offload.unet.parameters()).device.type == "cpu"

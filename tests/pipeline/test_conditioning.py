"""SVD conditioning pieces against hand computation and against the libraries' own code."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trackgo_model import conditioning as cond
from trackgo_model.tiny import CLIP_PROCESSOR, TINY_VAE


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(0)
    return AutoencoderKLTemporalDecoder(**TINY_VAE).eval()


def test_added_time_ids_values():
    ids = cond.make_added_time_ids(fps=7, motion_bucket_id=127, noise_aug_strength=0.02, batch=3)
    assert ids.shape == (3, 3)
    expected = torch.tensor([[6.0, 127.0, 0.02]] * 3)
    torch.testing.assert_close(ids, expected)
    ids = cond.make_added_time_ids(25, 10, 0.5, 1, dtype=torch.float64)
    assert ids.dtype == torch.float64 and ids.tolist() == [[24.0, 10.0, 0.5]]
    with pytest.raises(ValueError):
        cond.make_added_time_ids(7, 127, 0.02, 0)


def test_guidance_schedule_linear_over_frames():
    torch.testing.assert_close(cond.guidance_scales(1.0, 3.0, 5), torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))
    s = cond.guidance_scales(1.0, 3.0, 14)
    assert s[0] == 1.0 and s[-1] == 3.0
    torch.testing.assert_close(s.diff(), torch.full((13,), 2.0 / 13))


def test_clip_normalisation_of_constant_image():
    # a constant image stays constant through the antialiased bicubic resize: (c+1)/2 normalised
    img = torch.full((2, 3, 40, 72), 0.5)
    out = cond.clip_preprocess(img)
    assert out.shape == (2, 3, 224, 224)
    for c in range(3):
        expected = (0.75 - cond.CLIP_MEAN[c]) / cond.CLIP_STD[c]
        torch.testing.assert_close(out[:, c], torch.full((2, 224, 224), expected), atol=1e-5, rtol=0)


def test_clip_preprocess_matches_clip_image_processor():
    from transformers import CLIPImageProcessor

    fe = CLIPImageProcessor(**CLIP_PROCESSOR)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    ref = fe(images=img, return_tensors="pt").pixel_values  # resize/crop are no-ops at 224
    ours = cond.clip_preprocess(cond.image_to_tensor(img), fe)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def _diffusers_svd_clip_input(img: np.ndarray, fe) -> torch.Tensor:
    """What diffusers' SVD pipeline feeds CLIP for a PIL-like uint8 image (its own functions)."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0  # as pil_to_numpy/numpy_to_pt
    x = _resize_with_antialiasing(x * 2.0 - 1.0, (224, 224))
    x = (x + 1.0) / 2.0
    return fe(images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False,
              return_tensors="pt").pixel_values


@pytest.mark.parametrize("hw", [(90, 150), (576, 1024), (300, 233)])
def test_clip_preprocess_is_the_svd_pipelines(hw):
    from transformers import CLIPImageProcessor

    fe = CLIPImageProcessor(**CLIP_PROCESSOR)
    rng = np.random.default_rng(hw[0])
    # sharp edges: bicubic overshoots [0, 1], which SVD keeps (no clamp)
    img = (rng.integers(0, 2, (hw[0] // 3 + 1, hw[1] // 3 + 1, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(img.repeat(3, 0).repeat(3, 1)[: hw[0], : hw[1]])
    ref = _diffusers_svd_clip_input(img, fe)
    ours = cond.clip_preprocess(cond.image_to_tensor(img), fe)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    unit = ours * torch.tensor(cond.CLIP_STD).view(1, 3, 1, 1) + torch.tensor(cond.CLIP_MEAN).view(1, 3, 1, 1)
    assert unit.min() < -1e-3 or unit.max() > 1 + 1e-3  # the overshoot is there, not clamped away


def test_encode_image_clip_equals_svd_pipeline_encode_image(vae):
    """The whole CLIP branch against diffusers' StableVideoDiffusionPipeline._encode_image."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from trackgo_model.model import build_unet
    from trackgo_model.tiny import SVD_SCHEDULER, TINY_CLIP

    torch.manual_seed(0)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=32, **TINY_CLIP)).eval()
    fe = CLIPImageProcessor(**CLIP_PROCESSOR)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=enc, unet=build_unet("tiny", device="cpu"),
                                        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER), feature_extractor=fe)
    img = np.random.default_rng(3).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = pipe._encode_image(Image.fromarray(img), "cpu", 1, False)
        ours = cond.encode_image_clip(enc, fe, cond.image_to_tensor(img))
    assert ours.shape == ref.shape == (1, 1, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_encode_image_clip_shape_and_values():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from trackgo_model.tiny import TINY_CLIP

    torch.manual_seed(0)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=16, **TINY_CLIP)).eval()
    img = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        out = cond.encode_image_clip(enc, None, img)
        ref = enc(pixel_values=cond.clip_preprocess(img)).image_embeds
    assert out.shape == (2, 1, 16)
    torch.testing.assert_close(out[:, 0], ref)


def test_condition_latents_unscaled_video_latents_scaled(vae):
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mode = vae.encode(img).latent_dist.mode()
        c0 = cond.encode_condition_latents(vae, img, 0.0, torch.Generator().manual_seed(0))
        v = cond.encode_video_latents(vae, img[:, None].repeat(1, 3, 1, 1, 1), chunk=2)
    assert c0.shape == (1, 4, 8, 8)                  # /8 down-sampling
    torch.testing.assert_close(c0, mode)             # not scaled
    assert v.shape == (1, 3, 4, 8, 8)
    for f in range(3):                               # scaled by 0.18215
        torch.testing.assert_close(v[:, f], mode * 0.18215, atol=1e-6, rtol=1e-5)


def test_condition_latents_noise_augmentation(vae):
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        c = cond.encode_condition_latents(vae, img, 0.3, torch.Generator().manual_seed(5))
        noise = torch.randn(img.shape, generator=torch.Generator().manual_seed(5))
        ref = vae.encode(img + 0.3 * noise).latent_dist.mode()
        clean = vae.encode(img).latent_dist.mode()
    torch.testing.assert_close(c, ref)
    assert not torch.allclose(c, clean, atol=1e-4)


def test_decode_latents_scaling_and_chunks_per_video(vae):
    torch.manual_seed(1)
    lat = torch.randn(2, 4, 4, 4, 6)
    with torch.no_grad():
        out = cond.decode_latents(vae, lat, num_frames=4, decode_chunk_size=4)
        ref1 = vae.decode(lat[1] / 0.18215, num_frames=4).sample
        chunked = cond.decode_latents(vae, lat[:1], num_frames=4, decode_chunk_size=2)
        ref_chunk = torch.cat([vae.decode(lat[0, :2] / 0.18215, num_frames=2).sample,
                               vae.decode(lat[0, 2:] / 0.18215, num_frames=2).sample])
    assert out.shape == (2, 4, 3, 32, 48)
    torch.testing.assert_close(out[1], ref1)         # second video decoded on its own
    torch.testing.assert_close(chunked[0], ref_chunk)
    with pytest.raises(ValueError):
        cond.decode_latents(vae, lat, num_frames=3)


def test_trajectory_and_image_to_tensor():
    P = np.zeros((3, 4, 6, 3), np.uint8)
    P[1, 2, 3] = (255, 0, 128)
    t = cond.trajectory_to_tensor(P)
    assert t.shape == (1, 3, 3, 4, 6)
    assert t[0, 0].eq(-1).all()
    torch.testing.assert_close(t[0, 1, :, 2, 3], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]))
    with pytest.raises(ValueError, match="uint8"):
        cond.trajectory_to_tensor(P.astype(np.float32))
    img = cond.image_to_tensor(P[1])
    assert img.shape == (1, 3, 4, 6) and img[0, 0, 2, 3] == 1.0
    with pytest.raises(ValueError):
        cond.image_to_tensor(np.zeros((4, 6), np.uint8))

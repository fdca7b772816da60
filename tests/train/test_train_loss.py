"""The training objective on the tiny model, recomputed directly from its definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.train.conftest import tiny_config


@pytest.fixture(scope="module")
def setup(tiny_shards, tiny_model_dir, tmp_path_factory):
    from trackgo_model.train.data import data_stream, load_components

    run = tmp_path_factory.mktemp("loss") / "run"
    cfg = tiny_config(tiny_shards, tiny_model_dir, run, **{"data.batch_size": 2, "global_batch_size": 2})
    comp = load_components(cfg, run)
    comp.model.freeze_for_training()
    batch = next(data_stream(cfg, [str(p) for p in sorted(tiny_shards.glob("*.tar"))[:1]],
                             rank=0, world=1, segment_start=0))
    return cfg, comp, batch


def _block_mean(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H0, W0) → (h, w) mean over equal blocks (the grids here divide exactly)."""
    H0, W0 = mask.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = mask[i * H0 // h:(i + 1) * H0 // h, j * W0 // w:(j + 1) * W0 // w].mean()
    return out


def test_loss_parts_match_a_direct_computation(setup):
    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    cfg, comp, batch = setup
    obj = cfg.objective
    core = comp.model
    inputs = batch_to_inputs(batch, torch.device("cpu"), cfg.data.fps)
    assert inputs.fps.tolist() == [8.0, 8.0]  # from the samples' meta.json, not the config default
    parts = compute_loss(core, core, comp.vae, comp.image_encoder, comp.feature_extractor, inputs, obj,
                         generator=torch.Generator().manual_seed(7), motion_bucket_id=127.0)

    # ---- L_attn (Eq. 8, "mean" normalisation) from the collected maps, with loops
    maps = core.attention_maps()
    assert len(maps) == 4  # every temporal attn1 of the tiny UNet
    masks = (batch.masks.numpy() > 0).astype(np.float64)  # (B, F, H/8, W/8)
    B, F = masks.shape[:2]
    per_layer = []
    for m in maps:
        diag = m.diag.detach().double().numpy()  # (B, h·w, heads, F)
        h, w = m.grid
        total = 0.0
        for b in range(B):
            for f in range(F):
                phi = _block_mean(masks[b, f], h, w).reshape(-1)  # (h·w,)
                total += ((diag[b, :, :, f] * phi[:, None]) ** 2).sum()
        per_layer.append(total / (B * h * w * diag.shape[2]))
    assert parts.attn.item() == pytest.approx(float(np.mean(per_layer)), rel=1e-5)
    assert parts.attn.item() > 0

    # ---- L_mse: redo the draws in the documented order and the EDM formulas by hand
    g = torch.Generator().manual_seed(7)
    sigma_cond = torch.exp(obj.cond_log_mean + obj.cond_log_std * torch.randn(B, generator=g))
    pix = torch.randn(inputs.image.shape, generator=g)
    u = torch.rand(2, B, generator=g)
    sigma = torch.exp(obj.p_mean + obj.p_std * torch.randn(B, generator=g))
    vae = comp.vae
    with torch.no_grad():
        frames = inputs.video.flatten(0, 1)
        x0 = vae.encode(frames).latent_dist.mode().reshape(B, F, 4, 4, 4) * vae.config.scaling_factor
        eps = torch.randn(x0.shape, generator=g)
        img = vae.encode(inputs.image + sigma_cond.view(B, 1, 1, 1) * pix).latent_dist.mode()
        img = img * (u[1] >= obj.drop_image_prob).float().view(B, 1, 1, 1)
        from trackgo_model.conditioning import encode_image_clip

        clip = encode_image_clip(comp.image_encoder, comp.feature_extractor, inputs.image)
        clip = clip * (u[0] >= obj.drop_clip_prob).float().view(B, 1, 1)
        s = sigma.view(B, 1, 1, 1, 1)
        x = x0 + s * eps
        inp = torch.cat([x / torch.sqrt(s ** 2 + 1), img.unsqueeze(1).repeat(1, F, 1, 1, 1)], dim=2)
        time_ids = torch.stack([torch.full((B,), 7.0), torch.full((B,), 127.0), sigma_cond], 1)
        out = core(inp, 0.25 * torch.log(sigma), clip, time_ids, inputs.trajectories)
        d = x / (s ** 2 + 1) - s / torch.sqrt(s ** 2 + 1) * out
        per = ((d - x0) ** 2).mean(dim=(1, 2, 3, 4)) * (sigma ** 2 + 1) / sigma ** 2
    assert parts.mse.item() == pytest.approx(per.mean().item(), rel=1e-4)
    assert torch.equal(parts.sigma, sigma)
    assert parts.loss.item() == pytest.approx(parts.mse.item() + obj.attn_loss_weight * parts.attn.item(), rel=1e-6)
    assert parts.loss.requires_grad and math.isfinite(parts.loss.item())


def test_lambda_zero_collects_no_maps_and_drops_the_term(setup):
    from dataclasses import replace

    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    cfg, comp, batch = setup
    inputs = batch_to_inputs(batch, torch.device("cpu"), cfg.data.fps)
    obj0 = replace(cfg.objective, attn_loss_weight=0.0)
    a = compute_loss(comp.model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor, inputs, obj0,
                     generator=torch.Generator().manual_seed(1), motion_bucket_id=127.0)
    b = compute_loss(comp.model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor, inputs,
                     cfg.objective, generator=torch.Generator().manual_seed(1), motion_bucket_id=127.0)
    assert a.attn.item() == 0.0 and a.loss.item() == pytest.approx(a.mse.item())
    assert a.mse.item() == pytest.approx(b.mse.item(), rel=1e-6)  # same draws, same MSE
    assert b.loss.item() > a.loss.item()


def test_conditioning_dropout_zeroes_clip_and_image(setup):
    """With both drop probabilities 1 the image no longer matters."""
    from dataclasses import replace

    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    cfg, comp, batch = setup
    inputs = batch_to_inputs(batch, torch.device("cpu"), cfg.data.fps)
    obj = replace(cfg.objective, drop_clip_prob=1.0, drop_image_prob=1.0, attn_loss_weight=0.0)
    other = replace(inputs, image=torch.flip(inputs.image, dims=[-1]))
    kw = dict(motion_bucket_id=127.0)
    a = compute_loss(comp.model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor, inputs, obj,
                     generator=torch.Generator().manual_seed(2), **kw)
    b = compute_loss(comp.model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor, other, obj,
                     generator=torch.Generator().manual_seed(2), **kw)
    assert a.mse.item() == pytest.approx(b.mse.item(), rel=1e-6)
    keep = replace(obj, drop_clip_prob=0.0, drop_image_prob=0.0)
    c = compute_loss(comp.model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor, other, keep,
                     generator=torch.Generator().manual_seed(2), **kw)
    assert c.mse.item() != pytest.approx(b.mse.item(), rel=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(setup):
    """Recomputation inside checkpointed blocks must still see the adapters' per-forward state."""
    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    cfg, comp, batch = setup
    core = comp.model
    inputs = batch_to_inputs(batch, torch.device("cpu"), cfg.data.fps)

    def grads():
        core.zero_grad(set_to_none=True)
        parts = compute_loss(core, core, comp.vae, comp.image_encoder, comp.feature_extractor, inputs,
                             cfg.objective, generator=torch.Generator().manual_seed(5), motion_bucket_id=127.0)
        parts.loss.backward()
        return {k: p.grad.clone() for k, p in core.named_group_parameters().items() if p.grad is not None}

    core.train()
    plain = grads()
    core.enable_gradient_checkpointing()
    try:
        ckpt = grads()
    finally:
        core.unet.disable_gradient_checkpointing()
        core.zero_grad(set_to_none=True)
    assert plain and sorted(plain) == sorted(ckpt)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-4, atol=1e-7, msg=k)

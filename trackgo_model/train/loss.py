"""The TrackGo training objective for one batch: L = L_mse (EDM, v-prediction) + λ·L_attn.

Conditioning follows SVD fine-tuning practice (``shared/spec/svd.md``):

* the first frame's CLIP image token is ``encoder_hidden_states``;
* the first frame plus pixel noise σ_cond ~ LogNormal(−3, 0.5) is VAE-encoded (posterior mode,
  unscaled), repeated over frames and concatenated with c_in·x_noisy on the channel axis;
  σ_cond is also the ``noise_aug_strength`` entry of ``added_time_ids``;
* conditioning dropout for classifier-free guidance: with probability ``drop_clip_prob`` the CLIP
  token is zeroed, independently with ``drop_image_prob`` the image latents (as SVD's
  unconditional branch at inference). The trajectory video P is never dropped (the pipeline feeds
  it to both guidance branches).

All random draws of a step come from one ``torch.Generator`` on the CPU, in a fixed order, so a run
resumed from a checkpoint (which stores the generator state) repeats the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trackgo_model import conditioning as cond
from trackgo_model.train import edm


@dataclass
class TrainInputs:
    """One batch as float tensors on the training device.

    video: (B, F, 3, H, W) in [-1, 1]; image: (B, 3, H, W) in [-1, 1] (the first frame);
    trajectories: (B, F, 3, H, W) in [-1, 1]; motion_masks: (B, F, H/8, W/8) float {0, 1} (union of
    the moving components); fps: (B,) float; tracks / visibility: per sample (F, N_b, 2) float32
    pixels and (F, N_b) bool, when the batch has them (Wan-Move's condition reads them).
    """

    video: torch.Tensor
    image: torch.Tensor
    trajectories: torch.Tensor
    motion_masks: torch.Tensor
    fps: torch.Tensor
    tracks: list | None = None
    visibility: list | None = None


def _to_unit(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device=device, dtype=torch.float32) / 127.5 - 1.0


def batch_to_inputs(batch, device: torch.device, default_fps: float) -> TrainInputs:
    """A loader ``Batch`` (uint8 tensors) → :class:`TrainInputs` on ``device``.

    batch.video (B, L, 3, H, W) uint8, batch.image (B, 3, H, W) uint8, batch.trajectory
    (B, L, 3, H, W) uint8, batch.masks (B, L, H/8, W/8) uint8 component labels (0 = background).
    The fps of each sample comes from ``batch.fps`` / ``batch.meta[i]["fps"]`` when present.
    """
    video = _to_unit(torch.as_tensor(batch.video), device)
    image = getattr(batch, "image", None)
    image = video[:, 0] if image is None else _to_unit(torch.as_tensor(image), device)
    traj = _to_unit(torch.as_tensor(batch.trajectory), device)
    masks = (torch.as_tensor(batch.masks) > 0).to(device=device, dtype=torch.float32)
    b = video.shape[0]
    fps = getattr(batch, "fps", None)
    if fps is None:
        metas = getattr(batch, "meta", None) or [{}] * b
        fps = [float(m.get("fps") or default_fps) if isinstance(m, dict) else default_fps for m in metas]
    fps = torch.as_tensor(fps, dtype=torch.float32).reshape(-1).to(device)
    if fps.numel() == 1 and b > 1:
        fps = fps.expand(b)
    if traj.shape[:2] != video.shape[:2] or masks.shape[:2] != video.shape[:2]:
        raise ValueError(
            f"batch shapes disagree: video {tuple(video.shape)}, trajectory {tuple(traj.shape)}, "
            f"masks {tuple(masks.shape)}"
        )
    tracks = getattr(batch, "tracks", None)
    visibility = getattr(batch, "visibility", None)
    if tracks is not None and visibility is not None:
        tracks = [torch.as_tensor(t, dtype=torch.float32) for t in tracks]
        visibility = [torch.as_tensor(v, dtype=torch.bool) for v in visibility]
    return TrainInputs(video=video, image=image, trajectories=traj, motion_masks=masks, fps=fps,
                       tracks=tracks, visibility=visibility)


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar, differentiable
    mse: torch.Tensor  # scalar, detached
    attn: torch.Tensor  # scalar, detached (0 when λ = 0)
    sigma: torch.Tensor  # (B,)


def compute_loss(
    model,
    core,
    vae,
    image_encoder,
    feature_extractor,
    inputs: TrainInputs,
    obj,
    *,
    generator: torch.Generator,
    motion_bucket_id: float,
    x0: torch.Tensor | None = None,
) -> LossParts:
    """L = mean_b w(σ_b)·‖D(x_b + σ_b ε; σ_b) − x_b‖² + λ·L_attn for one batch.

    ``model`` is what runs the forward (the TrackGoUNet, possibly wrapped for DDP/FSDP); ``core``
    the bare TrackGoUNet (its collected attention maps give L_attn). ``x0``: the video latents
    (B, F, 4, h, w) from a :class:`~trackgo_model.train.latent_cache.LatentCache`, else encoded here. ``obj`` is an
    :class:`~trackgo_model.train.config.ObjectiveConfig`. Random draws, in order:
    σ_cond (B), conditioning noise (B,3,H,W), dropout uniforms (2·B), σ (B), ε (B,F,4,h,w).
    """
    device = inputs.video.device
    b, f = inputs.video.shape[:2]
    vae_dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        if x0 is None:
            x0 = cond.encode_video_latents(vae, inputs.video.to(vae_dtype)).float()
        elif x0.shape[:2] != inputs.video.shape[:2]:
            raise ValueError(f"cached latents {tuple(x0.shape)} do not fit the batch {tuple(inputs.video.shape)}")
        clip = cond.encode_image_clip(image_encoder, feature_extractor, inputs.image).float()
        sigma_cond = edm.sample_log_normal(b, obj.cond_log_mean, obj.cond_log_std, generator=generator)
        pix_noise = torch.randn(inputs.image.shape, generator=generator).to(device)
        noisy_image = inputs.image + edm.expand_like(sigma_cond, inputs.image) * pix_noise
        img_lat = vae.encode(noisy_image.to(vae_dtype)).latent_dist.mode().float()
    u = torch.rand(2, b, generator=generator)
    keep_clip = (u[0] >= obj.drop_clip_prob).float().to(device)
    keep_image = (u[1] >= obj.drop_image_prob).float().to(device)
    clip = clip * keep_clip.view(b, 1, 1)
    img_lat = img_lat * keep_image.view(b, 1, 1, 1)

    sigma = edm.sample_sigmas(b, obj.p_mean, obj.p_std, generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    x_noisy = edm.add_noise(x0, noise, sigma)
    sc = edm.edm_precondition(sigma)
    sample = torch.cat(
        [edm.expand_like(sc.c_in, x_noisy) * x_noisy, img_lat.unsqueeze(1).expand(-1, f, -1, -1, -1)],
        dim=2,
    )
    time_ids = torch.stack(
        [inputs.fps - 1.0, torch.full_like(inputs.fps, float(motion_bucket_id)), sigma_cond.to(device)], dim=1
    )
    lam = float(obj.attn_loss_weight)
    pred = model(
        sample,
        sc.c_noise,
        encoder_hidden_states=clip,
        added_time_ids=time_ids,
        trajectories=inputs.trajectories,
        motion_masks=inputs.motion_masks,
        collect_attention=lam > 0,
    )
    denoised = edm.denoised_from_v(pred.float(), x_noisy, sigma)
    return with_attention_loss(edm.edm_loss(denoised, x0, sigma).mean(), core, inputs, lam, sigma)


def with_attention_loss(mse: torch.Tensor, core, inputs: TrainInputs, lam: float, sigma: torch.Tensor) -> LossParts:
    """L = L_mse + λ·L_attn (Eq. 9): Eq. 8 over the maps A(i, i) that ``core`` collected in the
    forward (normalisation and pooling from its TrackGoConfig); λ = 0: L_mse alone."""
    if lam > 0:
        attn = core.attention_loss(inputs.motion_masks).float()
        loss = mse + lam * attn
    else:
        attn = torch.zeros((), device=mse.device)
        loss = mse
    return LossParts(loss=loss, mse=mse.detach(), attn=attn.detach(), sigma=sigma)

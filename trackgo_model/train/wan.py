"""What ``trackgo train`` needs for ``model.base=wan``: the frozen parts, the flow-matching objective
and validation sampling (the training loop, data, optimizer groups and checkpoints are shared with SVD).

Objective for one batch (docs/wan.md, "Training"):
L = mean_b ‖F(x_σ ⊕ c; 1000σ) − (ε − x0)‖² + λ·L_attn, x_σ = (1 − σ)·x0 + σ·ε, σ = shift(u),
u ~ U(0, 1), c the first-frame condition; the text tokens are the fixed prompt ``model.prompt`` encoded once (the trajectory data has no captions).
Conditioning dropout keeps SVD's switches: ``drop_clip_prob`` zeroes Wan2.1's CLIP image tokens,
``drop_image_prob`` the first-frame latents of c (the mask channels stay). With ``model.wan_move``
the condition's latents are edited along each sample's tracks first (Wan-Move's guidance,
:mod:`~trackgo_model.wan.wan_move`), the tracks written in a random order as Wan-Move trains.
Random draws, in order, from the step's CPU generator: dropout uniforms (2·B), u (B),
ε (B, 16, F, h, w), then with ``wan_move`` one permutation of each sample's tracks.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trackgo_model.wan import conditioning as wcond

log = logging.getLogger(__name__)
__all__ = ["WanComponents", "flow_loss", "load_wan_components", "wan_move_condition"]

@dataclass
class WanComponents:
    """The TrackGoWan to train and the frozen parts of its folder (``parts.text_encoder`` is dropped
    once the prompt is encoded). text: (1, 512, text_dim) float32 tokens of ``model.prompt``."""

    model: Any
    parts: Any
    text: torch.Tensor
    source: Path
    wan_move: bool = False
    u_range: tuple[float, float] = (0.0, 1.0)  # of u in σ = shift(u): a Wan2.2 expert's noise levels

    @property
    def vae(self):
        return self.parts.vae

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Frozen parts to ``device``: the VAE in float32 (as Wan runs it), the image encoder in ``dtype``."""
        self.parts.vae.to(device)  # loaded in float32
        if self.parts.image_encoder is not None:
            self.parts.image_encoder.to(device, dtype=dtype)
        self.text = self.text.to(device)

    def encode_latents(self, video: torch.Tensor) -> torch.Tensor:
        """What the latent cache keeps of a clip, both deterministic: video (B, L, 3, H, W) in [-1, 1]
        → its normalised latents ⊕ the latents of its first-frame condition, (B, 2·16, F, H/8, W/8)."""
        r = self.model.temporal_ratio
        condition = wcond.condition_latents(self.parts.vae, video[:, 0], video.shape[1], r)
        return torch.cat([wcond.encode_video(self.parts.vae, video), condition[:, r:]], dim=1)

    def loss(self, model, inputs, cfg, generator: torch.Generator, x0: torch.Tensor | None = None):
        return flow_loss(model, self, inputs, cfg.objective, generator=generator, x0=x0)

    def generate(self, image, trajectories, cfg, device: torch.device, guide=None):
        """One validation video: image (H, W, 3) uint8, P (L, H, W, 3) uint8 → (L, H, W, 3) uint8;
        with ``wan_move`` the condition follows ``guide`` = (tracks (L, N, 2), visibility (L, N))
        and P is not given."""
        from trackgo_model.wan.pipeline import WanTrackGoPipeline

        v = cfg.validation
        pipe = WanTrackGoPipeline(self.model, self.parts, device=device)
        return pipe(image, None if self.wan_move else trajectories, num_frames=len(trajectories),
                    num_inference_steps=v.num_inference_steps, seed=v.seed, guidance_scale=1.0, prompt_embeds=self.text,
                    guide=guide if self.wan_move else None)


def flow_loss(model, comp: WanComponents, inputs, obj, *, generator: torch.Generator,
              x0: torch.Tensor | None = None):
    """The objective of the module docstring for one batch → ``LossParts`` (sigma: (B,) σ).

    model: what runs the forward (the TrackGoWan, possibly wrapped for DDP/FSDP); comp.model the
    bare one (its collected maps give L_attn). inputs: a ``TrainInputs`` (video (B, L, 3, H, W)).
    x0: cached latents ⊕ condition latents (B, 2·16, F, h, w) (:meth:`WanComponents.encode_latents`),
    else both are encoded here.
    """
    from .loss import with_attention_loss

    core, vae = comp.model, comp.parts.vae
    device = inputs.video.device
    b, length = inputs.video.shape[:2]
    r = core.temporal_ratio
    z = vae.config.z_dim
    with torch.no_grad():
        if x0 is None:
            x0 = wcond.encode_video(vae, inputs.video)
            condition = wcond.condition_latents(vae, inputs.image, length, r)
        elif tuple(x0.shape[:3]) != (b, 2 * z, (length - 1) // r + 1):
            raise ValueError(f"cached latents {tuple(x0.shape)} do not fit the batch {tuple(inputs.video.shape)}")
        else:  # the cache holds the clip's latents and its condition's
            x0, cached = x0[:, :z], x0[:, z:]
            mask = wcond.first_frame_mask(b, cached.shape[2], cached.shape[3], cached.shape[4], r, cached.device)
            condition = torch.cat([mask, cached], dim=1)
        tokens = wcond.image_tokens(comp.parts.image_encoder, comp.parts.image_processor, inputs.image)
    u = torch.rand(2, b, generator=generator)
    if tokens is not None:
        tokens = tokens * (u[0] >= obj.drop_clip_prob).float().to(device).view(b, 1, 1)
    keep_image = (u[1] >= obj.drop_image_prob).float().to(device).view(b, 1, 1, 1, 1)
    condition = torch.cat([condition[:, :r], condition[:, r:] * keep_image], dim=1)
    lo, hi = comp.u_range
    sigma = wcond.shift_sigmas(lo + (hi - lo) * torch.rand(b, generator=generator), obj.flow_shift).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    if comp.wan_move:
        condition = wan_move_condition(condition, inputs, r, generator)
    s = sigma.view(b, 1, 1, 1, 1)
    x_noisy = (1.0 - s) * x0 + s * noise
    dtype = next(p for p in core.parameters()).dtype
    lam = float(obj.attn_loss_weight)
    pred = model(torch.cat([x_noisy, condition], dim=1).to(dtype), sigma * wcond.NUM_TRAIN_TIMESTEPS,
                 comp.text.expand(b, -1, -1).to(dtype), None if tokens is None else tokens.to(dtype),
                 trajectories=inputs.trajectories, motion_masks=inputs.motion_masks, collect_attention=lam > 0)
    mse = ((pred.float() - (noise - x0)) ** 2).reshape(b, -1).mean(dim=1).mean()
    return with_attention_loss(mse, core, inputs, lam, sigma)


def wan_move_condition(condition: torch.Tensor, inputs, ratio: int, generator: torch.Generator) -> torch.Tensor:
    """condition (B, r + 16, F, h, w) with its latents edited along each sample's tracks (Wan-Move),
    written in an order drawn from ``generator`` (one permutation per sample)."""
    from trackgo_model.wan.wan_move import guide_condition, track_cells

    if inputs.tracks is None or inputs.visibility is None:
        raise ValueError("model.wan_move needs the batch's tracks and visibility")
    size = tuple(inputs.video.shape[-2:])
    rows = []
    for i, (tracks, visible) in enumerate(zip(inputs.tracks, inputs.visibility)):
        cells = track_cells(tracks[None], visible[None], size, temporal_ratio=ratio)
        order = torch.randperm(tracks.shape[1], generator=generator)
        rows.append(guide_condition(condition[i:i + 1, ratio:], cells.to(condition.device), order))
    return torch.cat([condition[:, :ratio], torch.cat(rows)], dim=1)


def load_wan_components(cfg, run_dir: Path) -> WanComponents:
    """Frozen Wan parts + a TrackGoWan to train, from ``model.wan_path`` or the tiny folder
    (created under ``<run_dir>/tiny-wan`` on first use); the prompt is encoded once."""
    from trackgo_model.wan.model import TrackGoWan
    from trackgo_data.config import ConfigError
    from trackgo_model.wan.pipeline import load_wan_folder, two_experts
    from trackgo_model.wan.tiny import init_tiny_wan

    from .config import trackgo_config_for

    folder = cfg.weights_folder(run_dir, "tiny-wan", "transformer", init_tiny_wan)
    expert = cfg.model.expert
    index = Path(folder) / "model_index.json"
    if index.is_file() and two_experts(json.loads(index.read_text())) and expert is None:
        raise ConfigError(f"{folder} holds Wan2.2's two experts: train one per run, model.expert=high or low")
    parts = load_wan_folder(folder, expert=expert)
    text = wcond.encode_prompt(parts.tokenizer, parts.text_encoder, cfg.model.prompt)
    parts.text_encoder = None  # not needed again: the prompt is fixed
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # fresh encoder and adapters, deterministic given the run seed
    try:
        model = TrackGoWan(parts.transformer, trackgo_config_for(cfg),
                           temporal_ratio=parts.vae.config.scale_factor_temporal or 4)
    finally:
        torch.random.set_rng_state(state)
    parts.vae.requires_grad_(False).eval()
    if parts.image_encoder is not None:
        parts.image_encoder.requires_grad_(False).eval()
    u_range = wcond.expert_u_range(expert, parts.boundary_ratio, cfg.objective.flow_shift)
    if expert is not None:
        log.info("Wan2.2 expert %r: σ in [%.3f, %.3f] (boundary %.3f)", expert, *(
            float(wcond.shift_sigmas(torch.tensor(u), cfg.objective.flow_shift)) for u in u_range), parts.boundary_ratio)
    return WanComponents(model=model, parts=parts, text=text, source=folder, wan_move=cfg.model.wan_move,
                         u_range=u_range)

"""λ of the attention loss from gradient norms at the start of fine-tuning.

The paper gives no λ (spec §5, §9). Adam normalises each parameter's step by its gradient's
running RMS, so on the weights that both losses reach — the temporal attention's W_q and W_k —
what matters is not λ·L_attn against L_mse but the ratio of their *gradients*: once λ·∇L_attn
dominates there, the attention loss alone sets the direction of those weights at the full
learning rate, whatever λ is. The rule: λ is chosen so that, at the model the fine-tuning starts
from, the attention loss's gradient on the temporal W_q/W_k has ``ratio`` times the norm of the
diffusion loss's, on the median of ``batches`` training batches:

    λ = ratio · median_b ‖∇_{W_q,W_k} L_mse(b)‖ / ‖∇_{W_q,W_k} L_attn(b)‖

Both gradients of a batch come from one draw of σ, noise and dropout (the same generator state).

    trackgo calibrate-attention --config svd-xt-paper model.svd_path=… data.shards=… [--batches 8 --ratio 1]
"""
from __future__ import annotations

import copy
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def qk_parameters(core) -> list[torch.nn.Parameter]:
    """The temporal attn1 W_q and W_k (weights and biases) of every adapted layer."""
    return [p for name, p in core.named_group_parameters(("temporal_qkv",)).items() if ".to_v." not in name]


def gradient_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def calibrate_attention_weight(cfg, *, batches: int = 8, ratio: float = 1.0, components: Any | None = None
                               ) -> dict[str, Any]:
    """λ by the module's rule for the TrainConfig ``cfg`` (its model, data and objective; its own
    λ is ignored). Returns {"weight": λ, "ratio": ratio, "batches", "mse_grad_norms",
    "attn_grad_norms", "mse", "attn"} (per-batch lists)."""
    from .data import data_stream, load_components, shard_urls
    from .loss import batch_to_inputs

    if batches < 1 or ratio <= 0:
        raise ValueError("batches must be >= 1 and ratio > 0")
    comp = components if components is not None else load_components(cfg, Path(cfg.run_path))
    core = comp.model
    core.requires_grad_(False)
    params = qk_parameters(core)
    for p in params:
        p.requires_grad_(True)
    with_attn, without = copy.deepcopy(cfg), copy.deepcopy(cfg)
    with_attn.objective.attn_loss_weight, without.objective.attn_loss_weight = 1.0, 0.0
    stream = data_stream(cfg, shard_urls(cfg)[0], rank=0, world=1, segment_start=0, skip_batches=0)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = next(core.parameters()).device
    out: dict[str, list[float]] = {"mse_grad_norms": [], "attn_grad_norms": [], "mse": [], "attn": []}
    for _ in range(batches):
        inputs = batch_to_inputs(next(stream), device, cfg.data.fps)
        state = generator.get_state()
        parts = comp.loss(core, inputs, with_attn, generator)
        attn = core.attention_loss(inputs.motion_masks)
        generator.set_state(state)
        plain = comp.loss(core, inputs, without, generator)
        out["mse_grad_norms"].append(gradient_norm(plain.loss, params))
        out["attn_grad_norms"].append(gradient_norm(attn, params))
        out["mse"].append(float(parts.mse))
        out["attn"].append(float(parts.attn))
    ratios = [m / a for m, a in zip(out["mse_grad_norms"], out["attn_grad_norms"]) if a > 0]
    if not ratios:
        raise RuntimeError("the attention loss has no gradient on the temporal W_q/W_k: are there moving "
                           "components in the training clips (motion masks)?")
    weight = ratio * statistics.median(ratios)
    log.info("attention-loss weight λ = %.4g (ratio %.3g, median of %d batches)", weight, ratio, len(ratios))
    return {"weight": weight, "ratio": ratio, "batches": batches, **out}

"""Memory options of a training step: activation checkpointing beyond diffusers', 8-bit AdamW.

**Checkpointing scopes** (``model.checkpointing``, with ``model.gradient_checkpointing=true``).
diffusers' ``enable_gradient_checkpointing`` on ``UNetSpatioTemporalConditionModel`` re-runs in
backward every ``SpatioTemporalResBlock`` (the resnets of every down, mid and up block) and the
spatial ``BasicTransformerBlock`` inside each ``TransformerSpatioTemporalModel``. It keeps the
activations of every temporal transformer block (ff_in, attn1 — the TrackAdapter —, attn2, ff:
several (B·F·h·w, C) tensors and the GEGLU's 8C-wide ones each), and of each transformer's norm,
proj_in, time mixer and proj_out.

    diffusers     what diffusers covers (above)
    temporal      + every ``TemporalBasicTransformerBlock`` re-run in backward
    transformer   + every ``TransformerSpatioTemporalModel`` re-run as one unit

diffusers has no switch for the last two, so each such block gets a :class:`CheckpointedForward`
as its ``forward`` attribute (``nn.Module.__call__`` calls the instance's ``forward``): the
block's own forward under ``torch.utils.checkpoint``. Module paths, parameter names and
checkpoint keys stay those of the plain UNet; ``del block.forward`` undoes it. A block that holds
a TrackAdapter is re-run with the :class:`~trackgo_model.adapter.ForwardState` of its first run
(``ForwardState.for_rerun``): the trajectory feature, the knobs, the encoder features computed so
far, so the re-run repeats the same operations after the forward has ended. Gradients through the
attention loss's maps (side outputs of the block) are exact: the tests compare every gradient
with and without each scope. How much each scope saves: ``benchmarks/gpu_suite.py`` (its
``memory_estimate``) and docs/measurements.md.

**Optimizer** (``optim.optimizer``): ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes' AdamW8bit:
block-wise 8-bit moments, ~2 bytes per trainable parameter instead of 8).
"""
from __future__ import annotations

import logging

import torch
from trackgo_data.config import ConfigError
from trackgo_model.adapter import CheckpointedForward, checkpointed_blocks

log = logging.getLogger(__name__)

CHECKPOINTING = ("diffusers", "temporal", "transformer")
OPTIMIZERS = ("adamw", "adamw8bit")
#: parameter groups that can have their own learning rate (optim.group_lr)
LR_GROUPS = ("encoder", "adapter", "gate", "temporal_qkv", "unet")
SCOPE_CLASS = {"temporal": "TemporalBasicTransformerBlock", "transformer": "TransformerSpatioTemporalModel"}


def enable_checkpointing(model, scope: str = "diffusers") -> int:
    """diffusers' gradient checkpointing on ``model.unet`` plus the blocks of ``scope``.

    ``model`` is a :class:`~trackgo_model.model.TrackGoUNet` (or any module with ``.unet`` and
    ``.context``). Returns how many blocks the scope adds (0 for ``diffusers``)."""
    if scope not in CHECKPOINTING:
        raise ConfigError(f"model.checkpointing must be one of {CHECKPOINTING}, got {scope!r}")
    model.unet.enable_gradient_checkpointing()
    disable_extra_checkpointing(model)
    if scope == "diffusers":
        return 0
    blocks = [m for m in model.unet.modules() if type(m).__name__ == SCOPE_CLASS[scope]]
    if not blocks:
        raise ValueError(f"no {SCOPE_CLASS[scope]} in this UNet to checkpoint")
    for block in blocks:
        block.forward = CheckpointedForward(block, model.context)
    log.info("activation checkpointing: diffusers' blocks + %d %s", len(blocks), SCOPE_CLASS[scope])
    return len(blocks)


def disable_extra_checkpointing(model) -> None:
    """Undo what :func:`enable_checkpointing` added beyond diffusers' own checkpointing."""
    for block in checkpointed_blocks(model.unet):
        del block.forward  # the class's forward again


def parameter_groups(core, groups: tuple[str, ...], group_lr: dict[str, float], lr: float) -> list[dict]:
    """Optimizer parameter groups of the trainable ``groups`` of ``core`` (a TrackGoUNet), one per
    entry of :data:`LR_GROUPS` that has parameters (the adapters' gates apart from W′), each with
    its learning rate: ``group_lr[name]``, else ``lr``."""
    buckets: dict[str, list[torch.nn.Parameter]] = {}
    for group in groups:
        for name, param in core.named_group_parameters((group,)).items():
            key = "gate" if group == "adapter" and name.endswith(".gate") else group
            buckets.setdefault(key, []).append(param)
    return [{"params": buckets[name], "lr": float(group_lr.get(name, lr)), "name": name}
            for name in LR_GROUPS if name in buckets]


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], cfg) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` (a :class:`~trackgo_model.train.config.TrainConfig`) over
    ``params``: parameters, or :func:`parameter_groups`."""
    optim = cfg.optim
    kw = dict(lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, eps=optim.eps)
    name = getattr(optim, "optimizer", "adamw")
    if name == "adamw":
        return torch.optim.AdamW(params, **kw)
    if name != "adamw8bit":
        raise ConfigError(f"optim.optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if cfg.distributed == "fsdp":
        raise ConfigError("optim.optimizer=adamw8bit keeps block-wise quantised moments that sharded "
                          "checkpoints cannot gather; use distributed=ddp with it")
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ConfigError("optim.optimizer=adamw8bit needs bitsandbytes: pip install 'trackgo[lowmem]' "
                          "(or bitsandbytes>=0.45)") from exc
    return bitsandbytes.optim.AdamW8bit(params, **kw)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, quantisation maps, scales)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if isinstance(v, torch.Tensor))

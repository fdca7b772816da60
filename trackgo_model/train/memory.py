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

A checkpointed block that holds a TrackAdapter is re-run with the :class:`TrackContext` state of
its first run (``TrackContext.snapshot``/``replaying``): the trajectory feature, the knobs, the
feature cache as it was, so the re-run repeats the same operations after the forward has ended.
Gradients through the attention loss's maps (side outputs of the block) are exact: the tests
compare every gradient with and without each scope.

**Optimizer** (``optim.optimizer``): ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes' AdamW8bit:
block-wise 8-bit moments, ~2 bytes per trainable parameter instead of 8). With the default
trainable groups on SVD-xt (63.0M parameters) the state shrinks from 0.47 to 0.12 GiB; with
``unet`` trainable (1.52G parameters) from 11.4 to 2.9 GiB.

Counted on the meta device (``benchmarks/gpu_suite.py: saved_activations_gib``), one SVD-xt
forward with the attention loss at 1024×576×25 in bf16 keeps 274 GiB for backward without
checkpointing, 50.9 GiB with diffusers' blocks checkpointed, 9.3 GiB with ``temporal`` and
7.0 GiB with ``transformer``.
"""
from __future__ import annotations

import functools
import logging

import torch
from torch.utils.checkpoint import checkpoint

from trackgo_data.config import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTING = ("diffusers", "temporal", "transformer")
OPTIMIZERS = ("adamw", "adamw8bit")
_SCOPE_CLASS = {"temporal": "TemporalBasicTransformerBlock", "transformer": "TransformerSpatioTemporalModel"}


@functools.cache
def _checkpointed_class(base: type) -> type:
    """A subclass of ``base`` whose forward runs under non-reentrant activation checkpointing."""

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return base.forward(self, *args, **kwargs)
        context = self.__dict__.get("_trackgo_context")
        state = None if context is None else context.snapshot()
        runs = [0]

        def run(*a, **kw):
            runs[0] += 1
            if runs[0] == 1 or context is None:
                return base.forward(self, *a, **kw)
            with context.replaying(state):  # the re-run during backward
                return base.forward(self, *a, **kw)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)

    return type(f"Checkpointed{base.__name__}", (base,), {"forward": forward, "_trackgo_base": base})


def _blocks(unet, scope: str) -> list[torch.nn.Module]:
    name = _SCOPE_CLASS[scope]
    return [m for m in unet.modules() if getattr(m, "_trackgo_base", type(m)).__name__ == name]


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
    blocks = _blocks(model.unet, scope)
    if not blocks:
        raise ValueError(f"no {_SCOPE_CLASS[scope]} in this UNet to checkpoint")
    for m in blocks:
        m.__class__ = _checkpointed_class(type(m))
        m.__dict__["_trackgo_context"] = model.context  # a plain attribute, not a submodule
    log.info("activation checkpointing: diffusers' blocks + %d %s", len(blocks), _SCOPE_CLASS[scope])
    return len(blocks)


def disable_extra_checkpointing(model) -> None:
    """Undo what :func:`enable_checkpointing` added beyond diffusers' own checkpointing."""
    for m in model.unet.modules():
        base = getattr(type(m), "_trackgo_base", None)
        if base is not None and type(m) is _checkpointed_class(base):
            m.__class__ = base
            m.__dict__.pop("_trackgo_context", None)


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` (a :class:`~trackgo_model.train.config.TrainConfig`)."""
    o = cfg.optim
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    name = getattr(o, "optimizer", "adamw")
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
    return sum(v.numel() * v.element_size() for st in optimizer.state.values()
               for v in st.values() if isinstance(v, torch.Tensor))

"""How training runs on one or many processes: the Accelerator, the optimizer step, sharded weights.

* :func:`make_accelerator` — an ``Accelerator`` for ``cfg`` that really is distributed when the run
  was launched as several processes (``torchrun``, ``accelerate launch``): on a machine without
  CUDA, accelerate joins the processes only when asked for the CPU (gloo); without that every rank
  would train alone and write its own checkpoint. It also refuses configurations accelerate would
  silently change (``distributed=fsdp`` without FSDP, an FSDP accelerate config with a DDP training
  config).
* :func:`clip_gradients` / :func:`optimizer_step` — clipping by the global gradient norm over all
  processes and shards; one optimizer step that, under the fp16 loss scaler, is always handed to the
  scaler (a non-finite step is skipped *and* lowers the scale, as in the paper's fp16 training).
* :func:`gather_full` / :func:`load_full` / :func:`optimizer_state` / :func:`load_optimizer_state` —
  the full tensors of named parameters (and of the optimizer moments laid out like them) whatever
  the wrapping (none, DDP, FSDP1, FSDP2), so a checkpoint and the exported TrackGo weights of a
  sharded run hold what a single process would write, and a resume puts them back into the
  shards. All of them are collective: every rank calls them, with the same names in the same
  order. (torch's own full optimizer state dict for FSDP1 is not used: on CPU/gloo it returned
  ``exp_avg_sq`` in place of ``exp_avg``.)

fp16 on a CPU. accelerate enables neither autocast nor a loss scaler on the CPU, which would leave
fp16 frozen weights next to fp32 activations. torch has both for the CPU (``torch.autocast("cpu",
torch.float16)``, ``torch.amp.GradScaler("cpu")``), so :func:`make_accelerator` installs them and
the fp16 step runs the same code as on a GPU.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from trackgo_data.config import ConfigError

from .config import TrainConfig
from .memory import enable_checkpointing

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def accelerate_kwargs(cfg: TrainConfig, accumulation: int) -> dict[str, Any]:
    """Accelerator(...) arguments for the configured precision and distributed strategy."""
    kw: dict[str, Any] = {"mixed_precision": cfg.mixed_precision, "gradient_accumulation_steps": accumulation}
    if cfg.distributed == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        # ZeRO-2-like by default: parameters stay gathered from forward to backward, gradients and
        # optimizer state are sharded (fsdp_reshard_after_forward: ZeRO-3-like). FSDP1 needs
        # use_orig_params: only some parameters train. Wan: one unit per DiT block.
        reshard = cfg.fsdp_reshard_after_forward
        units = {}
        if cfg.model.base == "wan":
            units = {"auto_wrap_policy": "transformer_based_wrap",
                     "transformer_cls_names_to_wrap": ["WanTransformerBlock"]}
        if cfg.fsdp_version == 1:
            strategy = "FULL_SHARD" if reshard else "SHARD_GRAD_OP"
            plugin = FullyShardedDataParallelPlugin(fsdp_version=1, use_orig_params=True,
                                                    reshard_after_forward=strategy, **units)
        else:
            plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=reshard, **units)
        kw["fsdp_plugin"] = plugin
    elif cfg.distributed == "deepspeed_zero2":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("distributed=deepspeed_zero2 needs the deepspeed package: pip install deepspeed")
        from accelerate.utils import DeepSpeedPlugin

        kw["deepspeed_plugin"] = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=accumulation,
                                                 gradient_clipping=cfg.optim.max_grad_norm or None)
    return kw


def make_accelerator(cfg: TrainConfig):
    """(Accelerator, gradient accumulation) for ``cfg`` in the current launch."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes == 1:
        # accelerate's process-wide state keeps the first Accelerator's precision; one process may
        # train several configs in turn (a Prefect worker, a notebook, the tests)
        AcceleratorState._reset_state()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ConfigError(f"launched as {launched} processes, but accelerate joined {state.num_processes} "
                          f"(distributed type {state.distributed_type.value}); check the launcher's environment")
    accum = cfg.gradient_accumulation(state.num_processes)
    accelerator = Accelerator(cpu=cpu, **accelerate_kwargs(cfg, accum))
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if cfg.distributed == "fsdp" and not fsdp:
        raise ConfigError(
            f"distributed=fsdp, but accelerate runs {accelerator.distributed_type.value} on "
            f"{accelerator.num_processes} {accelerator.device.type} process(es): it enables FSDP only for "
            f"several processes on GPUs "
            f"(accelerate launch / torchrun); use distributed=ddp here")
    if fsdp and cfg.distributed != "fsdp":
        raise ConfigError("the accelerate config enables FSDP: set distributed=fsdp (and fsdp_version) in the "
                          "training config instead, which builds the plugin TrackGo needs (use_orig_params, "
                          "SHARD_GRAD_OP)")
    if cfg.mixed_precision == "fp16" and accelerator.scaler is None and accelerator.device.type == "cpu":
        if fsdp:
            raise ConfigError("mixed_precision=fp16 with FSDP needs GPUs")
        accelerator.scaler = torch.amp.GradScaler("cpu")
        accelerator.native_amp = True  # accelerator.autocast() → torch.autocast("cpu", torch.float16)
    return accelerator, accum


def prepare_model(comp, cfg: TrainConfig, device: torch.device) -> list[torch.nn.Parameter]:
    """Freeze all but ``model.trainable``, move to ``device``, frozen weights to the mixed-precision
    dtype (trainable ones stay float32; under FSDP all stay float32 and FSDP casts for compute);
    returns the trainable parameters in a fixed order."""
    weight_dtype = DTYPES[cfg.mixed_precision]
    core = comp.model
    params = core.freeze_for_training()
    if cfg.model.gradient_checkpointing and cfg.model.base == "wan":  # every DiT block
        core.enable_gradient_checkpointing()
    elif cfg.model.gradient_checkpointing:  # diffusers' blocks, plus those of model.checkpointing
        enable_checkpointing(core, cfg.model.checkpointing)
    core.set_kernels(cfg.model.kernels)
    comp.place(device, weight_dtype)
    core.to(device)
    if weight_dtype != torch.float32 and cfg.distributed != "fsdp":
        with torch.no_grad():
            for p in core.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(weight_dtype)
    core.train()
    return params


def fsdp_version(accelerator) -> int:
    """0 when the model is not sharded, else the FSDP version (1 or 2)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return 0
    return 2 if accelerator.is_fsdp2 else 1


def clip_gradients(accelerator, model, params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip to ``max_norm`` (≤ 0: no clipping) by the global gradient norm; returns that norm.

    DDP gradients are all-reduced, so their norm is global. Under FSDP every rank holds a shard:
    accelerate uses FSDP's collective clip only when given exactly the wrapped model's parameters
    (for a subset it computes a per-shard norm), hence ``model.parameters()`` there — frozen
    parameters have no gradient and do not count.
    """
    limit = max_norm if max_norm > 0 else float("inf")
    norm = accelerator.clip_grad_norm_(model.parameters() if fsdp_version(accelerator) else params, limit)
    if norm is None:
        return float("nan")
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


@dataclass
class StepOutcome:
    applied: bool  # the optimizer updated the weights
    loss_scale: float | None  # fp16 loss scale after the step (None without a scaler)


def optimizer_step(accelerator, optimizer, *, loss_finite: bool, grad_norm: float) -> StepOutcome:
    """One optimizer step after the micro-steps' backward passes.

    With the fp16 loss scaler the step always goes to the scaler: it skips the update when a
    gradient is inf/NaN and lowers the scale (``scaler.update()``), so the next step starts clean.
    Without a scaler a step with a non-finite loss or gradient norm is not taken.
    """
    from accelerate.utils import DistributedType

    scaler = accelerator.scaler
    if scaler is not None:
        optimizer.step()
        return StepOutcome(applied=not optimizer.step_was_skipped, loss_scale=float(scaler.get_scale()))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # the engine clips and scales itself
        optimizer.step()
        return StepOutcome(applied=not optimizer.step_was_skipped, loss_scale=None)
    if loss_finite and math.isfinite(grad_norm):
        optimizer.step()
        return StepOutcome(True, None)
    return StepOutcome(False, None)


# ------------------------------------------------------------------------------- full tensors
def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@contextlib.contextmanager
def full_parameters(accelerator, model, writeback: bool = False) -> Iterator[None]:
    """Inside, FSDP1's original parameters hold their full tensors on every rank (collective);
    FSDP2 parameters stay DTensors (read with ``full_tensor()``); unsharded models are unchanged."""
    if fsdp_version(accelerator) == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, writeback=writeback):
            yield
    else:
        yield


def gather_full(accelerator, model, named: dict[str, torch.Tensor],
                values: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full float32 CPU copies of ``named`` ({key: parameter of the wrapped model}) on every rank,
    or of ``values``: tensors laid out like those parameters on this rank (optimizer moments)."""
    if values is not None and fsdp_version(accelerator) == 1:
        # FSDP1 gathers only parameters: put the values into the local shards for the gather
        with torch.no_grad():
            kept = {k: p.detach().clone() for k, p in named.items()}
            try:
                for k, p in named.items():
                    p.copy_(values[k])
                return gather_full(accelerator, model, named)
            finally:
                for k, p in named.items():
                    p.copy_(kept[k])
    values = named if values is None else values
    out = {}
    with torch.no_grad(), full_parameters(accelerator, model):
        for k in named:
            t = values[k]
            t = t.full_tensor() if _is_dtensor(t) else t
            out[k] = t.detach().to("cpu", torch.float32).clone()
    return out


def load_full(accelerator, model, named: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (same keys and shapes as a single-process run) into ``named``, sharding them."""
    missing = sorted(set(named) - set(tensors))
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} tensor(s) this model trains, e.g. {missing[:3]}")
    with torch.no_grad(), full_parameters(accelerator, model, writeback=True):
        for k, p in named.items():
            t = tensors[k]
            if tuple(t.shape) != tuple(p.shape):
                raise ConfigError(f"checkpoint tensor {k} has shape {tuple(t.shape)}, the model {tuple(p.shape)}")
            if _is_dtensor(p):
                from torch.distributed.tensor import distribute_tensor

                # every rank read the same file: cut its own shard, no communication
                t = distribute_tensor(t.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(t)


def _local_like(accelerator, model, named: dict[str, torch.Tensor],
                tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors → this rank's part, laid out like the parameters (inverse of gather_full)."""
    with torch.no_grad():
        kept = {k: p.detach().clone() for k, p in named.items()}
        try:
            load_full(accelerator, model, named, tensors)
            return {k: p.detach().clone() for k, p in named.items()}
        finally:
            for k, p in named.items():
                p.copy_(kept[k])


def in_optimizer_order(optimizer, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``named`` reordered as the optimizer holds the parameters (its groups one after the other):
    the order that numbers the parameters in ``optimizer.state_dict()``."""
    key_of = {id(p): k for k, p in named.items()}
    order = [key_of.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
    if None in order or sorted(order) != sorted(named):
        raise RuntimeError("the optimizer's parameters are not the trained parameters: build the optimizer "
                           "from the same named_group_parameters the state records")
    return {k: named[k] for k in order}


def optimizer_state(accelerator, model, optimizer, named: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The optimizer ``state_dict()`` with full tensors, whatever the sharding (collective).

    Sharded runs give the single-process layout (state by parameter index in the optimizer's
    group order, moments with the parameters' full shapes), so a checkpoint does not depend on
    how it was trained.
    """
    sd = optimizer.state_dict()
    if not fsdp_version(accelerator):
        return sd
    import torch.distributed as dist

    named = in_optimizer_order(optimizer, named)
    params = list(named.values())
    inner = optimizer.optimizer.state  # by parameter; FSDP1 has none for an empty local shard
    keys = sorted({k for st in inner.values() for k, v in st.items()
                   if isinstance(v, torch.Tensor) and v.ndim > 0})
    step = torch.tensor([max([float(st["step"]) for st in inner.values() if "step" in st] or [0.0])],
                        device=accelerator.device)
    dist.all_reduce(step, op=dist.ReduceOp.MAX)  # every parameter takes every step
    state: dict[int, dict[str, Any]] = {i: {"step": step[0].cpu().clone()} for i in range(len(params))}
    for key in keys:
        local = {k: inner[p][key] if p in inner else torch.zeros_like(p) for k, p in named.items()}
        for i, full in enumerate(gather_full(accelerator, model, named, local).values()):
            state[i][key] = full
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state(accelerator, model, optimizer, named: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Load a state written by :func:`optimizer_state` (any sharding) into this rank's optimizer."""
    if not fsdp_version(accelerator):
        optimizer.load_state_dict(state)
        return
    named = in_optimizer_order(optimizer, named)
    names = list(named)
    per = state["state"]
    keys = sorted({k for st in per.values() for k, v in st.items() if isinstance(v, torch.Tensor) and v.ndim > 0})
    local: dict[int, dict[str, Any]] = {int(i): {k: v for k, v in st.items() if k not in keys} for i, st in per.items()}
    for key in keys:
        parts = _local_like(accelerator, model, named, {names[int(i)]: st[key] for i, st in per.items()})
        for i in local:
            local[i][key] = parts[names[i]]
    optimizer.load_state_dict({"state": local, "param_groups": state["param_groups"]})


@contextlib.contextmanager
def inference_context(accelerator, model) -> Iterator[bool]:
    """For generating validation videos with the bare model (collective); yields whether this rank
    runs it: the main process, with the full parameters gathered on every rank under FSDP (FSDP1
    summons them, FSDP2 unshards every sharded module: the pipeline calls more than ``forward``)."""
    version = fsdp_version(accelerator)
    if version == 2:
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.unshard()
        try:
            yield accelerator.is_main_process
        finally:
            for m in sharded:
                m.reshard()
    else:
        with full_parameters(accelerator, model):
            yield accelerator.is_main_process

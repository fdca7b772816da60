"""The training state a checkpoint holds, written and restored on any number of processes.

:class:`TrainingState` bundles the prepared model, optimizer, LR scheduler, EMA, loss scaler and
the loss generator of one rank. :meth:`TrainingState.save` and :meth:`TrainingState.restore` are
collective (every rank calls them): the main process writes the files of
:mod:`trackgo_model.train.checkpoint`, with full tensors even from a sharded (FSDP) run, and each
rank writes its own RNG state.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from trackgo_data.config import ConfigError, config_hash, config_to_dict

from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import gather_full, load_full, load_optimizer_state, optimizer_state

log = logging.getLogger(__name__)


def load_trainable(core, path: str | Path, name: str = "trainable.safetensors") -> list[str]:
    """Copy a checkpoint's trainable (or ``ema.safetensors``) weights into an unwrapped ``core``;
    returns the keys."""
    weights = ckpt.load_tensors(path, name)
    if weights is None:
        raise FileNotFoundError(f"{Path(path) / name} does not exist")
    params = core.named_group_parameters()
    if sorted(weights) != sorted(params):
        raise ConfigError(f"{path}: its trainable parameters differ from this config's model.trainable")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    return sorted(params)


class TrainingState:
    """Model, optimizer, scheduler, EMA, scaler and loss generator of one rank (after ``prepare``).

    ``named``: {checkpoint key: parameter} of the trained groups, as the wrapped model holds them
    (FSDP shards or DTensors); ``params`` the same in order; ``export`` what ``trackgo/`` holds.
    """

    def __init__(self, accelerator, model, core, optimizer, scheduler, *, cfg: TrainConfig, accumulation: int,
                 loss_seed: int) -> None:
        from diffusers.training_utils import EMAModel

        self.accelerator, self.model, self.core, self.cfg = accelerator, model, core, cfg
        self.optimizer, self.scheduler = optimizer, scheduler
        self.named = core.named_group_parameters()  # re-read: FSDP2 replaces the parameters
        self.params = list(self.named.values())
        self.export = core.checkpoint_parameters()
        self.ema = EMAModel(self.params, decay=cfg.ema.decay) if cfg.ema.enabled else None
        self.accumulation, self.loss_seed = accumulation, loss_seed
        self.generator = torch.Generator().manual_seed(loss_seed)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside, the trained parameters hold their EMA values (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def save(self, run_dir: Path, step: int, counters: dict[str, int]) -> Path:
        """Write ``checkpoint-<step>`` (collective); returns its final path on every rank."""
        accelerator, cfg = self.accelerator, self.cfg
        tmp = ckpt.tmp_checkpoint_dir(run_dir, step)
        if accelerator.is_main_process:
            ckpt.begin_checkpoint(run_dir, step)
        accelerator.wait_for_everyone()
        ckpt.save_rank_rng(tmp, accelerator.process_index, self.generator)
        trainable = gather_full(accelerator, self.model, self.named)
        ema = export = None
        if self.ema is not None:
            with self.ema_weights():
                ema = gather_full(accelerator, self.model, self.named)
                if cfg.ema.export_ema:
                    export = gather_full(accelerator, self.model, self.export)
        if export is None:
            export = gather_full(accelerator, self.model, self.export)
        opt_state = optimizer_state(accelerator, self.model, self.optimizer, self.named)
        if accelerator.is_main_process:
            record = {**counters, "step": step, "world_size": accelerator.num_processes, "accumulation": self.accumulation,
                  "ema_optimization_step": self.ema.optimization_step if self.ema else 0,
                  "config_hash": config_hash(cfg), "git_revision": ckpt.git_revision(),
                  "loss_seed": self.loss_seed}
            ckpt.write_payload(tmp, trainable=trainable, ema=ema, optimizer_state=opt_state,
                               scheduler_state=self.scheduler.state_dict(), state=record, config=config_to_dict(cfg),
                               scaler_state=accelerator.scaler.state_dict() if accelerator.scaler is not None else None)
            wan_move = cfg.model.wan_move
            extra = {k: v for k, v in (("wan_move", wan_move), ("expert", cfg.model.expert)) if v}
            self.core.save_trackgo(tmp / "trackgo", tensors=export, extra=extra or None)
            if wan_move:  # the whole transformer was trained: the export serves it (trackgo generate)
                self.core.save_transformer(tmp / "trackgo" / "transformer", ema if ema is not None and
                                           cfg.ema.export_ema else trainable)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.finish_checkpoint(tmp, step, keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return ckpt.checkpoints_root(run_dir) / ckpt.checkpoint_name(step)

    def restore(self, path: Path) -> dict[str, Any]:
        """Load checkpoint ``path`` into this state (collective); returns its ``state.json``."""
        accelerator = self.accelerator
        record = ckpt.load_state(path)
        written_by = int(record.get("world_size", accelerator.num_processes))
        if written_by != accelerator.num_processes:
            log.warning("%s was written by %d process(es), this run has %d: weights, optimizer and data "
                        "position carry over, but the continuation is not the one the original run would "
                        "have taken", path, written_by, accelerator.num_processes)
        trainable = ckpt.load_tensors(path, "trainable.safetensors")
        if trainable is None or sorted(trainable) != sorted(self.named):
            raise ConfigError(f"{path}: its trainable parameters differ from this config's model.trainable "
                              f"(and model.trackgo.mode)")
        if self.ema is not None:
            shadow = ckpt.load_tensors(path, "ema.safetensors")
            if shadow is None:
                raise ConfigError(f"{path} has no EMA weights but ema.enabled is true")
            load_full(accelerator, self.model, self.named, shadow)
            self.ema.shadow_params = [p.detach().clone() for p in self.params]
            self.ema.optimization_step = int(record.get("ema_optimization_step", 0))
        load_full(accelerator, self.model, self.named, trainable)
        load_optimizer_state(accelerator, self.model, self.optimizer, self.named, ckpt.load_torch(path, "optimizer.pt"))
        self.scheduler.load_state_dict(ckpt.load_torch(path, "scheduler.pt"))
        if accelerator.scaler is not None and (Path(path) / "scaler.pt").is_file():
            accelerator.scaler.load_state_dict(ckpt.load_torch(path, "scaler.pt"))
        if accelerator.process_index < written_by:
            ckpt.restore_rng(ckpt.load_rank_rng(path, accelerator.process_index), self.generator)
        else:
            log.warning("rank %d has no RNG state in %s: its loss generator starts from its seed",
                        accelerator.process_index, path)
        return record

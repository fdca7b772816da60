"""Training checkpoints: written atomically, found again by ``--resume``.

Layout of ``<run_dir>/checkpoints/checkpoint-<step:06d>/``::

    trainable.safetensors   trainable parameters by name (float32; full tensors, also from a sharded run)
    ema.safetensors         EMA shadow of the same parameters (when EMA is on)
    optimizer.pt            optimizer state_dict (full tensors, the single-process layout, also from FSDP)
    scaler.pt               fp16 loss-scaler state (mixed_precision=fp16 only)
    scheduler.pt            LR scheduler state_dict
    rng-rank<r>.pt          python / numpy / torch (CPU, CUDA) RNG states + the loss generator, per rank
    state.json              step, data position, counters, EMA bookkeeping, git revision, config hash
    config.json             the full TrainConfig
    trackgo/                exported adapter + encoder weights (trackgo_config.json + trackgo.safetensors)

A checkpoint is assembled in ``.tmp-checkpoint-<step>`` next to its final place and renamed into
place only when complete, so a killed run never leaves a half-written checkpoint that
:func:`latest_checkpoint` would pick.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trackgo_data.config import atomic_write_json

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STATE_FILE = "state.json"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{int(step):06d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json) as (step, path), oldest first."""
    root = checkpoints_root(run_dir)
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file():
            try:
                out.append((int(p.name[len(PREFIX):]), p))
            except ValueError:
                continue
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def git_revision(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` (+ ``-dirty`` when the tree has changes), or None outside a repo."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


# ----------------------------------------------------------------------------------------- RNG
def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG the training loop touches: python, numpy, torch CPU/CUDA and ``generator``."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        if "generator" not in state:
            raise ValueError("checkpoint has no loss-generator state")
        generator.set_state(state["generator"])


# ------------------------------------------------------------------------------------- writing
def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Fresh temporary folder for checkpoint ``step`` (call on the main process only)."""
    root = checkpoints_root(run_dir)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def tmp_checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_root(run_dir) / f".tmp-{checkpoint_name(step)}"


def save_rank_rng(tmp: Path, rank: int, generator: torch.Generator | None) -> None:
    torch.save(capture_rng(generator), tmp / f"rng-rank{rank}.pt")


def write_payload(
    tmp: Path,
    *,
    trainable: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer_state: dict,
    scheduler_state: dict,
    state: dict[str, Any],
    config: dict[str, Any],
    scaler_state: dict | None = None,
) -> None:
    """Everything except the per-rank RNG files and the export (main process)."""
    from safetensors.torch import save_file

    def contiguous(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in d.items()}

    save_file(contiguous(trainable), str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file(contiguous(ema), str(tmp / "ema.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    if scaler_state is not None:
        torch.save(scaler_state, tmp / "scaler.pt")
    atomic_write_json(tmp / "config.json", config)
    # state.json last: its presence marks the payload complete.
    atomic_write_json(tmp / STATE_FILE, state)


def finish_checkpoint(tmp: Path, step: int, keep: int = 0) -> Path:
    """Rename the finished temp folder into place (replacing an older one of the same step) and
    delete all but the newest ``keep`` checkpoints (0 keeps all)."""
    if not (tmp / STATE_FILE).is_file():
        raise RuntimeError(f"checkpoint {tmp} is incomplete (no {STATE_FILE})")
    final = tmp.parent / checkpoint_name(step)
    if final.exists():
        trash = tmp.parent / f".old-{final.name}"
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    if keep > 0:
        for _, old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    log.info("saved %s", final)
    return final


# ------------------------------------------------------------------------------------- reading
def load_state(path: str | Path) -> dict[str, Any]:
    with open(Path(path) / STATE_FILE) as fh:
        return json.load(fh)


def load_tensors(path: str | Path, name: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    f = Path(path) / name
    return load_file(str(f)) if f.is_file() else None


def load_rank_rng(path: str | Path, rank: int) -> dict[str, Any]:
    f = Path(path) / f"rng-rank{rank}.pt"
    if not f.is_file():
        raise FileNotFoundError(
            f"{f} missing: the checkpoint was written by fewer processes; resume with the same "
            f"number of processes to continue bitwise, or start a new run from its trackgo/ export"
        )
    return torch.load(f, weights_only=False)


def load_torch(path: str | Path, name: str) -> Any:
    return torch.load(Path(path) / name, weights_only=False, map_location="cpu")

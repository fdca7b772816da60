"""Training: the loop (``loop``), its typed config (``config``), data and model loading
(``data``), the per-batch objective (``loss``, ``edm``), VAE latent caching (``latent_cache``),
processes and sharding (``distributed``), the checkpointed training state (``state``), the
checkpoint files (``checkpoint``) and the command line (``cli``).

``python -m trackgo_model.train`` (what ``accelerate launch -m`` and ``torchrun -m`` run) and the
``trackgo train`` subcommand both end in :func:`trackgo_model.train.loop.train`. The names below are
imported on first use, so registering the subcommand (``register``) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .cli import main, register

_LAZY = {"DTYPES": "distributed", "NonFiniteLossError": "loop", "accelerate_kwargs": "distributed",
         "load_trainable": "state", "prepare_model": "distributed", "train": "loop"}

__all__ = ["DTYPES", "NonFiniteLossError", "accelerate_kwargs", "load_trainable", "main", "prepare_model",
           "register", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

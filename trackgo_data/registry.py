"""Backends chosen by a string name: name → (module, class), the module imported only when used,
so a backend's heavy dependency (DEVA, Co-Tracker) loads only if that backend is picked."""
from __future__ import annotations

import importlib
from typing import Any


def load_backend(kind: str, backends: dict[str, tuple[str, str]], name: str) -> Any:
    """The class registered as ``name`` in ``backends``; one clear error for an unknown name."""
    if name not in backends:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(backends))}")
    module, cls = backends[name]
    return getattr(importlib.import_module(module), cls)

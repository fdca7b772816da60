"""The build's segmenter and tracker, loaded before any clip, once per process.

    get_models(cfg) -> (segmenter, tracker)

Each backend is built by its registry and loaded there (code and weights now, not at the first
clip: :func:`trackgo_data.segment.load_segmenter`, :func:`trackgo_data.track.load_tracker`).
Whatever a backend raises while it is built or loaded — an unknown name, an unknown option, a
missing weight file, a ``ValueError`` deep inside ``torch.hub`` — is a problem of the setup, not
of any video: it becomes one :class:`~trackgo_data.faults.InfrastructureError` that names the
backend and the setting to fix (``tracker.options.repo``, ``segmenter.name``, …), so the batch
fails with nothing recorded. A backend that loaded is kept for the process (per backend
configuration); one that failed is tried again on the next call.
"""
from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

from .buildconfig import BackendConfig, BuildConfig
from .config import config_to_dict
from .faults import InfrastructureError, causes

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def suspect_settings(kind: str, backend: BackendConfig, exc: BaseException) -> list[str]:
    """Dotted settings (``tracker.options.repo``) an error while loading points at, first match:
    ``<kind>.name`` when the registry does not know the name; options whose key (as a word) or
    string value appears in the error or its causes; options naming a path that does not exist;
    every option given; the name."""
    from .segment import available_segmenters
    from .track import available_trackers

    known = available_segmenters() if kind == "segmenter" else available_trackers()
    if backend.name not in known:
        return [f"{kind}.name"]
    text = " ".join(str(e) for e in causes(exc))
    hits = [f"{kind}.options.{k}" for k, v in backend.options.items()
            if re.search(rf"(?<![\w.]){re.escape(str(k))}(?!\w)", text)
            or (isinstance(v, str) and len(v) >= 3 and v in text)]
    missing = [f"{kind}.options.{k}" for k, v in backend.options.items()
               if isinstance(v, str) and os.sep in v and not os.path.exists(os.path.expanduser(v))]
    return hits or missing or [f"{kind}.options.{k}" for k in backend.options] or [f"{kind}.name"]


def load_error(kind: str, backend: BackendConfig, exc: BaseException) -> InfrastructureError:
    """One message: which backend, which setting to check (with its value), what it raised."""
    settings = suspect_settings(kind, backend, exc)

    def value(s: str) -> Any:
        key = s.rsplit(".", 1)[-1]
        return backend.name if s.endswith(".name") else backend.options.get(key)

    check = ", ".join(f"{s}={value(s)!r}" for s in settings)
    return InfrastructureError(f"the {kind} {backend.name!r} cannot load — check {check}: "
                               f"{type(exc).__name__}: {exc}")


def _load(kind: str, backend: BackendConfig) -> Any:
    from .segment import load_segmenter
    from .track import load_tracker

    loader = load_segmenter if kind == "segmenter" else load_tracker
    try:
        return loader(backend.name, **backend.options)
    except Exception as exc:  # noqa: BLE001 - whatever a backend raises while loading is the setup's
        raise load_error(kind, backend, exc) from exc


def get_models(cfg: BuildConfig) -> tuple[Any, Any]:
    """(segmenter, tracker) of ``cfg``, built and loaded once per process and backend
    configuration. Raises :class:`InfrastructureError` (naming the setting) when one cannot load."""
    key = json.dumps([config_to_dict(cfg.segmenter), config_to_dict(cfg.tracker)], sort_keys=True)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = (_load("segmenter", cfg.segmenter), _load("tracker", cfg.tracker))
        return _MODELS[key]

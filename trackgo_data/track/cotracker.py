"""Co-Tracker backends (``cotracker3_offline``, ``cotracker3_online``, ``cotracker2``) via torch.hub.

``repo`` is either a GitHub hub spec (``facebookresearch/co-tracker``, fetched with
``source="github"``) or a local clone holding ``hubconf.py`` (``source="local"``; the clone is only
read: no ``__pycache__`` is written into it). The predictor is built by the repository's own hub
entry, once per process (cached by all options). Weights, in this order:

- ``random_init=true``: the hub entry's ``pretrained=False`` architecture with random weights (seed
  0) — tests and benchmarks only; logged as a warning and recorded in ``version`` (``+random-init``);
- ``checkpoint=/path/to/scaled_offline.pth``: that file, loaded into the predictor's model;
- otherwise the hub entry's ``pretrained=True``: torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints/<file>``), downloaded there by the hub entry when missing.

A missing clone, checkpoint or cached weight file is one :class:`CoTrackerUnavailable` naming what
to supply (a :class:`FileNotFoundError` for the weights).

Call contract (the repository's predictors): video (1,T,3,H,W) float 0..255, queries (1,N,3)
as (t=0, x, y) pixels → tracks (1,T,N,2) pixels, visibility (1,T,N) bool.
"""
from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackgo_data.track import check_inputs

log = logging.getLogger(__name__)

VARIANTS = ("cotracker3_offline", "cotracker3_online", "cotracker2")
DEFAULT_REPO = "facebookresearch/co-tracker"
#: the file each hub entry loads with pretrained=True (its URL's basename)
WEIGHT_FILES = {"cotracker3_offline": "scaled_offline.pth", "cotracker3_online": "scaled_online.pth",
                "cotracker2": "cotracker2.pth"}
RANDOM_SEED = 0

_MODELS: dict[tuple, object] = {}
_LOCK = threading.Lock()


class CoTrackerUnavailable(RuntimeError):
    """Co-Tracker code or weights cannot be obtained (no network, no local clone, no cache)."""


class CoTrackerWeightsMissing(CoTrackerUnavailable, FileNotFoundError):
    """The weight file to supply is named in the message."""


@dataclass
class CoTrackerConfig:
    repo: str = DEFAULT_REPO
    random_init: bool = False         # random weights: tests and benchmarks only (warned, recorded)
    checkpoint: str = ""              # the variant's weight file; empty: torch.hub's cache
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    # (H, W) the predictor resizes video to; None keeps the repository's (384, 512). Smaller is
    # faster and less accurate; only CoTracker3 supports changing it after construction.
    model_resolution: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.random_init and self.checkpoint:
            raise ValueError("random_init=true and a checkpoint exclude each other: choose one")


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(torch.device(name))


@contextmanager
def _read_only_import():
    """Import the clone's modules without writing bytecode next to them (a clone may be read-only,
    and root ignores permissions)."""
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = old


def _missing_weights(variant: str, detail: str) -> CoTrackerWeightsMissing:
    import torch

    name = WEIGHT_FILES[variant]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return CoTrackerWeightsMissing(
        f"Co-Tracker '{variant}' needs its weights {name} ({detail}): put {name} into {cache}, or set "
        f"tracker.options.checkpoint=/path/to/{name}; tracker.options.random_init=true builds it with "
        "random weights (tests and benchmarks only)")


def load_model(variant: str, repo: str = DEFAULT_REPO, random_init: bool = False, device: str = "cpu",
               model_resolution: tuple[int, int] | None = None, checkpoint: str = ""):
    """torch.hub.load the predictor once per process (cached by all arguments)."""
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"unknown Co-Tracker variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    res = None if model_resolution is None else tuple(int(v) for v in model_resolution)
    key = (variant, repo, random_init, device, res, checkpoint)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        local_dir = Path(repo).expanduser()
        local = local_dir.is_dir()
        if local and not (local_dir / "hubconf.py").is_file():
            raise CoTrackerUnavailable(f"{repo} is a directory without hubconf.py: point tracker.options.repo "
                                       "at a clone of https://github.com/facebookresearch/co-tracker")
        ckpt = Path(checkpoint).expanduser() if checkpoint else None
        if ckpt is not None and not ckpt.is_file():
            raise _missing_weights(variant, f"checkpoint={checkpoint} does not exist")
        pretrained = not random_init and ckpt is None
        log.info("loading Co-Tracker %s from %s (%s, device=%s)", variant, repo,
                 "random init" if random_init else (ckpt or "hub weights"), device)
        try:
            with _read_only_import(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = torch.hub.load(str(local_dir) if local else repo, variant,
                                       source="local" if local else "github", pretrained=pretrained)
        except (OSError, ConnectionError, ImportError, RuntimeError) as exc:
            if pretrained:
                raise _missing_weights(variant, f"torch.hub could not load them: {exc}") from exc
            where = (f"local clone {repo}" if local else
                     f"GitHub repo {repo} (torch.hub cache {torch.hub.get_dir()})")
            raise CoTrackerUnavailable(
                f"cannot load Co-Tracker '{variant}' from {where}: {exc}. Without network, clone "
                "facebookresearch/co-tracker and set tracker.options.repo to that folder") from exc
        if ckpt is not None:
            state = torch.load(ckpt, map_location="cpu")
            model.model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        model = model.to(device).eval()
        _set_resolution(model, variant, res)
        _MODELS[key] = model
    return model


def _set_resolution(model, variant: str, resolution: tuple[int, int] | None) -> None:
    if resolution is None:
        return
    if variant == "cotracker2":
        raise ValueError("model_resolution can only be changed for the CoTracker3 variants")
    h, w = (int(v) for v in resolution)
    if h % 32 or w % 32:
        raise ValueError(f"model_resolution must be multiples of 32, got {resolution}")
    model.interp_shape = (h, w)
    model.model.model_resolution = (h, w)


class CoTracker:
    """Tracker contract on top of a Co-Tracker hub predictor (loaded on first use or ``load()``)."""

    def __init__(self, variant: str = "cotracker3_offline", **cfg) -> None:
        from trackgo_data.config import config_from_dict

        if variant not in VARIANTS:
            raise ValueError(f"unknown Co-Tracker variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.cfg = config_from_dict(CoTrackerConfig, cfg)
        self.name = variant
        self.random_init = self.cfg.random_init
        weights = ("+random-init" if self.random_init else
                   f"+{Path(self.cfg.checkpoint).name}" if self.cfg.checkpoint else "")
        self.version = f"{variant}@{self.cfg.repo}{weights}"
        self._model = None

    def load(self):
        """Load code and weights now (one clear error if something is missing); returns the predictor."""
        if self._model is None:
            c = self.cfg
            if c.random_init:   # every tracker that uses them says so (the network itself is cached)
                log.warning("Co-Tracker %s with RANDOM weights (random_init=true): its tracks mean nothing; "
                            "for tests and benchmarks only", self.name)
            self._model = load_model(self.name, c.repo, c.random_init, _resolve_device(c.device),
                                     c.model_resolution, c.checkpoint)
        return self._model

    @property
    def model(self):
        return self.load()

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames (L,H,W,3) uint8, points (N,2) float32 → tracks (L,N,2) float32, visibility (L,N) bool."""
        import torch

        frames, points = check_inputs(frames, points)
        L = len(frames)
        N = len(points)
        if N == 0:
            return np.zeros((L, 0, 2), np.float32), np.zeros((L, 0), bool)
        model = self.model
        device = next(model.parameters()).device
        video = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)[None].float()  # (1,T,3,H,W)
        queries = torch.zeros((1, N, 3), dtype=torch.float32, device=device)
        queries[0, :, 1:] = torch.from_numpy(points).to(device)                       # (t=0, x, y)
        with torch.no_grad():
            if self.name == "cotracker3_online":
                tracks, vis = self._run_online(model, video, queries)
            else:
                tracks, vis = model(video, queries=queries, backward_tracking=False)
        tracks = tracks[0, :L].float().cpu().numpy().astype(np.float32)
        vis = vis[0, :L].cpu().numpy()
        if vis.ndim == 3:  # some versions return (T,N,1)
            vis = vis[..., 0]
        vis = vis.astype(bool)
        if tracks.shape != (L, N, 2):
            raise RuntimeError(f"Co-Tracker returned tracks {tracks.shape}, expected {(L, N, 2)}")
        # the query frame is known exactly: pin it (the online model only approximates it)
        H, W = frames.shape[1:3]
        tracks[0] = points
        vis[0] = (points[:, 0] >= 0) & (points[:, 0] <= W - 1) & (points[:, 1] >= 0) & (points[:, 1] <= H - 1)
        return tracks, vis

    @staticmethod
    def _run_online(model, video, queries):
        """The online predictor's protocol: the call at frame ``step`` registers the queries; then
        every ``step`` frames the last 2·step frames are fed; a final call feeds the remainder.
        The last call returns tracks for every frame seen so far."""
        step = int(model.step)
        T = video.shape[1]
        if T <= step:
            raise ValueError(f"the online Co-Tracker needs more than {step} frames, got {T}")
        first = True
        for i in range(step, T, step):
            model(video[:, max(0, i - 2 * step): i], is_first_step=first, queries=queries)
            first = False
        last = T - 1
        out = model(video[:, max(0, T - (last % step) - step - 1):], is_first_step=first, queries=queries)
        if out[0] is None:
            raise RuntimeError("online Co-Tracker returned no tracks")
        return out

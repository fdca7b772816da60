"""Co-Tracker backends (``cotracker3_offline``, ``cotracker3_online``, ``cotracker2``) via torch.hub.

``repo`` is either a GitHub hub spec (``facebookresearch/co-tracker``, fetched with
``source="github"``) or a local directory holding ``hubconf.py`` (``source="local"``). The model
is loaded once per process and cached; weights are fetched by the repository's hubconf through
``torch.hub.load_state_dict_from_url`` into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``),
so a machine without network needs them there beforehand. ``pretrained=False`` builds the
architecture with random weights (tests, smoke runs); it never happens silently.

Call contract (the repository's predictors): video (1,T,3,H,W) float 0..255, queries (1,N,3)
as (t=0, x, y) pixels → tracks (1,T,N,2) pixels, visibility (1,T,N) bool.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trackgo_data.track import check_inputs

log = logging.getLogger(__name__)

VARIANTS = ("cotracker3_offline", "cotracker3_online", "cotracker2")
DEFAULT_REPO = "facebookresearch/co-tracker"

_MODELS: dict[tuple, object] = {}
_LOCK = threading.Lock()


class CoTrackerUnavailable(RuntimeError):
    """Co-Tracker code or weights cannot be obtained (no network, no local clone, no cache)."""


@dataclass
class CoTrackerConfig:
    repo: str = DEFAULT_REPO
    pretrained: bool = True
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    hub_kwargs: dict = field(default_factory=dict)  # extra keyword arguments for the hub entry
    # (H, W) the predictor resizes video to; None keeps the repository's (384, 512). Smaller is
    # faster and less accurate; only CoTracker3 supports changing it after construction.
    model_resolution: tuple[int, int] | None = None


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_model(variant: str, repo: str = DEFAULT_REPO, pretrained: bool = True, device: str = "cpu",
               model_resolution: tuple[int, int] | None = None, **hub_kwargs):
    """torch.hub.load the predictor once per process (cached by all arguments)."""
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"unknown Co-Tracker variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    res = None if model_resolution is None else tuple(int(v) for v in model_resolution)
    key = (variant, repo, pretrained, device, res, tuple(sorted(hub_kwargs.items())))
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        local = Path(repo).expanduser().is_dir()
        if local and not (Path(repo).expanduser() / "hubconf.py").is_file():
            raise CoTrackerUnavailable(f"{repo} is a directory without hubconf.py: point 'repo' at a "
                                       "clone of https://github.com/facebookresearch/co-tracker")
        log.info("loading Co-Tracker %s from %s (pretrained=%s, device=%s)", variant, repo, pretrained, device)
        try:
            model = torch.hub.load(str(Path(repo).expanduser()) if local else repo, variant,
                                   source="local" if local else "github", pretrained=pretrained,
                                   **hub_kwargs)
        except (OSError, ConnectionError, RuntimeError, ImportError) as exc:
            where = (f"local clone {repo}" if local else
                     f"GitHub repo {repo} (torch.hub cache: {torch.hub.get_dir()})")
            need = ("the weights are fetched from the model hub into "
                    f"{Path(torch.hub.get_dir()) / 'checkpoints'}: copy the checkpoint "
                    "(scaled_offline.pth / scaled_online.pth / cotracker2.pth) there"
                    if pretrained else "the repository code must import")
            raise CoTrackerUnavailable(
                f"cannot load Co-Tracker '{variant}' from {where}: {exc}. With no network, clone "
                f"facebookresearch/co-tracker, set the tracker's repo to that folder, and {need}."
            ) from exc
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
    """Tracker contract on top of a Co-Tracker hub predictor."""

    def __init__(self, variant: str = "cotracker3_offline", **cfg) -> None:
        from trackgo_data.config import config_from_dict

        if variant not in VARIANTS:
            raise ValueError(f"unknown Co-Tracker variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.cfg = config_from_dict(CoTrackerConfig, cfg)
        self.name = variant
        self.version = f"{variant}@{self.cfg.repo}" + ("" if self.cfg.pretrained else "+random-weights")
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.name, self.cfg.repo, self.cfg.pretrained,
                                     _resolve_device(self.cfg.device), self.cfg.model_resolution,
                                     **self.cfg.hub_kwargs)
        return self._model

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
        out = (None, None)
        for i in range(step, T, step):
            out = model(video[:, max(0, i - 2 * step): i], is_first_step=first, queries=queries)
            first = False
        last = T - 1
        out = model(video[:, max(0, T - (last % step) - step - 1):], is_first_step=first, queries=queries)
        if out[0] is None:
            raise RuntimeError("online Co-Tracker returned no tracks")
        return out

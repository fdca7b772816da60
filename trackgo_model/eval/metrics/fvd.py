"""FVD: Fréchet distance of I3D (Kinetics-400) features of real vs generated clips.

The extractor is the TorchScript export of I3D that common PyTorch FVD code loads with
``torch.jit.load`` (``i3d_torchscript.pt``); it is called as
``model(videos (B, 3, T, 224, 224) in [-1, 1], rescale=False, resize=False, return_features=True)``
→ (B, 400). Clips are resized here (shorter side to 224, bilinear, centre crop) and scaled to
[−1, 1]. Every clip is used: the last, partial batch is kept and nothing is dropped.
No weights are downloaded: the file comes from ``TRACKGO_I3D_PATH`` or an explicit path.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trackgo_model.eval.metrics import MetricUnavailable, resolve_weight_file

log = logging.getLogger(__name__)

WEIGHTS_ENV = "TRACKGO_I3D_PATH"
WEIGHTS_FILE = "i3d_torchscript.pt"
WEIGHTS_HINT = "the TorchScript I3D used by StyleGAN-V / DIGAN FVD code (Kinetics-400, 400 logits)"
CLIP_SIZE = 224


def resolve_weights(path: str | Path | None = None) -> Path:
    """The I3D TorchScript file from ``path`` or ``$TRACKGO_I3D_PATH``; MetricUnavailable if absent."""
    return resolve_weight_file(
        path, WEIGHTS_ENV, f"FVD needs the I3D TorchScript file {WEIGHTS_FILE} ({WEIGHTS_HINT})",
        f"copy it to this machine and set {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE} (or pass --i3d)")


def load_i3d(path: str | Path | None = None, device: str = "cpu") -> torch.jit.ScriptModule:
    file = resolve_weights(path)
    try:
        model = torch.jit.load(str(file), map_location=device)
    except RuntimeError as exc:
        raise MetricUnavailable(f"{file} is not a loadable TorchScript I3D: {exc}") from exc
    log.info("loaded I3D TorchScript from %s", file)
    return model.eval()


def preprocess_clips(videos: np.ndarray, size: int = CLIP_SIZE) -> torch.Tensor:
    """videos: (B, T, H, W, 3) uint8 → (B, 3, T, size, size) float32 in [−1, 1]
    (shorter side resized to ``size``, bilinear with antialiasing, centre crop)."""
    x = torch.from_numpy(np.ascontiguousarray(videos))
    b, t, h, w, _ = x.shape
    x = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    x = x.clamp(0, 255) / 127.5 - 1.0
    return x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


@torch.no_grad()
def i3d_features(model, videos: list[np.ndarray], batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """videos: list of (T, H, W, 3) uint8 (any T; equal lengths are batched together)
    → (len(videos), D) float64 features in input order, every clip included."""
    by_len: dict[tuple, list[int]] = defaultdict(list)
    for i, video in enumerate(videos):
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"video {i}: expected (T, H, W, 3) uint8, got {video.shape} {video.dtype}")
        by_len[video.shape].append(i)
    feats: list[np.ndarray | None] = [None] * len(videos)
    for idxs in by_len.values():
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start:start + batch_size]
            x = preprocess_clips(np.stack([videos[i] for i in chunk])).to(device)
            out = model(x, rescale=False, resize=False, return_features=True)
            out = out.double().cpu().numpy().reshape(len(chunk), -1)
            for j, i in enumerate(chunk):
                feats[i] = out[j]
    if not feats:
        return np.zeros((0, 0))
    return np.stack(feats)


def fvd_from_videos(model, real: list[np.ndarray], gen: list[np.ndarray], batch_size: int = 16,
                    device: str = "cpu") -> float:
    """real, gen: lists of (T, H, W, 3) uint8 clips → FVD (≥ 2 clips per side)."""
    from trackgo_model.eval.metrics.frechet import frechet_distance_from_features

    return frechet_distance_from_features(
        i3d_features(model, real, batch_size, device), i3d_features(model, gen, batch_size, device)
    )

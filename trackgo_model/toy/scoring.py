"""Per-clip scores of the toy evaluation, and the reference videos they are judged against.

One clip record (a dict, JSON-ready) per (row, held-out clip):

* ``objmc_sum`` / ``objmc_n``: the video is re-tracked by the dataset's tracker from the control
  points of frame 0; distances (px at the model's size) to the requested tracks, summed over the
  (frame, point) entries the real clip sees, and their count (ObjMC = flat mean over clips).
* ``lost_n``: how many of those entries the re-tracker marked lost (its forward–backward check
  failed). A lost point keeps its last position, so a smeared object scores as if it stopped;
  ``lost_n / objmc_n`` says how often that happened.
* ``psnr``: dB against the real clip over all frames.
* ``path_sum`` / ``path_n``: one point per ground-truth object (the centre of the largest
  inscribed circle of its first-frame mask), re-tracked, against its true path.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 videos (same shape), from the mean squared error over all pixels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def gt_object_tracks(gt: dict[str, Any], start: int, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Ground truth → (L, S, 2) true paths at the model's size (W, H) of one point per object
    visible in frame ``start``: its inscribed-circle centre, moved by the object's path.

    Pixel centres map as x′ = (x + 0.5)·s − 0.5 (the loader's convention)."""
    from trackgo_model.eval.metrics.objmc import inscribed_centres

    labels0 = gt["labels"][start].astype(np.int32)
    paths = gt["paths"][start:start + num_frames].astype(np.float64)  # (L, n, 2) at the source size
    h0, w0 = labels0.shape
    scale = np.array([size[0] / w0, size[1] / h0])
    centres = inscribed_centres(labels0)
    out = [(np.asarray(centres[j]) + paths[:, j - 1] - paths[0, j - 1] + 0.5) * scale - 0.5 for j in sorted(centres)]
    return np.stack(out, axis=1) if out else np.zeros((num_frames, 0, 2))


def score_clip(tracker, video: np.ndarray, tracks: np.ndarray, visibility: np.ndarray, real: np.ndarray,
               gt_tracks: np.ndarray) -> dict[str, Any]:
    """One video against one held-out clip.

    video, real: (L, H, W, 3) uint8; tracks: (L, N, 2) requested tracks (x, y px);
    visibility: (L, N) bool, where the real clip sees each point; gt_tracks: (L, S, 2)."""
    tracks = np.asarray(tracks, np.float32)
    seen = np.asarray(visibility, bool)
    pred, pred_seen = tracker.track(np.asarray(video), tracks[0])
    err = np.linalg.norm(np.asarray(pred, np.float64) - tracks, axis=-1)
    out = {"objmc_sum": float(err[seen].sum()), "objmc_n": int(seen.sum()),
           "lost_n": int((seen & ~np.asarray(pred_seen, bool)).sum()), "psnr": psnr(video, real),
           "path_sum": 0.0, "path_n": 0}
    if gt_tracks.shape[1]:
        path_pred, _ = tracker.track(np.asarray(video), np.asarray(gt_tracks[0], np.float32))
        path_err = np.linalg.norm(np.asarray(path_pred, np.float64) - gt_tracks, axis=-1)
        out.update(path_sum=float(path_err.sum()), path_n=int(path_err.size))
    return out


def static_video(real: np.ndarray) -> np.ndarray:
    """The first frame repeated: (L, H, W, 3) → same shape, no motion at all."""
    return np.repeat(np.asarray(real)[:1], len(real), axis=0)


def vae_roundtrip(vae, real: np.ndarray) -> np.ndarray:
    """The real clip encoded (posterior mode) and decoded by the model's VAE: the best a
    generated clip can look. (L, H, W, 3) uint8 → same."""
    import torch

    from trackgo_model import conditioning as cond

    frames = torch.as_tensor(np.asarray(real)).permute(0, 3, 1, 2).float().unsqueeze(0) / 127.5 - 1.0
    with torch.no_grad():
        latents = cond.encode_video_latents(vae, frames.to(next(vae.parameters()).dtype))
        decoded = cond.decode_latents(vae, latents, frames.shape[1], frames.shape[1])
    out = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).numpy()

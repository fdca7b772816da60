"""Second implementations the metric tests compare against, written from the definitions and
sharing no code with :mod:`trackgo_model.eval`: Fréchet distance through a symmetric
eigen-decomposition, the extractors' inputs built with PIL."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def frechet_by_eigh(f1: np.ndarray, f2: np.ndarray) -> float:
    """(N1, D), (N2, D) features → d² = |μ1 − μ2|² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1Σ2)^½, with
    Tr (Σ1Σ2)^½ = Σ √λ(Σ1^½ Σ2 Σ1^½) (a symmetric PSD matrix: eigh, negative rounding clipped)."""
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def frame_features(net: torch.nn.Module, videos: list[np.ndarray]) -> np.ndarray:
    """Per-frame features of (T, H, W, 3) uint8 videos, the FID extractor's contract: frames as
    (B, 3, H, W) float in [0, 1] → (N frames, D)."""
    frames = np.concatenate(videos).astype(np.float32) / 255.0
    with torch.no_grad():
        return net(torch.from_numpy(frames).permute(0, 3, 1, 2)).double().numpy()


def i3d_input(video: np.ndarray, size: int = 224) -> np.ndarray:
    """(T, H, W, 3) uint8 → (3, T, size, size) float32 in [−1, 1]: shorter side to ``size`` with
    PIL's bilinear filter (per channel, in float), centre crop."""
    T, h, w, _ = video.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.empty((3, T, size, size), np.float32)
    for t in range(T):
        for c in range(3):
            plane = Image.fromarray(video[t, :, :, c].astype(np.float32), mode="F").resize((nw, nh), Image.BILINEAR)
            out[c, t] = np.asarray(plane)[top:top + size, left:left + size]
    return np.clip(out, 0, 255) / 127.5 - 1.0


def clip_features(net, videos: list[np.ndarray]) -> np.ndarray:
    """Per-clip features, the I3D export's contract: (B, 3, T, 224, 224) in [−1, 1] → (N clips, D)."""
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(i3d_input(v))[None], rescale=False, resize=False,
                                   return_features=True).double().numpy() for v in videos])

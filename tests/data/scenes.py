"""Synthetic scenes with a known moving object, shared by the segmentation tests."""
from __future__ import annotations

import numpy as np


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """A blurred random (h,w,3) uint8 texture."""
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 1.2)


def moving_square(L=10, h=144, w=256, obj_step=(3, 1), pan=(0, 0), seed=0):
    """Textured background (optionally panning) with a textured 40×30 square moving on it.
    Returns frames and the square's true mask per frame."""
    pad = 40
    bg = texture(h + 2 * pad + abs(pan[1]) * L, w + 2 * pad + abs(pan[0]) * L, seed)
    obj = texture(30, 40, seed + 1)
    frames, masks = [], []
    for t in range(L):
        ox, oy = pad + pan[0] * t, pad + pan[1] * t
        frame = bg[oy:oy + h, ox:ox + w].copy()
        x0, y0 = 60 + obj_step[0] * t, 50 + obj_step[1] * t
        frame[y0:y0 + 30, x0:x0 + 40] = obj
        mask = np.zeros((h, w), bool)
        mask[y0:y0 + 30, x0:x0 + 40] = True
        frames.append(frame)
        masks.append(mask)
    return np.stack(frames), np.stack(masks)

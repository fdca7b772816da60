"""A tiny VIPSeg_720P-layout folder built from a bundled real clip.

Frames: the real clip with two textured patches pasted on — one moving right (thing 6100), one
still (thing 6101). Masks (16-bit PNG, raw encoding): the patches, a stuff region (category 5) at
the left edge, void elsewhere, and a few glitch pixels (200). Frame names are original indices,
not contiguous and not zero-padded, so only a numeric sort gives the right order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FRAME_NAMES = [0, 2, 5, 9, 10, 14, 21, 30]


def patch_boxes(t: int) -> dict[int, tuple[int, int, int, int]]:
    """segment id → (x0, y0, x1, y1) in frame index t (0-based position in the clip)."""
    return {6100: (20 + 6 * t, 30, 60 + 6 * t, 70), 6101: (120, 20, 160, 50)}


def make_video(root: Path, name: str, frames: np.ndarray, num: int) -> None:
    (root / "images" / name).mkdir(parents=True, exist_ok=True)
    (root / "panomasks" / name).mkdir(parents=True, exist_ok=True)
    (root / "panomasksRGB" / name).mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    rng = np.random.default_rng(0)
    texture = {6100: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
               6101: rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)}
    for t in range(num):
        img = frames[t].copy()
        seg = np.zeros((h, w), np.uint16)
        seg[60:100, :16] = 5                              # stuff region
        for sid, (x0, y0, x1, y1) in patch_boxes(t).items():
            img[y0:y1, x0:x1] = texture[sid]
            seg[y0:y1, x0:x1] = sid
        seg[0, :4] = 200                                  # glitch value → void
        stem = str(FRAME_NAMES[t])
        Image.fromarray(img).save(root / "images" / name / f"{stem}.jpg", quality=95)
        Image.fromarray(seg).save(root / "panomasks" / name / f"{stem}.png")
        ids = seg.astype(np.int64)
        rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "panomasksRGB" / name / f"{stem}.png")


def build_fixture(root: Path, clip: np.ndarray) -> Path:
    """clip: (≥8, 144, 176, 3) uint8. Writes VIPSeg_720P/ with val: vid_a, vid_b, short_c, missing_d."""
    root = Path(root) / "VIPSeg_720P"
    make_video(root, "vid_a", clip, 8)
    make_video(root, "vid_b", clip[::-1].copy(), 8)
    make_video(root, "short_c", clip, 3)
    (root / "val.txt").write_text("vid_a\nvid_b\nshort_c\nmissing_d\n")   # missing_d has no folder
    (root / "train.txt").write_text("vid_b\n")
    (root / "test.txt").write_text("")
    return root

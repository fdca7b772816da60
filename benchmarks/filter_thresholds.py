"""Distributions of the frame-level filter statistics, which the defaults of
``trackgo_data.filters.FilterConfig`` were chosen from.

Clips (25 frames, 512×288 unless said otherwise):

* real — every window (stride 12) of the three bundled sample videos, windows spanning a shot
  cut left out (``scene_cut`` > the default threshold);
* pan — a real 1280×720 frame (mirrored into a wide canvas) seen through a moving window, at
  0.25 … 4 % of the clip width per frame, horizontal and diagonal;
* static+object — a still real background with a textured patch of another frame covering
  5 … 30 % of the clip, moving 1 … 3 % of the width per frame, plus sensor noise (σ = 2);
* blurred — the bigbuckbunny windows (the sharp source) after a Gaussian of σ = 0.7, 1, 2 px
  at the clip resolution, or down-scaled by 1.5, 2, 3 and up-scaled back;
* blocky — real frames JPEG-coded at quality 10, 30, 50, 90 at the source's resolution, then
  brought to the clip size as the pipeline does (bikes 640×272 → 512×288, bigbuckbunny
  1280×720 → 1024×576);
* letterbox — real windows with a 2.39:1 picture (bars top and bottom) and a 4:3 picture
  (bars left and right) inside the 16:9 frame;
* static — a real window with every frame shown twice (12.5 → 25 fps) and a still frame.

Prints, per statistic and set, min / median / max.

    python benchmarks/filter_thresholds.py
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from trackgo_data import filters as F
from trackgo_data.samples import sample_video_paths
from trackgo_data.video import probe, read_frames, read_windows, resize_crop

W, H, L = 512, 288, 25
KEYS = ("camera_motion_rel", "sharpness", "blockiness", "letterbox", "static_ratio", "scene_cut")


def real_windows(stride: int = 12) -> dict[str, list[tuple[np.ndarray, tuple[int, int]]]]:
    out = {}
    for name, path in sorted(sample_video_paths().items()):
        info = probe(path)
        starts = list(range(0, info.num_frames - L + 1, stride))
        out[name] = [(f, (info.width, info.height)) for _, f in read_windows(path, starts, L, size=(W, H))]
    return out


def pans(base: np.ndarray) -> list[tuple[str, np.ndarray]]:
    canvas = np.concatenate([base, base[:, ::-1], base], axis=1)          # 3840×720, seamless
    canvas = np.concatenate([canvas, canvas[::-1]], axis=0)               # 3840×1440
    cw, ch = 640, 360                                                     # window, resized to W×H
    out = []
    for speed in (0.0025, 0.005, 0.01, 0.02, 0.04):
        for dy in (0.0, 0.5):
            step = speed * cw
            frames = []
            for t in range(L):
                x0 = int(round(100 + t * step))
                y0 = int(round(100 + t * step * dy))
                frames.append(cv2.resize(canvas[y0:y0 + ch, x0:x0 + cw], (W, H), interpolation=cv2.INTER_AREA))
            out.append((f"pan {speed:.2%}/frame{' diagonal' if dy else ''}", np.stack(frames)))
    return out


def static_with_object(background: np.ndarray, texture: np.ndarray, rng) -> list[tuple[str, np.ndarray]]:
    bg = cv2.resize(background, (W, H), interpolation=cv2.INTER_AREA)
    out = []
    for area in (0.05, 0.15, 0.3):
        side_h = int(round(np.sqrt(area * W * H / 1.5)))
        side_w = int(round(1.5 * side_h))
        patch = cv2.resize(texture, (side_w, side_h), interpolation=cv2.INTER_AREA)
        for speed in (0.01, 0.03):
            frames = []
            for t in range(L):
                f = bg.copy()
                span = max(1, W - side_w)
                x0 = int(round(10 + t * speed * W)) % (2 * span)
                x0 = x0 if x0 < span else 2 * span - x0          # bounces off the edges
                y0 = (H - side_h) // 2
                f[y0:y0 + side_h, x0:x0 + side_w] = patch
                noisy = f.astype(np.float32) + rng.normal(0, 2.0, f.shape)
                frames.append(noisy.clip(0, 255).astype(np.uint8))
            out.append((f"object {area:.0%} at {speed:.0%}/frame", np.stack(frames)))
    return out


def blocky(path, size: tuple[int, int], quality: int, n: int = L, start: int = 0) -> np.ndarray:
    frames = read_frames(path, start, n)
    coded = [cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_UNCHANGED)
             for f in frames]
    return resize_crop(np.stack(coded), *size)


def bars(frames: np.ndarray, aspect: float) -> np.ndarray:
    out = np.zeros_like(frames)
    if aspect > W / H:   # wider picture: bars top and bottom
        h = int(round(W / aspect))
        y0 = (H - h) // 2
        out[:, y0:y0 + h] = np.stack([cv2.resize(f, (W, h), interpolation=cv2.INTER_AREA) for f in frames])
    else:                # narrower picture: bars left and right
        w = int(round(H * aspect))
        x0 = (W - w) // 2
        out[:, :, x0:x0 + w] = np.stack([cv2.resize(f, (w, H), interpolation=cv2.INTER_AREA) for f in frames])
    return out


def summary(values) -> str:
    v = np.asarray(values, float)
    return f"n={len(v):3d}  min {v.min():8.4f}  median {np.median(v):8.4f}  max {v.max():8.4f}"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    cfg = F.FilterConfig(quality_frames=3)
    rng = np.random.default_rng(0)
    paths = sample_video_paths()
    sets: dict[str, list[dict]] = {}

    real = real_windows()
    kept = []
    for name, wins in real.items():
        stats = [F.frame_stats(f, cfg, src) for f, src in wins]
        sets[f"real {name}"] = stats
        kept += [(f, src) for (f, src), s in zip(wins, stats) if s["scene_cut"] <= cfg.max_scene_cut]
    big = read_frames(paths["bigbuckbunny"], 0, 1)[0]
    other = read_frames(paths["bigbuckbunny"], 100, 1)[0]
    for label, frames in pans(big):
        sets.setdefault("pan", []).append(F.frame_stats(frames, cfg) | {"label": label})
    for label, frames in static_with_object(big, other, rng):
        sets.setdefault("static camera + object", []).append(F.frame_stats(frames, cfg) | {"label": label})
    sharp = real["bigbuckbunny"]
    for sigma in (0.7, 1.0, 2.0):
        sets[f"bigbuckbunny blurred σ={sigma:g}"] = [
            F.frame_stats(np.stack([cv2.GaussianBlur(x, (0, 0), sigma) for x in f]), cfg, s) for f, s in sharp]
    for up in (1.5, 2.0, 3.0):
        small = (int(W / up) // 2 * 2, int(H / up) // 2 * 2)
        sets[f"bigbuckbunny up-scaled ×{up:g}"] = [
            F.frame_stats(np.stack([cv2.resize(cv2.resize(x, small, interpolation=cv2.INTER_AREA), (W, H),
                                               interpolation=cv2.INTER_LINEAR) for x in f]), cfg, s)
            for f, s in sharp]
    sets["real 1024×576"] = [F.frame_stats(f, cfg, (1280, 720)) for _, f in
                             read_windows(paths["bigbuckbunny"], [0, 36, 72], L, size=(1024, 576))]
    for q in (10, 30, 50, 90):
        sets[f"JPEG q={q}"] = [
            F.frame_stats(blocky(paths["bikes"], (W, H), q), cfg, (640, 272)),
            F.frame_stats(blocky(paths["bikes"], (1024, 576), q), cfg, (640, 272)),
            F.frame_stats(blocky(paths["bigbuckbunny"], (1024, 576), q, start=36), cfg, (1280, 720))]
    sets["letterbox 2.39:1"] = [F.frame_stats(bars(f, 2.39), cfg) for f, _ in kept[::3]]
    sets["pillarbox 4:3"] = [F.frame_stats(bars(f, 4 / 3), cfg) for f, _ in kept[::3]]
    f0, s0 = kept[0]
    sets["frame-doubled"] = [F.frame_stats(np.repeat(f[::2], 2, axis=0)[:L], cfg, s) for f, s in kept[::3]]
    sets["still"] = [F.frame_stats(np.repeat(f[:1], L, axis=0), cfg, s) for f, s in kept[::3]]

    for key in KEYS:
        print(f"\n== {key}")
        for name, stats in sets.items():
            print(f"  {name:28s} {summary([s[key] for s in stats])}")
    print("\n== camera_motion_rel per synthetic clip")
    for name in ("pan", "static camera + object"):
        for s in sets[name]:
            print(f"  {s['label']:32s} {s['camera_motion_rel']:.4f}")
    print("\n== rejected by the defaults (frame-level reasons)")
    for name, stats in sets.items():
        reasons: dict[str, int] = {}
        for s in stats:
            r = F.check_frames(s, F.FilterConfig()) or "kept"
            reasons[r] = reasons.get(r, 0) + 1
        print(f"  {name:28s} {dict(sorted(reasons.items()))}")


if __name__ == "__main__":
    main()

"""A synthetic world for the toy reproduction: textured shapes on smooth paths, written as videos.

Each video shows 1–3 distinct shapes (disc, square, diamond, triangle; each its own hue and
stripe texture that moves with it) travelling along a random smooth path — a straight line, an
arc of constant curvature, or a line with one smooth turn — over a smooth textured background
that sometimes pans slowly. Shapes are drawn back to front, so crossing paths occlude.
Everything is anti-aliased at sub-pixel positions and deterministic given (seed, index).

    generate_videos("runs/toy/videos/train", SyntheticConfig(num_videos=400, seed=0))

writes, per video ``<video_id>``::

    <video_id>.mp4    H.264 yuv420p (crf ``SyntheticConfig.crf``), the only file the data pipeline reads
    <video_id>.npz    ground truth for evaluation only: ``labels`` (L, H, W) uint8 (0 background,
                      j+1 where object j is visible), ``paths`` (L, n, 2) float32 object centres (x, y)
                      in pixels, ``radius`` (n,), ``shape`` (n,) names, ``depth`` (n,) (0 = back),
                      ``pan`` (L, 2) background offset in pixels
    synthetic_config.json   the config (a folder made with another config is refused)

Objects translate without rotating, so the true path of any point of object j that starts at
``p`` is ``p + paths[:, j] − paths[0, j]``. The ``.npz`` is written before the ``.mp4``: a video that
exists is complete, and a rerun skips it (idempotent; files are written atomically).
"""
from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, atomic_write_bytes, atomic_write_json, config_hash, config_to_dict

log = logging.getLogger(__name__)

SHAPES = ("disc", "square", "diamond", "triangle")
PATHS = ("line", "arc", "turn")
CONFIG_FILE = "synthetic_config.json"
SUPERSAMPLE = 3  # sub-pixel samples per axis for the shapes' anti-aliased coverage


@dataclass
class SyntheticConfig:
    """The toy world. Lengths in pixels, speeds in pixels per frame."""

    num_videos: int = 64
    seed: int = 0
    width: int = 64
    height: int = 64
    num_frames: int = 8
    fps: float = 8.0
    min_objects: int = 1
    max_objects: int = 3
    min_radius: float = 6.0
    max_radius: float = 9.0
    min_speed: float = 2.0
    max_speed: float = 4.0
    max_turn_deg: float = 120.0       # heading change of a "turn" path (and the whole sweep of an arc)
    occlusion_prob: float = 0.3       # chance that a later object's path is aimed across an earlier one
    pan_prob: float = 0.3
    max_pan_speed: float = 0.5
    texture_contrast: float = 0.5     # texture amplitude of the objects, relative to their colour
    # HSV saturation and value ranges of the shapes' colours; their hues are spread over the colour
    # wheel, or, when ``object_hues`` lists hues (in [0, 1)), drawn from those (distinct within a
    # video while there are enough, each ± ``hue_jitter``)
    object_hues: tuple[float, ...] = ()
    hue_jitter: float = 0.03
    object_saturation: tuple[float, float] = (0.35, 0.55)
    object_value: tuple[float, float] = (0.95, 1.0)
    background_contrast: float = 16.0  # grey levels of the background's texture
    # HSV saturation and value ranges of the background's base colour (hue: any): dark, nearly
    # neutral, so that the bright shapes stand out in luminance (what a small VAE learns first)
    background_saturation: tuple[float, float] = (0.0, 0.1)
    background_value: tuple[float, float] = (0.2, 0.3)
    # sizes (Gaussian σ, px per 64 px of frame) of the background's two noise octaves and of the
    # shapes' texture: coarse enough for a ×8 VAE, fine enough for optical flow and point tracking
    background_texture_px: tuple[float, float] = (2.5, 6.0)
    object_texture_px: float = 2.0
    crf: int = 12

    def __post_init__(self) -> None:
        if self.num_videos < 0 or self.num_frames < 2:
            raise ValueError("num_videos must be >= 0 and num_frames >= 2")
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError(f"width/height must be even and >= 16, got {self.width}x{self.height}")
        if not 1 <= self.min_objects <= self.max_objects <= len(SHAPES):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(SHAPES)}")
        if not 0 < self.min_radius <= self.max_radius or 2 * self.max_radius >= min(self.width, self.height) / 2:
            raise ValueError("radii must satisfy 0 < min_radius <= max_radius < min(width, height) / 4")
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError("speeds must satisfy 0 <= min_speed <= max_speed")
        self.background_texture_px = tuple(float(x) for x in self.background_texture_px)
        if len(self.background_texture_px) != 2 or min(self.background_texture_px) <= 0 or self.object_texture_px <= 0:
            raise ValueError("background_texture_px must be two positive sizes and object_texture_px positive")
        for name in ("background_saturation", "background_value", "object_saturation", "object_value"):
            lo, hi = (float(x) for x in getattr(self, name))
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"{name} must be a range within [0, 1]")
            setattr(self, name, (lo, hi))
        self.object_hues = tuple(float(h) for h in self.object_hues)
        if any(not 0.0 <= h < 1.0 for h in self.object_hues) or not 0.0 <= self.hue_jitter < 0.5:
            raise ValueError("object_hues must lie in [0, 1) and hue_jitter in [0, 0.5)")
        for name in ("occlusion_prob", "pan_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass
class SyntheticVideo:
    """One rendered video and its ground truth (shapes in the module docstring)."""

    video_id: str
    frames: np.ndarray   # (L, H, W, 3) uint8
    labels: np.ndarray   # (L, H, W) uint8
    paths: np.ndarray    # (L, n, 2) float32
    radius: np.ndarray   # (n,) float32
    shape: list[str]
    depth: np.ndarray    # (n,) int64
    pan: np.ndarray      # (L, 2) float32
    path_kind: list[str]


def video_id_for(seed: int, index: int) -> str:
    return f"s{seed:04d}_{index:05d}"


# --------------------------------------------------------------------------------------- paths

def _path_offsets(kind: str, speed: float, heading: float, turn: float, frames: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(L, 2) positions relative to the start, for a path of the given kind (unit steps per frame)."""
    t = np.arange(frames - 1, dtype=np.float64)
    if kind == "line":
        headings = np.full(frames - 1, heading)
    elif kind == "arc":
        headings = heading + turn * (t + 0.5) / (frames - 1)
    elif kind == "turn":
        mid = rng.uniform(0.3, 0.7) * (frames - 1)
        headings = heading + turn / (1.0 + np.exp(-(t + 0.5 - mid) / 0.6))
    else:
        raise ValueError(f"unknown path kind {kind!r}; known: {PATHS}")
    steps = speed * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def _place(offsets: np.ndarray, radius: float, cfg: SyntheticConfig, rng: np.random.Generator
           ) -> np.ndarray | None:
    """Shift a path so the whole shape stays inside the frame; None when it cannot fit."""
    lo = radius + 1.0 - offsets.min(0)
    hi = np.array([cfg.width, cfg.height], np.float64) - radius - 2.0 - offsets.max(0)
    if np.any(hi < lo):
        return None
    return offsets + rng.uniform(lo, hi)


def _random_path(radius: float, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    kind = PATHS[int(rng.integers(len(PATHS)))]
    heading = rng.uniform(0, 2 * np.pi)
    turn = np.deg2rad(rng.uniform(40.0, cfg.max_turn_deg)) * rng.choice([-1.0, 1.0])
    speed = rng.uniform(cfg.min_speed, cfg.max_speed)
    for _ in range(20):  # a long path that does not fit is slowed down until it does
        path = _place(_path_offsets(kind, speed, heading, turn, cfg.num_frames, rng), radius, cfg, rng)
        if path is not None:
            return kind, path
        speed *= 0.85
    raise ConfigError("objects cannot fit in the frame; lower max_speed or max_radius")


def _aim_across(path: np.ndarray, other: np.ndarray, radius: float, cfg: SyntheticConfig,
                rng: np.random.Generator) -> np.ndarray | None:
    """Shift ``path`` so that it meets ``other`` at a random middle frame (an occlusion)."""
    t = int(rng.integers(1, cfg.num_frames - 1))
    shifted = path + (other[t] + rng.normal(0, 1.5, 2) - path[t])
    lo, hi = radius + 1.0, np.array([cfg.width, cfg.height]) - radius - 2.0
    if np.all(shifted >= lo) and np.all(shifted <= hi):
        return shifted
    return None


# ------------------------------------------------------------------------------------- drawing

def signed_distance(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (px, negative inside) of points to a shape of radius r at the origin."""
    if kind == "disc":
        return np.hypot(dx, dy) - r
    if kind == "square":
        s = r * 0.85
        return np.maximum(np.abs(dx), np.abs(dy)) - s
    if kind == "diamond":
        return (np.abs(dx) + np.abs(dy) - r * 1.2) / math.sqrt(2.0)
    if kind == "triangle":  # equilateral, pointing up, circumradius 1.15 r
        rr = 1.15 * r
        n = [(0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5)]  # outward normals (y down)
        return np.max([nx * dx + ny * dy - rr / 2 for nx, ny in n], axis=0)
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")


def _hue_rgb(hue: float, sat: float = 0.75, val: float = 0.9) -> np.ndarray:
    """HSV (hue in [0, 1)) → RGB float in [0, 255]."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val)) * 255.0


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Smooth random texture (h, w) in about [−1, 1]: white noise low-passed by a Gaussian of
    ``sigma`` px (non-periodic, so optical flow and point trackers find unambiguous matches)."""
    import cv2

    n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma,
                         borderType=cv2.BORDER_REFLECT)
    return n / (2.5 * float(n.std()) + 1e-8)


def _background(rng: np.random.Generator, h: int, w: int, contrast: float, sigmas: tuple[float, float],
                saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    """Coloured texture (h, w, 3) float: a base colour plus two octaves of smooth noise, each
    octave tinted differently; ``sigmas``: the octaves' sizes in pixels."""
    base = _hue_rgb(rng.uniform(), sat=rng.uniform(*saturation), val=rng.uniform(*value))
    out = np.broadcast_to(base, (h, w, 3)).astype(np.float64)
    for sigma, weight in zip(sigmas, (0.6, 0.8)):
        out = out + (contrast * weight) * _noise(rng, h, w, sigma)[..., None] * rng.uniform(0.6, 1.0, 3)
    return out


def _sample_canvas(canvas: np.ndarray, ox: float, oy: float, h: int, w: int) -> np.ndarray:
    """The (h, w) window of ``canvas`` at sub-pixel offset (ox, oy), bilinear."""
    import cv2

    m = np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy]], np.float32)
    return cv2.warpAffine(canvas.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _sample_patch(patch: np.ndarray, dx: np.ndarray, dy: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Bilinear samples of a centred texture patch at offsets (dx, dy) where ``inside`` (0 elsewhere)."""
    from scipy.ndimage import map_coordinates

    c = (patch.shape[0] - 1) / 2.0
    out = np.zeros(dx.shape, np.float64)
    out[inside] = map_coordinates(patch, [dy[inside] + c, dx[inside] + c], order=1, mode="nearest")
    return out


def object_hues(cfg: SyntheticConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) hues in [0, 1) of one video's objects: spread over the wheel, or drawn from
    ``cfg.object_hues`` (distinct while there are enough) with ± ``cfg.hue_jitter``."""
    if not cfg.object_hues:
        return (rng.uniform() + np.arange(n) / n + rng.uniform(-0.05, 0.05, n)) % 1.0
    palette = np.asarray(cfg.object_hues, np.float64)
    picks = palette[np.resize(rng.permutation(len(palette)), n)]
    return (picks + rng.uniform(-cfg.hue_jitter, cfg.hue_jitter, n)) % 1.0


def make_video(cfg: SyntheticConfig, index: int) -> SyntheticVideo:
    """Render video ``index`` of the world seeded by ``cfg.seed`` (pure and deterministic)."""
    rng = np.random.default_rng([cfg.seed, index])
    L, H, W = cfg.num_frames, cfg.height, cfg.width
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:n]]
    hues = object_hues(cfg, n, rng)
    radius = rng.uniform(cfg.min_radius, cfg.max_radius, n)
    kinds, paths = [], []
    for j in range(n):
        kind, path = _random_path(radius[j], cfg, rng)
        if j > 0 and rng.uniform() < cfg.occlusion_prob:
            aimed = _aim_across(path, paths[int(rng.integers(j))], radius[j], cfg, rng)
            path = aimed if aimed is not None else path
        kinds.append(kind)
        paths.append(path)
    paths_arr = np.stack(paths, axis=1)  # (L, n, 2)

    # background: a larger canvas whose window pans linearly (sub-pixel, bilinear)
    pan_v = np.zeros(2)
    if rng.uniform() < cfg.pan_prob:
        a = rng.uniform(0, 2 * np.pi)
        pan_v = rng.uniform(0.3, 1.0) * cfg.max_pan_speed * np.array([np.cos(a), np.sin(a)])
    pad = int(math.ceil(cfg.max_pan_speed * (L - 1))) + 2
    scale = min(W, H) / 64.0
    canvas = _background(rng, H + 2 * pad, W + 2 * pad, cfg.background_contrast,
                         tuple(scale * float(x) for x in cfg.background_texture_px),
                         cfg.background_saturation, cfg.background_value)
    pan = np.stack([pan_v * t for t in range(L)]).astype(np.float32)

    # object textures: smooth noise patches in object coordinates, so they move with the object
    half = [int(math.ceil(1.3 * r)) + 2 for r in radius]
    patches = [_noise(rng, 2 * hj + 1, 2 * hj + 1, cfg.object_texture_px * scale) for hj in half]
    colours = [_hue_rgb(h_, sat=rng.uniform(*cfg.object_saturation), val=rng.uniform(*cfg.object_value))
               for h_ in hues]

    s = SUPERSAMPLE
    sub = (np.arange(s) + 0.5) / s - 0.5
    ys = (np.arange(H)[:, None] + sub[None, :]).reshape(-1)  # (H·s,)
    xs = (np.arange(W)[:, None] + sub[None, :]).reshape(-1)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")  # (H·s, W·s)
    frames = np.empty((L, H, W, 3), np.uint8)
    labels = np.zeros((L, H, W), np.uint8)
    for t in range(L):
        img = _sample_canvas(canvas, pad + pan[t, 0], pad + pan[t, 1], H, W).astype(np.float64)
        for j in range(n):  # back to front: later objects occlude earlier ones
            dx, dy = gx - paths_arr[t, j, 0], gy - paths_arr[t, j, 1]
            inside = signed_distance(shapes[j], dx, dy, radius[j]) < 0
            cover = inside.reshape(H, s, W, s).mean(axis=(1, 3))  # anti-aliased coverage
            wave = _sample_patch(patches[j], dx, dy, inside).reshape(H, s, W, s).mean(axis=(1, 3))
            col = colours[j][None, None, :] * (1.0 + cfg.texture_contrast * wave[..., None])
            img = img * (1.0 - cover[..., None]) + col * cover[..., None]
            labels[t][cover >= 0.5] = j + 1
        frames[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return SyntheticVideo(video_id=video_id_for(cfg.seed, index), frames=frames, labels=labels,
                          paths=paths_arr.astype(np.float32), radius=radius.astype(np.float32),
                          shape=shapes, depth=np.arange(n, dtype=np.int64), pan=pan, path_kind=kinds)


# ------------------------------------------------------------------------------------ files

def save_ground_truth(video: SyntheticVideo, path: str | Path) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=video.labels, paths=video.paths, radius=video.radius,
                        shape=np.array(video.shape), depth=video.depth, pan=video.pan,
                        path_kind=np.array(video.path_kind))
    return atomic_write_bytes(path, buf.getvalue())


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """``<video_id>.npz`` → {"labels", "paths", "radius", "shape", "depth", "pan", "path_kind"}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth at {path} (written by trackgo_data.synthetic.generate_videos)")
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["shape"] = [str(x) for x in out["shape"]]
    out["path_kind"] = [str(x) for x in out["path_kind"]]
    return out


def prepare_folder(out: Path, cfg: SyntheticConfig) -> None:
    """Create ``out`` and record the world's config in it, or check that it holds this world
    (:class:`ConfigError` for a folder made with another config)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    chash = config_hash(cfg)
    if path.is_file():
        old = json.loads(path.read_text()).get("config_hash")
        if old != chash:
            raise ConfigError(f"{out} holds synthetic videos made with another config (hash {old}, "
                              f"now {chash}); use a fresh folder")
    else:
        atomic_write_json(path, {"config_hash": chash, "config": config_to_dict(cfg)})


def write_video(out_dir: str | Path, cfg: SyntheticConfig, index: int) -> bool:
    """Render and write video ``index`` unless its files exist; True when it was written."""
    from .video import encode_mp4

    out = Path(out_dir)
    vid = video_id_for(cfg.seed, index)
    mp4, gt = out / f"{vid}.mp4", out / f"{vid}.npz"
    if mp4.is_file() and gt.is_file():
        return False
    video = make_video(cfg, index)
    save_ground_truth(video, gt)
    encode_mp4(video.frames, mp4, fps=cfg.fps, crf=cfg.crf)
    return True


def video_paths(out_dir: str | Path, cfg: SyntheticConfig) -> list[Path]:
    """Paths of the ``cfg.num_videos`` videos of the world in ``out_dir``, in index order."""
    return [Path(out_dir) / f"{video_id_for(cfg.seed, i)}.mp4" for i in range(cfg.num_videos)]


def generate_videos(out_dir: str | Path, cfg: SyntheticConfig, indices: list[int] | None = None) -> list[Path]:
    """Write the videos (+ ground truth) of the world to ``out_dir`` — all ``cfg.num_videos`` or
    only ``indices`` — and return every video path in index order. Videos already present are
    kept (a rerun only fills gaps), and a folder made with another config is refused."""
    out = Path(out_dir)
    prepare_folder(out, cfg)
    todo = range(cfg.num_videos) if indices is None else indices
    made = sum(write_video(out, cfg, i) for i in todo)
    log.info("synthetic videos in %s: %d written, %d already there", out, made, len(todo) - made)
    return video_paths(out, cfg)

"""Evaluation metrics: Fréchet distance (FID, FVD) and ObjMC, plus the media-folder reader
they share.

Feature extractors never download anything: their weights come from local paths (config or
environment). Without them a metric raises :class:`MetricUnavailable` whose message says which
file to put where.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. its feature-extractor weights are absent)."""


def resolve_weight_file(path: str | Path | None, env: str, needs: str, how: str) -> Path:
    """``path`` or ``$env`` if it names an existing file, else MetricUnavailable saying
    ``{needs}: … {how} and set {env}=…``."""
    import os

    path = path or os.environ.get(env)
    if not path or not Path(path).is_file():
        where = f"{path} does not exist; " if path else ""
        raise MetricUnavailable(f"{needs}: {where}{how}")
    return Path(path)


def _numeric_key(path: Path):
    parts = re.split(r"(\d+)", path.stem)
    return [int(p) if p.isdigit() else p for p in parts], path.name


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in numeric order of their names (``2.png`` before ``10.png``)."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_numeric_key)


def read_frame_folder(folder: Path, count: int | None = None) -> np.ndarray:
    """Folder of images (numeric order) → (T, H, W, 3) uint8; the first ``count`` (None: all)."""
    from PIL import Image

    files = image_files(folder)[:count]
    if not files:
        raise ValueError(f"{folder} holds no image files")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"{folder}: frames differ in size")
    return np.stack(frames)


def list_videos(root: str | Path) -> dict[str, Path]:
    """Videos under ``root``: its video files and its sub-folders of frames (a folder that itself
    holds images counts as one video). → {name (stem): path}, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of videos (mp4 files and/or frame folders)")
    found: dict[str, Path] = {}
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        found[root.name] = root
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            found[p.stem] = p
        elif p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()):
            found[p.name] = p
    if not found:
        raise ValueError(f"{root} holds no videos (mp4 files or folders of frames)")
    return dict(sorted(found.items()))


def read_video(path: str | Path, count: int | None = None) -> np.ndarray:
    """A video file or frame folder → (T, H, W, 3) uint8; the first ``count`` frames (None: all)."""
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path, count)
    from trackgo_data.video import read_frames

    return read_frames(path, count=count)


def load_video_dir(root: str | Path) -> dict[str, np.ndarray]:
    """{name: (T, H, W, 3) uint8} for every video under ``root`` (see :func:`list_videos`)."""
    return {name: read_video(p) for name, p in list_videos(root).items()}

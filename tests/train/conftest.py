"""Fixtures for the training tests: tiny shards cut from a real sample video, the tiny model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SIZE = 32  # frames are SIZE×SIZE (the tiny model needs multiples of 16)
FRAMES = 4


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: tiny tensors on a shared CPU run several times faster this way."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def moving_box_sample(frames: np.ndarray, key: str, shift: tuple[float, float]):
    """A format-v1 sample: real frames, a 16-point grid in a box moving by ``shift`` per frame."""
    from trackgo_data.render import render_trajectories
    from trackgo_data.sample import Sample, downsample_labels

    L = len(frames)
    gx, gy = np.meshgrid(np.linspace(10, 20, 4), np.linspace(10, 20, 4))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    steps = np.arange(L, dtype=np.float32)[:, None, None]
    tracks = pts[None] + steps * np.asarray(shift, np.float32)[None, None]
    vis = np.ones((L, len(pts)), bool)
    comps = np.zeros(len(pts), np.int64)
    labels = np.zeros((L, SIZE, SIZE), np.int32)
    for i in range(L):
        x0, y0 = (np.array([8, 8]) + i * np.asarray(shift)).round().astype(int)
        labels[i, max(y0, 0):y0 + 16, max(x0, 0):x0 + 16] = 1
    P = render_trajectories(tracks, vis, comps, SIZE, SIZE)
    return Sample(key=key, image=frames[0].copy(), video=frames, trajectory=P, tracks=tracks,
                  visibility=vis, components=comps, masks=downsample_labels(labels),
                  meta={"fps": 8.0, "width": SIZE, "height": SIZE})


def write_tiny_shards(out: Path, video: Path, frames: int = FRAMES) -> Path:
    """Two shards of SIZE² clips of ``video``: clips-000000.tar (3 training samples), clips-000001.tar (1 held out)."""
    from trackgo_data.sample import encode_sample
    from trackgo_data.shards import ShardSpec, write_shards
    from trackgo_data.video import read_frames

    samples = []
    for i, start in enumerate((0, 20, 40, 60)):
        clip = read_frames(video, start=start, count=frames, size=(SIZE, SIZE))
        samples.append(encode_sample(moving_box_sample(clip, f"carphone-{start:06d}", (2.0 * (i % 2) - 1.0, 1.0))))
    write_shards(samples, out, "clips", ShardSpec(maxcount=3))
    assert len(list(out.glob("*.tar"))) == 2
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, sample_videos) -> Path:
    """Two shards of FRAMES-frame clips (:func:`write_tiny_shards`)."""
    return write_tiny_shards(tmp_path_factory.mktemp("shards"), sample_videos["carphone"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from trackgo_model.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def tiny_overrides(shards: Path, model_dir: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides turning tiny-cpu into a seconds-long run on the test shards."""
    base = {
        "run_dir": str(run_dir),
        "model.tiny_dir": str(model_dir),
        "data.shards": str(shards),
        "data.width": SIZE,
        "data.height": SIZE,
        "data.num_frames": FRAMES,
        "data.shuffle_buffer": 4,
        "validation.every": 0,
        "progress": "none",
        "log_every": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(shards: Path, model_dir: Path, run_dir: Path, **extra):
    from trackgo_model.train.config import load_train_config

    return load_train_config("tiny-cpu", tiny_overrides(shards, model_dir, run_dir, **extra))

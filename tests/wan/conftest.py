"""Fixtures for the Wan training and sampling tests: a tiny Wan folder and 5-frame shards."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.conftest import SIZE, write_tiny_shards

WAN_FRAMES = 5  # 4k + 1 pixel frames → 2 latent frames


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    from trackgo_model.wan.tiny import init_tiny_wan

    return init_tiny_wan(tmp_path_factory.mktemp("tiny-wan") / "wan", seed=0)


@pytest.fixture(scope="session")
def wan_shards(tmp_path_factory, sample_videos) -> Path:
    """Two shards of SIZE² clips of WAN_FRAMES frames (3 training samples, 1 held out)."""
    return write_tiny_shards(tmp_path_factory.mktemp("wan-shards"), sample_videos["carphone"], frames=WAN_FRAMES)


def wan_overrides(shards: Path, model_dir: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides turning tiny-wan-cpu into a seconds-long run on the test shards."""
    base = {"run_dir": str(run_dir), "model.tiny_dir": str(model_dir), "data.shards": str(shards),
            "data.width": SIZE, "data.height": SIZE, "data.num_frames": WAN_FRAMES, "data.shuffle_buffer": 4,
            "validation.every": 0, "progress": "none", "max_steps": 2, "checkpoint_every": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]

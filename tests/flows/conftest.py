"""Fixtures of the flow tests: tiny real clips, a reference build without Prefect, a test server."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: small clips keep the whole flow test set to a few minutes on 2 shared cores
CLIP = {"num_frames": 8, "width": 256, "height": 144, "clips_per_video": 1}
BATCH_SIZE = 1

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@pytest.fixture(scope="session")
def flow_sources(tmp_path_factory, sample_videos) -> Path:
    """A list file: two real sample videos and one zero-byte 'video' (must become a rejected row)."""
    root = tmp_path_factory.mktemp("sources")
    broken = root / "broken.mp4"
    broken.write_bytes(b"")
    listing = root / "videos.txt"
    listing.write_text("\n".join([str(sample_videos["carphone"]), str(sample_videos["bigbuckbunny"]),
                                  str(broken)]) + "\n")
    return listing


@pytest.fixture(scope="session")
def build_cfg():
    from flows.build_dataset import make_build_config

    return make_build_config("local", CLIP["num_frames"], CLIP["width"], CLIP["height"],
                             clips_per_video=CLIP["clips_per_video"])


@pytest.fixture(scope="session")
def reference_build(tmp_path_factory, flow_sources, build_cfg) -> tuple[Path, dict]:
    """The same stages in a plain in-process loop (trackgo_data.build.build_dataset), no Prefect."""
    from trackgo_data.build import build_dataset

    out = tmp_path_factory.mktemp("reference")
    summary = build_dataset(str(flow_sources), out, build_cfg, batch_size=BATCH_SIZE, progress=False)
    return out, summary


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (SQLite) for the whole session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


def flow_kwargs(source: Path, output: Path, **extra) -> dict:
    kw = dict(source=str(source), output=str(output), profile="local", num_frames=CLIP["num_frames"],
              width=CLIP["width"], height=CLIP["height"], clips_per_video=CLIP["clips_per_video"],
              batch_size=BATCH_SIZE, previews=2, progress_bar=False)
    kw.update(extra)
    return kw


def cli_args(source: Path, output: Path) -> list[str]:
    """The same run as :func:`flow_kwargs` through ``python -m flows.build_dataset``."""
    return ["--source", str(source), "--output", str(output), "--num-frames", str(CLIP["num_frames"]),
            "--width", str(CLIP["width"]), "--height", str(CLIP["height"]),
            "--clips-per-video", str(CLIP["clips_per_video"]), "--batch-size", str(BATCH_SIZE),
            "--previews", "0", "--no-progress"]

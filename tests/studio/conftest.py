"""Fixtures of the studio tests: ``trackgo studio`` served in-process on a free port (one server
per test module), the tiny model created on first use in a cache folder shared by the whole run,
and a folder for the screenshots of the browser tests (``$TRACKGO_TEST_ARTIFACTS`` or a pytest
temporary folder; its path is printed at the end of the run)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.processes import free_port

_ARTIFACTS: list[Path] = []


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def studio_cache(tmp_path_factory) -> Path:
    """Empty at first: the first server writes the tiny model into it, later ones reuse it."""
    return tmp_path_factory.mktemp("studio-cache")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("TRACKGO_TEST_ARTIFACTS")
    path = Path(folder) / "studio" if folder else tmp_path_factory.mktemp("studio-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    _ARTIFACTS.append(path)
    return path


def pytest_terminal_summary(terminalreporter):
    for path in _ARTIFACTS:
        terminalreporter.write_line(f"studio test screenshots: {path}")


@dataclass
class Server:
    url: str
    out: Path
    cache: Path
    demo: object

    def runs(self) -> list[Path]:
        return sorted(p for p in self.out.glob("*") if p.is_dir() and not p.name.startswith("."))


def start_studio(out: Path, cache: Path, *extra: str) -> Server:
    """``trackgo studio --port P --cache-dir C --out O`` through the real dispatcher; only the
    final launch returns at once instead of blocking (tests close the server themselves)."""
    from studio import app as studio_app
    from trackgo_model import cli

    captured = {}
    real_launch = studio_app.launch

    def launch(demo, host, port, block=True):
        captured["demo"] = demo
        return real_launch(demo, host, port, block=False)

    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(studio_app, "launch", launch)
        rc = cli.main(["studio", "--port", str(port), "--cache-dir", str(cache), "--out", str(out), *extra])
    assert rc == 0
    return Server(f"http://127.0.0.1:{port}/", out, cache, captured["demo"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, studio_cache):
    srv = start_studio(tmp_path_factory.mktemp("studio-runs"), studio_cache)
    yield srv
    srv.demo.close()


def scene(folder: Path, size: int = 64) -> tuple[Path, Path, np.ndarray]:
    """A random size×size image and one binary mask (a box in its middle) as PNGs."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "img.png")
    mask = np.zeros((size, size), bool)
    mask[20:44, 16:40] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return folder / "img.png", folder / "mask.png", mask

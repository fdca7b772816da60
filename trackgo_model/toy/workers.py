"""Worker processes of the toy: spawned, each with a fixed number of intra-op threads."""
from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor


class InlineExecutor(Executor):
    """Runs every call in this process (one worker: no pool to start)."""

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return [fn(*args) for args in zip(*iterables)]


def init_worker(threads: int) -> None:
    """Pin OpenMP, OpenCV and torch to ``threads`` threads in a new worker."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import cv2
    import torch

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)


def process_pool(processes: int, threads: int = 1) -> Executor:
    """A spawn-context pool of ``processes`` workers with ``threads`` threads each, or an
    in-process executor when ``processes`` is 1."""
    import multiprocessing as mp

    if processes <= 1:
        return InlineExecutor()
    return ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"), initializer=init_worker,
                               initargs=(threads,))

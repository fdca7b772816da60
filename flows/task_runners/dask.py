"""``dask``: prefect-dask's DaskTaskRunner.

With ``address`` the tasks go to an existing scheduler (e.g. the one described in
``infra/dask/``); without, :func:`local_cluster` starts a ``distributed.LocalCluster`` of
``max_workers`` single-threaded worker processes for the run.

Three settings of a stock LocalCluster make CPU-bound video work slow, and :func:`local_cluster`
changes all three:

* Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to its workers. Setting that variable
  switches off glibc's dynamic mmap threshold, so every array above 128 KiB (each decoded frame,
  each flow field) is a fresh ``mmap`` whose pages fault in again on first touch. The workers
  here run without it (glibc's defaults, as in a plain Python process).
* Each worker keeps its libraries' default thread pools (OpenCV and PyTorch: one thread per
  core; FFmpeg's decoder and RGB scaler: automatic), so N workers on C cores run N×C busy
  threads. Each worker is pinned to ``cpus // N`` threads instead (:class:`PinThreads`, plus
  ``OMP_NUM_THREADS`` and friends set before the worker process starts).
* Each worker runs Dask's statistical profiler, which samples the task thread's stack every
  10 ms (for the dashboard's profile page), a cost paid by every task. It is switched off
  (``distributed.worker.profile.enabled``; the runner starts no dashboard anyway).

What each setting cost when measured: ``docs/measurements.md``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: thread-count variables read by OpenMP / MKL / OpenBLAS when a worker process starts
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: dask config key of the workers' statistical task profiler, and its environment variable
PROFILE_KEY = "distributed.worker.profile.enabled"
PROFILE_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_environ(threads: int) -> dict[str, str]:
    """Environment for a worker process started outside :func:`local_cluster` (``dask worker``
    on the command line, a pod): ``threads`` library threads and no task profiler. The infra
    configs set the same variables."""
    return {**{k: str(int(threads)) for k in THREAD_ENV}, PROFILE_ENV: "False"}


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_process(n_workers: int, cpus: int | None = None) -> int:
    """Library threads each of ``n_workers`` processes may use on ``cpus`` cores: cpus // n, >= 1."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return max(1, (cpu_count() if cpus is None else cpus) // n_workers)


def pin_threads(threads: int) -> dict[str, int]:
    """Size this process's OpenCV, PyTorch and FFmpeg (decoder, RGB scaler) thread pools to ``threads``.

    Returns the counts now in effect ({"opencv": …, "torch": …, "decode": …})."""
    import cv2
    import torch

    from trackgo_data import video

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    video.set_decode_threads(threads)
    return {"opencv": cv2.getNumThreads(), "torch": torch.get_num_threads(),
            "decode": video.get_decode_threads()}


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed comes with prefect-dask
    _WorkerPlugin = object


class PinThreads(_WorkerPlugin):
    """Worker plugin: :func:`pin_threads` once in each worker process when it starts."""

    name = "trackgo-pin-threads"

    def __init__(self, threads: int):
        self.threads = int(threads)

    def setup(self, worker: Any) -> None:
        log.debug("worker %s: %s", getattr(worker, "address", "?"), pin_threads(self.threads))


def local_cluster(n_workers: int | None = None, **kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` of ``n_workers`` (default: one per CPU) single-threaded
    worker processes with glibc's default malloc behaviour, ``cpus // n_workers`` library
    threads each and no task profiler; ``kwargs`` go to LocalCluster."""
    import dask
    from distributed import LocalCluster

    n = int(n_workers or cpu_count())
    threads = threads_per_process(n)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ["MALLOC_TRIM_THRESHOLD_"] = None  # None: not exported (see the module docstring)
    environ.update({k: threads for k in THREAD_ENV})
    options: dict[str, Any] = {"processes": True, "threads_per_worker": 1, "dashboard_address": None,
                               "plugins": (PinThreads(threads),)}
    options.update(kwargs)
    # the nanny writes the pre-spawn variables into this process's os.environ before each
    # spawn; put the previous values back so the flow process itself is unaffected
    saved = {k: os.environ.get(k) for k in (*THREAD_ENV, "MALLOC_TRIM_THRESHOLD_")}
    try:
        # the nanny hands this process's dask config to each worker it spawns
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, PROFILE_KEY: False}):
            return LocalCluster(n_workers=n, **options)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build(address: str | None = None, max_workers: int | None = None) -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a core dependency
        raise ImportError("task_runner 'dask' needs prefect-dask: pip install prefect-dask") from exc
    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {}
    if max_workers is not None:
        kwargs["n_workers"] = max_workers
    return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs=kwargs)

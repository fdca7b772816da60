"""Task-runner backends for the flows, chosen by a string name.

Each backend lives in its own module and imports its heavy dependency only when built:

    thread   prefect.task_runners.ThreadPoolTaskRunner    (in the flow process; default, 1 thread)
    process  prefect.task_runners.ProcessPoolTaskRunner   (local worker processes)
    dask     prefect_dask.DaskTaskRunner                  (LocalCluster, or a scheduler ``address``)
    ray      prefect_ray.RayTaskRunner                    (optional extra: ``pip install 'trackgo[ray]'``)

``make_task_runner(name, address=None, max_workers=None)`` returns an *unentered* Prefect task
runner; use it as a context manager and call ``runner.submit(task, parameters)``.
"""
from __future__ import annotations

import importlib
from typing import Any

_BACKENDS = {
    "thread": "flows.task_runners.thread",
    "process": "flows.task_runners.process",
    "dask": "flows.task_runners.dask",
    "ray": "flows.task_runners.ray",
}

TASK_RUNNER_NAMES = tuple(_BACKENDS)


def make_task_runner(name: str, address: str | None = None, max_workers: int | None = None) -> Any:
    """Build the task runner registered as ``name``.

    ``address`` points ``dask``/``ray`` at an existing cluster (``tcp://host:8786`` /
    ``ray://host:10001``); without it they start a local one with ``max_workers`` workers.
    """
    if name not in _BACKENDS:
        raise ValueError(f"unknown task_runner {name!r}; choose one of {', '.join(TASK_RUNNER_NAMES)}")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    module = importlib.import_module(_BACKENDS[name])
    return module.build(address=address, max_workers=max_workers)

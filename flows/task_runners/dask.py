"""``dask``: prefect-dask's DaskTaskRunner.

With ``address`` the tasks go to an existing scheduler (e.g. the one described in
``infra/dask/``); without, a ``distributed.LocalCluster`` of ``max_workers`` single-threaded
worker processes is started for the run (the segmenter and tracker are CPU/GPU bound, so one
thread per process avoids oversubscription).
"""
from __future__ import annotations

from typing import Any


def build(address: str | None = None, max_workers: int | None = None) -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a core dependency
        raise ImportError("task_runner 'dask' needs prefect-dask: pip install prefect-dask") from exc
    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {"processes": True, "threads_per_worker": 1, "dashboard_address": None}
    if max_workers is not None:
        kwargs["n_workers"] = max_workers
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)

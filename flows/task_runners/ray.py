"""``ray``: prefect-ray's RayTaskRunner (optional: ``pip install 'trackgo[ray]'``)."""
from __future__ import annotations

from typing import Any


def build(address: str | None = None, max_workers: int | None = None) -> Any:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ImportError(
            "task_runner 'ray' needs the optional prefect-ray package: pip install 'trackgo[ray]'"
        ) from exc
    init_kwargs: dict[str, Any] = {}
    if max_workers is not None and not address:
        init_kwargs["num_cpus"] = max_workers
    return RayTaskRunner(address=address, init_kwargs=init_kwargs or None)

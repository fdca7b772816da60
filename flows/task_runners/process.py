"""``process``: Prefect's process pool on this machine (each worker process loads the models once)."""
from __future__ import annotations

from typing import Any


def build(address: str | None = None, max_workers: int | None = None) -> Any:
    if address:
        raise ValueError("task_runner 'process' runs on this machine and takes no address")
    from prefect.task_runners import ProcessPoolTaskRunner

    return ProcessPoolTaskRunner(max_workers=max_workers)

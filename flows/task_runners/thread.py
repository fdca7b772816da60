"""``thread``: Prefect's thread pool in the flow-run process.

All threads share the process's models (``get_models`` caches one segmenter and one tracker per
process), and a backend object need not be thread-safe (OpenCV's DIS flow instance is not), so
the default is ONE thread: batches then run one after another, exactly like the plain loop.
Use ``process`` or ``dask`` for parallel batches; raise ``max_workers`` here only for backends
known to be thread-safe.
"""
from __future__ import annotations

from typing import Any


def build(address: str | None = None, max_workers: int | None = None) -> Any:
    if address:
        raise ValueError("task_runner 'thread' runs in this process and takes no address")
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers or 1)

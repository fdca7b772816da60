"""Prefect flow ``build-dataset``: source videos → webdataset shards + Parquet manifest.

Thin orchestration over the batch-level API of :mod:`trackgo_data.build` (the library never
imports Prefect):

    plan-batches   discover sources, record the config in the output folder, group the sources
                   into batches (batch_id = fingerprints of the files — size, mtime, sampled
                   blocks: ≤ 32 KiB read per file — + config hash)
    build-batch    one task run per BATCH of videos (not per clip or stage); it gets a BatchSpec
                   (paths) and returns a BatchResult (paths + small records); the segmenter and
                   tracker are loaded once per worker process (``get_models`` cache)
    finalize       merge the batches' completion records into manifest.parquet

Resume: a batch is cached under its batch_id (Prefect ``cache_key_fn``, results stored inside
the output folder, so deleting the folder also forgets the cache); on top of that the library
writes a batch's completion record last, so a batch killed half-way is redone from scratch and
never leaves a partial shard or a duplicated key; a batch lock in the output folder keeps an
orphaned task of a killed run and its rerun from writing the same batch at once. A bad video is
a rejected manifest row, never a failed task; a machine problem (backend cannot load, CUDA
error, out of memory, storage — ``trackgo_data.process.InfrastructureError``) fails the task
with nothing recorded, and it is retried with exponential backoff.

UI: a progress artifact updated as batches finish, a table artifact (counts by reject reason,
clips/s, seconds per stage), a markdown artifact with histograms and one with trajectory
previews. Terminal runs also show a tqdm bar.

Run it: ``prefect deployment run build-dataset/local --param source=… --param output=…`` (after
``make server``), or directly ``python -m flows.build_dataset --source samples --output DIR``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from trackgo_data import build as B
from trackgo_data.config import ConfigError, merge_overrides, nest_settings

from flows import _common
from flows.task_runners import make_task_runner

log = logging.getLogger(__name__)

#: folder (inside the output folder) holding the cached task results of this flow
CACHE_DIR = ".prefect-cache"


def make_build_config(profile: str = "local", num_frames: int | None = None, width: int | None = None,
                      height: int | None = None, shard_maxcount: int | None = None, stride: int | None = None,
                      clips_per_video: int | None = None,
                      settings: dict[str, Any] | None = None) -> B.BuildConfig:
    """The profile's BuildConfig with ``settings`` (dotted keys, any BuildConfig field, e.g.
    ``segmenter.options.deva_weights``) and the flow's clip/shard overrides on top (None keeps the
    profile's)."""
    pairs = (("num_frames", num_frames), ("width", width), ("height", height), ("stride", stride),
             ("max_clips_per_video", clips_per_video))
    clip = {k: v for k, v in pairs if v is not None}
    overrides: dict[str, Any] = {}
    if clip:
        overrides["clip"] = clip
    if shard_maxcount is not None:
        overrides["shards"] = {"maxcount": shard_maxcount}
    return B.make_config(profile, merge_overrides(nest_settings(settings), overrides))


# ------------------------------------------------------------------------------------------ tasks

def _logger() -> Any:
    """The run logger inside a flow/task run (shown in the UI), else this module's logger."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


@task(name="plan-batches", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=lambda task, run, state: _retry_transient(task, run, state))
def plan_batches_task(source: str, output: str, cfg: B.BuildConfig, batch_size: int) -> list[B.BatchSpec]:
    """Sources → batches; also creates the output folder and records the config in it."""
    B.prepare_output(output, cfg)
    specs = B.plan_batches(B.discover_sources(source), cfg, batch_size)
    _logger().info("%d source file(s) in %d batch(es) of <= %d, %d already done",
                   sum(len(s.sources) for s in specs), len(specs), batch_size, len(B.done_batches(output, specs)))
    return specs


def batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key of a batch: its batch_id (sources' fingerprints + config hash) and its clip cap."""
    spec: B.BatchSpec = parameters["spec"]
    limit = parameters.get("limit")
    return f"build-batch-{spec.batch_id}-{'all' if limit is None else int(limit)}"


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the error is deterministic (bad config / bad arguments)."""
    try:
        state.result()
    except (ConfigError, TypeError, ValueError):
        return False
    except Exception:
        return True
    return True


@task(
    name="build-batch",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=batch_cache_key),
    persist_result=True,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    task_run_name="batch-{spec.batch_id}",
    # A Prefect tag concurrency limit on this tag bounds the batches running at once, across flow
    # runs (`prefect concurrency-limit create trackgo-gpu <GPUs>`; without one, no bound).
    tags=["trackgo-gpu"],
)
def build_batch_task(spec: B.BatchSpec, cfg: B.BuildConfig, output: str, limit: Optional[int] = None) -> Any:
    """Process one batch of source videos (idempotent: a completed batch is returned as recorded)."""
    from trackgo_data.build import process_batch

    return process_batch(spec, cfg, Path(output), limit=limit)


@task(name="finalize", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def finalize_task(output: str, batch_ids: list[str]) -> dict[str, Any]:
    """Merge the batches' parts into manifest.parquet; returns the library's summary."""
    return B.finalize(output, batch_ids=batch_ids)


# ------------------------------------------------------------------------------------------- flow

def _run_batches(runner: Any, batch_task: Any, specs: list[B.BatchSpec], cfg: B.BuildConfig, output: str,
                 max_clips: int | None, on_done: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    """Submit the batch tasks to ``runner``; returns (results in plan order, failures).

    Without ``max_clips`` every batch is submitted at once and the runner bounds concurrency.
    With ``max_clips`` the batches run one after another in source order, each capped at what is
    left, so the cap is exact and matches ``trackgo data build --max-clips``.
    """
    results: dict[str, Any] = {}
    failures: list[tuple[str, str]] = []
    with runner:
        if max_clips is None:
            futures = {runner.submit(batch_task, {"spec": s, "cfg": cfg, "output": output, "limit": None}): s
                       for s in specs}
            for fut in as_completed(list(futures)):
                spec = futures[fut]
                try:
                    results[spec.batch_id] = fut.result()
                except Exception as exc:  # reported after the other batches finish
                    failures.append((spec.batch_id, f"{type(exc).__name__}: {exc}"))
                on_done(spec, results.get(spec.batch_id))
        else:
            accepted = 0
            for spec in specs:
                left = max_clips - accepted
                if left <= 0:
                    break
                fut = runner.submit(batch_task, {"spec": spec, "cfg": cfg, "output": output, "limit": left})
                try:
                    res = fut.result()
                    results[spec.batch_id] = res
                    accepted += int(res.counts.get("accepted", 0))
                except Exception as exc:
                    failures.append((spec.batch_id, f"{type(exc).__name__}: {exc}"))
                on_done(spec, results.get(spec.batch_id))
    ordered = [results[s.batch_id] for s in specs if s.batch_id in results]
    return ordered, failures


@flow(name="build-dataset", version="1", validate_parameters=True)
def build_dataset_flow(
    source: str = "samples",
    output: str = "data/sample",
    profile: Literal["local", "paper"] = "local",
    max_clips: Optional[int] = None,
    num_frames: Optional[int] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    shard_maxcount: Optional[int] = None,
    stride: Optional[int] = None,
    clips_per_video: Optional[int] = None,
    batch_size: int = 4,
    task_runner: Literal["thread", "process", "dask", "ray"] = "thread",
    address: Optional[str] = None,
    max_workers: Optional[int] = None,
    previews: int = 4,
    progress_bar: bool = True,
    settings: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Build TrackGo training shards + manifest from source videos.

    Args:
        source: folder, glob, list file (.txt/.lst, one path per line) or "samples" (bundled clips).
        output: output folder (shards/, parts/, manifest.parquet, summary.json, previews/).
        profile: "local" (offline flow segmenter + LK tracker) or "paper" (DEVA + Co-Tracker3).
        max_clips: cap on accepted clips (exact; batches then run in source order).
        num_frames, width, height: clip length and size (None: the profile's).
        shard_maxcount: samples per shard (None: the profile's).
        stride: frames between clip starts (None: the profile's).
        clips_per_video: at most this many candidate clips per source (None: the profile's; 0 = all).
        batch_size: source videos per task run.
        task_runner: "thread" | "process" | "dask" | "ray".
        address: scheduler address for dask/ray (e.g. tcp://host:8786); None starts a local one.
        max_workers: parallel workers for a local runner (None: the runner's default).
        previews: number of trajectory-overlay previews to publish.
        progress_bar: show a terminal progress bar.
        settings: any build setting by dotted key, e.g. {"segmenter.options.deva_weights":
            "/weights/DEVA-propagation.pth", "filters.min_median_motion": 2} (the named parameters
            above win over the same keys here).
    """
    from tqdm.auto import tqdm

    logger = get_run_logger()
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    cfg = make_build_config(profile, num_frames, width, height, shard_maxcount, stride, clips_per_video, settings)
    runner = make_task_runner(task_runner, address=address, max_workers=max_workers)
    out = Path(output).expanduser().resolve()

    specs = plan_batches_task(source, str(out), cfg, batch_size)
    progress_id = create_progress_artifact(
        progress=0.0, key="build-dataset-progress",
        description=f"batches finished of {len(specs)} ({sum(len(s.sources) for s in specs)} videos) → {out}")
    bar = tqdm(total=len(specs), desc="build-dataset", unit="batch", disable=not progress_bar)
    done = {"batches": 0, "accepted": 0, "clips": 0}

    def on_done(spec: B.BatchSpec, res: Any) -> None:
        done["batches"] += 1
        if res is not None:
            done["accepted"] += int(res.counts.get("accepted", 0))
            done["clips"] += len(res.rows)
        update_progress_artifact(progress_id, progress=100.0 * done["batches"] / max(1, len(specs)))
        bar.update(1)
        bar.set_postfix(accepted=done["accepted"], clips=done["clips"])
        logger.info("batch %s done (%d/%d): %d clips, %d accepted so far", spec.batch_id, done["batches"],
                    len(specs), 0 if res is None else len(res.rows), done["accepted"])

    batch_task = build_batch_task.with_options(result_storage=out / CACHE_DIR)
    results, failures = _run_batches(runner, batch_task, specs, cfg, str(out), max_clips, on_done)
    bar.close()
    update_progress_artifact(progress_id, progress=100.0)

    summary = finalize_task(str(out), [r.batch_id for r in results])
    wall = time.perf_counter() - t0
    manifest = out / "manifest.parquet"
    _publish(out, summary, wall, previews)
    summary = {**summary, "wall_seconds": round(wall, 3), "task_runner": task_runner,
               "manifest": str(manifest), "shards_dir": str(out / "shards"),
               "failed_batches": [b for b, _ in failures]}
    logger.info("build-dataset: %s", json.dumps({k: v for k, v in summary.items() if k != "shards"},
                                                 sort_keys=True, default=str))
    if failures:
        raise RuntimeError(f"{len(failures)} batch(es) failed after retries (rerun to resume; completed "
                           f"batches are kept): " + "; ".join(f"{b}: {e}" for b, e in failures[:5]))
    return summary


def _publish(out: Path, summary: dict[str, Any], wall: float, previews: int) -> None:
    """Table, histogram and preview artifacts for the finished run."""
    from trackgo_data.shards import read_manifest

    rows = read_manifest(out / "manifest.parquet")
    create_table_artifact(table=_common.summary_table(summary, wall), key="build-dataset-summary",
                          description=f"build-dataset summary for {out}")
    create_markdown_artifact(markdown=_common.histograms_markdown(rows), key="build-dataset-histograms",
                             description="motion, points and components per accepted clip")
    if previews > 0:
        images = _common.preview_images(out, rows, limit=previews)
        create_markdown_artifact(markdown=_common.previews_markdown(images), key="build-dataset-previews",
                                 description="first frames with their tracks drawn")


if __name__ not in ("flows.build_dataset", "__main__"):
    # A Prefect runner or worker loads this file by its path (prefect.yaml's entrypoint), as a
    # module named after the file ("build_dataset"). Tasks defined there pickle by reference to
    # that name, which no Dask scheduler or worker can import ("Error during deserialization of
    # the task graph"). Serve the package module's flow instead: its tasks pickle as
    # flows.build_dataset.*, importable wherever the package is installed (the worker image
    # installs /opt/trackgo).
    from flows.build_dataset import build_dataset_flow  # noqa: E402,F811


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.build_dataset --source … --output …``: run the flow once, print the summary."""
    p = argparse.ArgumentParser(description="Run the build-dataset flow once (no deployment needed).")
    p.add_argument("--source", default="samples")
    p.add_argument("--output", default="data/sample")
    p.add_argument("--profile", default="local", choices=sorted(B.PROFILES))
    p.add_argument("--max-clips", type=int)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--shard-maxcount", type=int)
    p.add_argument("--stride", type=int)
    p.add_argument("--clips-per-video", type=int)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--task-runner", default="thread", choices=["thread", "process", "dask", "ray"])
    p.add_argument("--address")
    p.add_argument("--max-workers", type=int)
    p.add_argument("--previews", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    summary = build_dataset_flow(
        source=a.source, output=a.output, profile=a.profile, max_clips=a.max_clips, num_frames=a.num_frames,
        width=a.width, height=a.height, shard_maxcount=a.shard_maxcount,
        stride=a.stride, clips_per_video=a.clips_per_video, batch_size=a.batch_size,
        task_runner=a.task_runner, address=a.address, max_workers=a.max_workers, previews=a.previews,
        progress_bar=not a.no_progress)
    json.dump({k: v for k, v in summary.items() if k != "shards"}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prefect flow ``build-dataset``: source videos → webdataset shards + Parquet manifest.

Thin orchestration over the build API of :mod:`trackgo_data.build` (the library never imports
Prefect):

    plan           discover the sources, record the config in the output folder, compare each
                   source's fingerprint (size, mtime, sampled blocks: ≤ 32 KiB read per file) with
                   the folder's per-source records: only new or changed sources are grouped into
                   batches; removed ones are counted
    build-batch    one task run per BATCH of videos (not per clip or stage); it gets a BatchSpec
                   (paths) and returns a BatchResult (paths + small records); the segmenter and
                   tracker are loaded once per worker process, before any clip
    finalize       the current sources' records → manifest.parquet (removed sources leave it)

Resume: the source is the unit of record — a batch's completion record, written last, lists the
sources it did, so a rerun plans only what is missing, a batch killed half-way is redone from
scratch and never leaves a partial shard or a duplicated key, and a batch lock keeps an orphaned
task of a killed run and its rerun from writing the same batch at once. A bad video is a rejected
manifest row, never a failed task; a machine problem (a backend that cannot load, storage errors,
CUDA, out of memory, a backend failing on every clip: ``trackgo_data.faults``) fails the task with
nothing recorded, and it is retried with exponential backoff.

Settings (flow parameters): ``retries`` and ``retry_delay_seconds`` (backoff base: delays of
d, 2d, 4d… with ±50 % jitter) of each batch; ``concurrency_tag`` puts that tag on every batch task
run, so a Prefect tag concurrency limit (``prefect concurrency-limit create trackgo-gpu 2``)
bounds the batches running at once across all flow runs — the GPU limit; ``max_workers`` sizes
a local task runner; ``max_in_flight`` bounds the batches submitted and not yet finished (the
flow's memory stays flat however many batches a run has).

UI: a progress artifact (updated every 2 s at most, off the batches' path), a table artifact (counts by reject
reason, clips/s, seconds per stage), a markdown artifact with histograms and one with trajectory
previews — four artifacts per run whatever its size. Terminal runs also show a tqdm bar.

Run it: ``prefect deployment run build-dataset/local --param source=… --param output=…`` (after
``make server``), or directly ``python -m flows.build_dataset --source samples --output DIR``.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
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
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from trackgo_data import build as B
from trackgo_data.config import ConfigError, merge_overrides, nest_settings

from flows import artifacts
from flows.task_runners import make_task_runner

log = logging.getLogger(__name__)


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


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the error is deterministic (bad config / bad arguments)."""
    try:
        state.result()
    except (ConfigError, TypeError, ValueError):
        return False
    except Exception:
        return True
    return True


@task(name="plan", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def plan_task(source: str, output: str, cfg: B.BuildConfig, batch_size: int) -> B.BuildPlan:
    """Sources → what the output folder still needs; also creates it and records the config."""
    B.prepare_output(output, cfg)
    plan = B.plan_build(source, output, cfg, batch_size)
    _logger().info("%d source(s): %d done, %d to run in %d batch(es) of <= %d, %d removed, %d missing",
                   len(plan.sources), len(plan.done), plan.sources_to_run, len(plan.batches), batch_size,
                   len(plan.removed), len(plan.missing))
    return plan


@task(name="build-batch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, task_run_name="batch-{spec.batch_id}")
def build_batch_task(spec: B.BatchSpec, cfg: B.BuildConfig, output: str, limit: Optional[int] = None) -> Any:
    """Process one batch of source videos (idempotent: a completed batch is returned as recorded)."""
    from trackgo_data.build import process_batch

    return process_batch(spec, cfg, Path(output), limit=limit)


@task(name="finalize", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), cache_policy=NO_CACHE)
def finalize_task(output: str, plan: B.BuildPlan, chosen: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The plan's current records (or a capped run's ``chosen`` ones) → manifest.parquet; the summary."""
    return B.finalize_plan(output, plan, chosen)


def batch_task_with(retries: int, retry_delay_seconds: float, concurrency_tag: str | None) -> Any:
    """build-batch with the run's retry and concurrency settings."""
    return build_batch_task.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_seconds),
        tags={concurrency_tag} if concurrency_tag else None)


# ------------------------------------------------------------------------------------------- flow

class Progress:
    """What the UI and the terminal show while batches finish: a progress artifact, a tqdm bar, a
    log line per 5 % and per failure; the run's counts. The artifact is updated by a thread of its
    own, at most every ``every`` seconds, so a slow API never holds up the batches."""

    def __init__(self, batches: int, sources: int, out: Path, bar: bool, every: float = 2.0):
        from tqdm.auto import tqdm

        self.total = batches
        self.counts = {"batches": 0, "accepted": 0, "clips": 0, "sources_processed": 0, "batches_run": 0,
                       "sources_removed": 0}
        self.id = create_progress_artifact(
            progress=0.0, key="build-dataset-progress",
            description=f"batches finished of {batches} ({sources} videos to process) → {out}")
        self.bar = tqdm(total=batches, desc="build-dataset", unit="batch", disable=not bar)
        self._logged = 0
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._update, args=(every,), name="progress-artifact", daemon=True)
        self._pump.start()

    def _update(self, every: float) -> None:
        shown = 0
        while not self._stop.wait(every):
            if self.counts["batches"] != shown:
                shown = self.counts["batches"]
                try:
                    update_progress_artifact(self.id, progress=100.0 * shown / max(1, self.total))
                except Exception as exc:  # noqa: BLE001 - the progress display must not fail a run
                    log.warning("progress artifact not updated: %s", exc)

    def done(self, spec: B.BatchSpec, res: Any, error: str | None = None) -> None:
        c = self.counts
        c["batches"] += 1
        if res is not None:
            c["accepted"] += int(res.counts.get("accepted", 0))
            c["clips"] += len(res.rows)
            c["sources_removed"] += len(res.removed)
            if not res.reused:
                c["batches_run"] += 1
                c["sources_processed"] += len(res.records)
        self.bar.update(1)
        self.bar.set_postfix(accepted=c["accepted"], clips=c["clips"], refresh=False)
        if error is not None:
            _logger().warning("batch %s failed after its retries: %s", spec.batch_id, error)
        elif c["batches"] - self._logged >= max(1, self.total // 20) or c["batches"] == self.total:
            self._logged = c["batches"]
            _logger().info("%d/%d batches done: %d clips, %d accepted so far", c["batches"], self.total,
                           c["clips"], c["accepted"])

    def close(self) -> None:
        self._stop.set()
        self._pump.join()
        self.bar.close()
        update_progress_artifact(self.id, progress=100.0)


def _run_all(runner: Any, batch_task: Any, specs: list[B.BatchSpec], cfg: B.BuildConfig, output: str,
             max_in_flight: int, progress: Progress) -> list[tuple[str, str]]:
    """Every batch through ``runner``, at most ``max_in_flight`` submitted and unfinished at once
    (a finished future is dropped: the flow holds no result); returns the failures. Each future
    reports its own completion (one callback), so a completion costs the same with 10 or 10,000
    batches in flight."""
    failures: list[tuple[str, str]] = []
    finished: queue.SimpleQueue = queue.SimpleQueue()
    pending: dict[Any, B.BatchSpec] = {}
    specs_left = iter(specs)
    while True:
        while len(pending) < max_in_flight and (spec := next(specs_left, None)) is not None:
            fut = runner.submit(batch_task, {"spec": spec, "cfg": cfg, "output": output, "limit": None})
            pending[fut] = spec
            fut.add_done_callback(finished.put)
        if not pending:
            return failures
        fut = finished.get()
        spec = pending.pop(fut)
        try:
            progress.done(spec, fut.result())
        except Exception as exc:  # reported after the other batches finish
            failures.append((spec.batch_id, f"{type(exc).__name__}: {exc}"))
            progress.done(spec, None, failures[-1][1])


def _run_capped(runner: Any, batch_task: Any, plan: B.BuildPlan, cfg: B.BuildConfig, output: str,
                max_clips: int, progress: Progress) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Batches one after another in source order until ``max_clips`` are accepted (exact, as
    ``trackgo data build --max-clips``: :func:`trackgo_data.build.run_capped`)."""
    failures: list[tuple[str, str]] = []

    def run(spec: B.BatchSpec, left: int) -> Any:
        try:
            res = runner.submit(batch_task, {"spec": spec, "cfg": cfg, "output": output, "limit": left}).result()
        except Exception as exc:
            failures.append((spec.batch_id, f"{type(exc).__name__}: {exc}"))
            progress.done(spec, None, failures[-1][1])
            return None
        progress.done(spec, res)
        return res

    return B.run_capped(plan, max_clips, run), failures


@flow(name="build-dataset", version="2", validate_parameters=True)
def build_dataset_flow(
    source: str = "samples",
    output: str = "data/sample",
    profile: Literal["local", "paper", "wan"] = "local",
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
    retries: int = 3,
    retry_delay_seconds: float = 5.0,
    concurrency_tag: Optional[str] = "trackgo-gpu",
    max_in_flight: int = 256,
    previews: int = 4,
    progress_bar: bool = True,
    settings: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Build TrackGo training shards + manifest from source videos (only what the output folder
    does not hold yet: new and changed sources).

    Args:
        source: folder, glob, list file (.txt/.lst, one path per line) or "samples" (bundled clips).
        output: output folder (shards/, parts/, manifest.parquet, summary.json, previews/).
        profile: "local" (offline flow segmenter + LK tracker), "paper" (DEVA + Co-Tracker3) or
            "wan" (the paper's backends on Wan's clips: 81 frames at 16 fps, 832×480).
        max_clips: cap on accepted clips (exact; batches then run in source order).
        num_frames, width, height: clip length and size (None: the profile's).
        shard_maxcount: samples per shard (None: the profile's).
        stride: frames between clip starts (None: the profile's).
        clips_per_video: at most this many candidate clips per source (None: the profile's; 0 = all).
        batch_size: source videos per task run.
        task_runner: "thread" | "process" | "dask" | "ray".
        address: scheduler address for dask/ray (e.g. tcp://host:8786); None starts a local one.
        max_workers: parallel workers for a local runner (None: the runner's default).
        retries: attempts after the first for a batch that fails on a machine problem.
        retry_delay_seconds: backoff base; the k-th retry waits about this × 2^k (±50 % jitter).
        concurrency_tag: tag of every batch task run; a Prefect tag concurrency limit on it
            (`prefect concurrency-limit create <tag> N`) bounds running batches over all runs.
        max_in_flight: batches submitted and not yet finished, at most (keeps memory flat).
        previews: number of trajectory-overlay previews to publish.
        progress_bar: show a terminal progress bar.
        settings: any build setting by dotted key, e.g. {"segmenter.options.deva_weights":
            "/weights/DEVA-propagation.pth", "filters.min_median_motion": 2} (the named parameters
            above win over the same keys here).
    """
    t0 = time.perf_counter()
    for name, value, low in (("batch_size", batch_size, 1), ("max_clips", max_clips, 1), ("retries", retries, 0),
                             ("max_in_flight", max_in_flight, 1)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    cfg = make_build_config(profile, num_frames, width, height, shard_maxcount, stride, clips_per_video, settings)
    runner = make_task_runner(task_runner, address=address, max_workers=max_workers)
    out = Path(output).expanduser().resolve()
    plan = plan_task(source, str(out), cfg, batch_size)
    progress = Progress(len(plan.batches), plan.sources_to_run, out, progress_bar)
    batch_task = batch_task_with(retries, retry_delay_seconds, concurrency_tag)
    chosen = None
    with runner:
        if max_clips is None:
            failures = _run_all(runner, batch_task, plan.batches, cfg, str(out), max_in_flight, progress)
        else:
            chosen, failures = _run_capped(runner, batch_task, plan, cfg, str(out), max_clips, progress)
    progress.close()
    summary = finalize_task(str(out), plan, chosen)
    return _finish(out, plan, summary, progress, failures, time.perf_counter() - t0, task_runner, previews)


def _finish(out: Path, plan: B.BuildPlan, summary: dict[str, Any], progress: Progress,
            failures: list[tuple[str, str]], wall: float, task_runner: str, previews: int) -> dict[str, Any]:
    """Artifacts, the run's summary (logged and returned); raises when batches failed."""
    c = progress.counts
    summary = {**summary, "wall_seconds": round(wall, 3), "task_runner": task_runner,
               "manifest": str(out / "manifest.parquet"), "shards_dir": str(out / "shards"),
               "failed_batches": [b for b, _ in failures], "sources_processed": c["sources_processed"],
               "batches_run": c["batches_run"], "sources_removed": len(plan.removed) + c["sources_removed"],
               "sources_missing": len(plan.missing)}
    _publish(out, summary, wall, previews)
    _logger().info("build-dataset: %s", json.dumps({k: v for k, v in summary.items() if k != "shards"},
                                                   sort_keys=True, default=str))
    if failures:
        raise RuntimeError(f"{len(failures)} batch(es) failed after retries (rerun to resume; completed "
                           f"batches are kept): " + "; ".join(f"{b}: {e}" for b, e in failures[:5]))
    return summary


def _publish(out: Path, summary: dict[str, Any], wall: float, previews: int) -> None:
    """Table, histogram and preview artifacts for the finished run."""
    from trackgo_data.shards import read_manifest

    rows = read_manifest(out / "manifest.parquet")
    create_table_artifact(table=artifacts.summary_table(summary, wall), key="build-dataset-summary",
                          description=f"build-dataset summary for {out}")
    create_markdown_artifact(markdown=artifacts.histograms_markdown(rows), key="build-dataset-histograms",
                             description="motion, points and components per accepted clip")
    if previews > 0:
        images = artifacts.preview_images(out, rows, limit=previews)
        create_markdown_artifact(markdown=artifacts.previews_markdown(images), key="build-dataset-previews",
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
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--retry-delay-seconds", type=float, default=5.0)
    p.add_argument("--concurrency-tag", default="trackgo-gpu", help="tag on every batch task run (\"\" for none)")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument("--previews", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    summary = build_dataset_flow(
        source=a.source, output=a.output, profile=a.profile, max_clips=a.max_clips, num_frames=a.num_frames,
        width=a.width, height=a.height, shard_maxcount=a.shard_maxcount,
        stride=a.stride, clips_per_video=a.clips_per_video, batch_size=a.batch_size,
        task_runner=a.task_runner, address=a.address, max_workers=a.max_workers, retries=a.retries,
        retry_delay_seconds=a.retry_delay_seconds, concurrency_tag=a.concurrency_tag, max_in_flight=a.max_in_flight,
        previews=a.previews, progress_bar=not a.no_progress)
    json.dump({k: v for k, v in summary.items() if k != "shards"}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

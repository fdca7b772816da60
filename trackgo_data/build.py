"""Building a dataset in-process: sources → plan → batches → shards + per-batch parts → manifest.

The build API (what ``trackgo data build`` runs and what an orchestrator calls; the calls
exchange paths and small records only):

    plan_build(source, out_dir, cfg, batch_size) -> BuildPlan   what the folder still needs
    plan_summary(source, out_dir, cfg, batch_size) -> dict      the same, counted (``trackgo data plan``)
    get_models(cfg) -> (segmenter, tracker)                     loaded before any clip, once per process
    process_batch(spec, cfg, out_dir, limit) -> BatchResult     idempotent
    run_capped(plan, cap, run_batch) -> {source: SourceRecord}  a clip cap, exact, in source order
    finalize_plan(out_dir, plan) -> summary                     the plan's current records → manifest
    compact(out_dir) -> dict                                    drop removed samples from shards

Planning lives in :mod:`trackgo_data.plan`, the folder's per-source records in
:mod:`trackgo_data.records`, batches in :mod:`trackgo_data.process`, errors of the machine
versus the data in :mod:`trackgo_data.faults`; their public names are re-exported here.

Output folder::

    build_config.json           the BuildConfig (and its hash) the folder was made with
    shards/<batch_id>-%06d.tar  webdataset shards (sample format v1)
    parts/<batch_id>.parquet    completion record of a batch: its manifest rows, per-source records
    manifest.parquet            every candidate clip of the current sources, accepted and rejected
    summary.json, README.md     counts and the dataset card

A batch is complete when its part file exists; the part is written atomically *after* its
shards, so an interrupted batch is simply redone (its stale shards are removed first). The
manifest holds exactly the current sources' rows; shards may still hold samples of removed
sources until :func:`compact`, and the loader reads only what the manifest lists.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from .backends import get_models
from .buildconfig import PROFILES, BackendConfig, BuildConfig, make_config
from .compact import compact
from .config import ConfigError, config_hash
from .faults import InfrastructureError, SourceGone, is_infrastructure_error
from .plan import (BatchSpec, BuildPlan, discover_sources, file_fingerprint, fingerprints,
                   make_batches, plan_batches, plan_build, plan_summary, probe_indices, video_ids_for)
from .process import (PROCESSING_ERROR, BatchResult, clip_seed, iter_video, process_batch,
                      process_video)
from .records import (CONFIG_FILE, SourceRecord, current_record, prepare_output, read_records,
                      reusable_record)
from .sample import sanitize_video_id
from .timing import STAGES, StageClock

__all__ = [
    "PROCESSING_ERROR", "PROFILES", "STAGES", "CONFIG_FILE", "BackendConfig", "BatchResult", "BatchSpec",
    "BuildConfig", "BuildPlan", "ConfigError", "InfrastructureError", "SourceGone", "SourceRecord", "StageClock",
    "build_dataset", "clip_seed", "compact", "config_hash", "current_record", "discover_sources", "file_fingerprint",
    "finalize", "finalize_plan", "fingerprints", "get_models", "is_infrastructure_error", "iter_video",
    "make_batches", "make_config", "plan_batches", "plan_build", "plan_summary", "prepare_output", "probe_indices",
    "process_batch", "process_video", "read_records", "reusable_record", "run_capped", "run_counts",
    "sanitize_video_id", "selection_of", "video_ids_for",
]

log = logging.getLogger(__name__)


def run_capped(plan: BuildPlan, cap: int, run_batch: Callable[[BatchSpec, int], BatchResult | None]
               ) -> dict[str, SourceRecord]:
    """Take the plan's sources in order until ``cap`` clips are accepted; returns the record
    chosen for each source taken.

    A source keeps a record that fits what is left (processed under exactly that cap, or complete
    with no more accepted clips than that: :func:`~trackgo_data.records.reusable_record`); runs of
    consecutive sources without one are processed as batches of ≤ ``plan.batch_size`` through
    ``run_batch(spec, left)``, each capped at what is left when it starts. So the cap is exact,
    and a rerun with the same cap processes nothing. ``run_batch`` returns None when the batch
    failed: the walk stops there (the sources from it on get no rows in this run).
    """
    chosen: dict[str, SourceRecord] = {}
    left, i, n = cap, 0, len(plan.sources)
    while i < n and left > 0:
        src, fp = plan.sources[i], plan.fingerprints[i]
        rec = reusable_record(plan.records.get(src, []), fp, left)
        if rec is not None:
            chosen[src] = rec
            left -= rec.accepted
            i += 1
            continue
        group = [i]
        while (len(group) < plan.batch_size and group[-1] + 1 < n
               and reusable_record(plan.records.get(plan.sources[group[-1] + 1], []),
                                   plan.fingerprints[group[-1] + 1], left) is None):
            group.append(group[-1] + 1)
        (spec,) = make_batches([plan.sources[j] for j in group], [plan.video_ids[j] for j in group],
                               [plan.fingerprints[j] for j in group], plan.config_hash, len(group))
        result = run_batch(spec, left)
        if result is None:
            break
        for rec in result.records:
            chosen[rec.source] = rec
            left -= rec.accepted
        i = group[-1] + 1
    return chosen


def selection_of(plan: BuildPlan, out_dir: str | Path) -> dict[str, str]:
    """{source: batch_id} of the plan's sources that have a current (complete) record in
    ``out_dir`` now — what the manifest holds after a run of the plan."""
    records = read_records(out_dir, plan.config_hash, plan.fingerprint_of)
    chosen = {}
    for src, fp in zip(plan.sources, plan.fingerprints):
        rec = current_record(records.get(src, []), fp)
        if rec is not None:
            chosen[src] = rec.batch_id
    return chosen


def finalize(out_dir: str | Path, batch_ids: list[str] | None = None,
             selection: dict[str, str] | None = None) -> dict:
    """Merge batch parts into ``manifest.parquet`` atomically; returns the summary (see
    :func:`trackgo_data.shards.merge_parts`): the rows ``selection`` ({source: batch_id}) picks,
    else every row of the parts ``batch_ids`` (all parts when None)."""
    from .shards import merge_parts

    return merge_parts(out_dir, batch_ids, selection)


def finalize_plan(out_dir: str | Path, plan: BuildPlan, chosen: dict[str, SourceRecord] | None = None) -> dict:
    """The manifest of a build of ``plan``: each source's current record (or the records a capped
    run ``chosen``); removed sources, earlier versions and unfinished batches stay out."""
    selection = ({s: r.batch_id for s, r in chosen.items()} if chosen is not None
                 else selection_of(plan, out_dir))
    return finalize(out_dir, selection=selection)


def build_dataset(source: str | Path | list, out_dir: str | Path, cfg: BuildConfig | None = None,
                  max_clips: int | None = None, batch_size: int = 4, progress: bool = True) -> dict:
    """Plan, run the batches this folder still needs in this process, then finalize; returns the
    summary with ``sources_processed``, ``batches_run``, ``sources_removed`` and
    ``sources_missing`` of this run.

    ``max_clips`` caps the number of accepted clips exactly (:func:`run_capped`): sources are
    taken in order until the cap, later ones get no rows. Rerunning on the same folder processes
    only new or changed sources, so nothing is added twice.
    """
    from tqdm.auto import tqdm

    cfg = cfg or make_config("local")
    out = prepare_output(out_dir, cfg)
    plan = plan_build(source, out, cfg, batch_size)
    results: list[BatchResult] = []

    def run(spec: BatchSpec, limit: int | None) -> BatchResult:
        res = process_batch(spec, cfg, out, limit=limit)
        results.append(res)
        bar.update(1)
        return res

    bar = tqdm(total=len(plan.batches) if max_clips is None else None, desc="batches", unit="batch",
               disable=not progress)
    with bar:
        if max_clips is None:
            for spec in plan.batches:
                run(spec, None)
            summary = finalize_plan(out, plan)
        else:
            summary = finalize_plan(out, plan, run_capped(plan, max_clips, run))
    return {**summary, **run_counts(plan, results)}


def run_counts(plan: BuildPlan, results: list[BatchResult]) -> dict[str, int]:
    """What a run did: sources and batches processed (not reused), sources removed and missing."""
    fresh = [r for r in results if not r.reused]
    return {"sources_processed": sum(len(r.records) for r in fresh), "batches_run": len(fresh),
            "sources_removed": len(plan.removed) + sum(len(r.removed) for r in results),
            "sources_missing": len(plan.missing)}

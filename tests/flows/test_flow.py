"""The build-dataset flow on a real (temporary) Prefect server: thread, Dask and kill-9 resume."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.build_dataset import build_dataset_flow
from trackgo_data.shards import read_manifest

from .conftest import cli_args, flow_kwargs

REPO = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> list[dict]:
    return read_manifest(out / "manifest.parquet")


def _accepted(out: Path) -> list[str]:
    return sorted(r["key"] for r in _rows(out) if r["status"] == "accepted")


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").iterdir())}


def _task_runs(flow_run_id, expect: int = 0, wait: float = 60.0) -> list:
    """The flow run's task runs as the server has them; task runs reach it as events, a little
    after the flow run ends: wait up to ``wait`` s for ``expect`` of them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if len(runs) >= expect or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


@pytest.fixture(scope="module")
def thread_run(tmp_path_factory, flow_sources, prefect_server):
    out = tmp_path_factory.mktemp("thread")
    state = build_dataset_flow(**flow_kwargs(flow_sources, out), return_state=True)
    return out, state


def test_flow_equals_plain_loop(thread_run, reference_build):
    out, state = thread_run
    assert state.is_completed(), state.message
    summary = state.result()
    ref_out, ref = reference_build
    rows = _rows(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "duplicated key"
    assert sorted(keys) == sorted(r["key"] for r in _rows(ref_out))
    assert _accepted(out) == _accepted(ref_out) and len(_accepted(out)) >= 2
    assert _digests(out) == _digests(ref_out)  # same shards, byte for byte
    for k in ("clips", "accepted", "rejected", "rejected_by_reason"):
        assert summary[k] == ref[k], k
    # the zero-byte file is a rejected row, not a failed flow
    broken = [r for r in rows if r["source"].endswith("broken.mp4")]
    assert [(r["status"], r["reason"]) for r in broken] == [("rejected", "empty_file")]
    assert summary["failed_batches"] == []
    # one task run per batch (3 sources, batch_size 1), not per clip or stage
    names = sorted(t.task_key.split("-")[0] for t in _task_runs(state.state_details.flow_run_id, 5))
    assert [n for n in names if n.startswith("build_batch")] == ["build_batch_task"] * 3


def test_artifacts(thread_run):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    out, state = thread_run
    summary = state.result()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_type: dict[str, list] = {}
    for a in arts:
        by_type.setdefault(a.type, []).append(a)
    assert [float(a.data) for a in by_type["progress"]] == [100.0]
    (table,) = by_type["table"]
    items = {row["item"]: row["value"] for row in __import__("json").loads(table.data)}
    assert items["accepted"] == summary["accepted"] and items["rejected: empty_file"] == 1
    md = {a.key: a.data for a in by_type["markdown"]}
    assert md["build-dataset-histograms"].count("data:image/png;base64,") == 3
    assert f"(n={summary['accepted']})" in md["build-dataset-histograms"]
    assert md["build-dataset-previews"].count("data:image/png;base64,") == 2
    assert len(list((out / "previews").glob("*.png"))) == 2


def test_rerun_runs_no_batch(thread_run, flow_sources):
    """Every source is recorded: the rerun plans nothing, submits no batch task, rewrites nothing."""
    out, first = thread_run
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet")}
    digests = _digests(out)
    state = build_dataset_flow(**flow_kwargs(flow_sources, out), return_state=True)
    assert state.is_completed()
    names = [t.task_key for t in _task_runs(state.state_details.flow_run_id, 2)]
    assert not [n for n in names if n.startswith("build_batch")] and len(names) == 2   # plan, finalize
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing rewritten
    assert _digests(out) == digests
    summary = state.result()
    assert summary["accepted"] == first.result()["accepted"] and summary["sources_processed"] == 0


def _batch_runs(state, expect: int = 0) -> list:
    """The run's build-batch task runs (``expect`` of them + plan and finalize awaited)."""
    runs = _task_runs(state.state_details.flow_run_id, expect + 2)
    return [t for t in runs if t.task_key.startswith("build_batch")]


def test_added_and_removed_sources_through_the_flow(thread_run, flow_sources, sample_videos, tmp_path):
    """A built folder; one more source → one batch task run processing it alone; one source
    fewer → no batch task run, its rows leave the manifest, no shard rewritten."""
    out0, _ = thread_run
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    listing = tmp_path / "videos.txt"
    sources = flow_sources.read_text().split()
    listing.write_text("\n".join([str(sample_videos["bikes"]), *sources]) + "\n")
    state = build_dataset_flow(**flow_kwargs(listing, out, previews=0), return_state=True)
    assert state.is_completed(), state.message
    (run,) = _batch_runs(state, 1)
    summary = state.result()
    assert (summary["sources_processed"], summary["batches_run"], summary["sources"]) == (1, 1, 4)
    # sources are recorded by their real path (a link to a video and the video are one source)
    assert {r["source"] for r in _rows(out)} == {os.path.realpath(s) for s in [str(sample_videos["bikes"]), *sources]}
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}

    listing.write_text("\n".join(s for s in [str(sample_videos["bikes"]), *sources] if "bigbuckbunny" not in s))
    state = build_dataset_flow(**flow_kwargs(listing, out, previews=0), return_state=True)
    assert state.is_completed() and _batch_runs(state) == []
    summary = state.result()
    assert (summary["sources_processed"], summary["sources_removed"], summary["sources"]) == (0, 1, 3)
    assert not [r for r in _rows(out) if "bigbuckbunny" in r["source"]]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == shards


def test_artifacts_stay_four_however_many_batches(tmp_path):
    """30 batches (zero-byte sources: rejected at once) → still the four artifacts of a run, the
    progress one at 100 %."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"v{i:02d}.mp4").write_bytes(b"")
    state = build_dataset_flow(**flow_kwargs(src, tmp_path / "out", previews=1, max_in_flight=4), return_state=True)
    assert state.is_completed(), state.message
    assert len(_batch_runs(state, 30)) == 30 and state.result()["rejected_by_reason"] == {"empty_file": 30}
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert sorted(a.type for a in arts) == ["markdown", "markdown", "progress", "table"]
    assert [float(a.data) for a in arts if a.type == "progress"] == [100.0]


def test_dask_local_cluster_two_workers(tmp_path, flow_sources, thread_run):
    from distributed import Client

    from flows.task_runners.dask import cpu_count, local_cluster

    out = tmp_path / "dask"
    with local_cluster(2) as cluster:
        state = build_dataset_flow(**flow_kwargs(flow_sources, out, task_runner="dask",
                                                 address=cluster.scheduler_address), return_state=True)
        with Client(cluster) as client:
            def loaded() -> tuple[int, int]:
                import os as _os
                import sys as _sys

                backends = _sys.modules.get("trackgo_data.backends")
                return _os.getpid(), len(backends._MODELS) if backends else 0

            per_worker = client.run(loaded)

            def settings() -> tuple:
                import os as _os

                import cv2
                import torch

                from trackgo_data import video

                import dask

                return (_os.environ.get("MALLOC_TRIM_THRESHOLD_"), _os.environ.get("OMP_NUM_THREADS"),
                        cv2.getNumThreads(), torch.get_num_threads(), video.get_decode_threads(),
                        dask.config.get("distributed.worker.profile.enabled"))

            per_worker_settings = set(client.run(settings).values())
    # glibc's default malloc tuning, each worker pinned to its half of the cores, no task profiler
    share = max(1, cpu_count() // 2)
    assert per_worker_settings == {(None, str(share), share, share, share, False)}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ or os.environ["MALLOC_TRIM_THRESHOLD_"] != "65536"
    assert state.is_completed(), state.message
    ref_out, _ = thread_run
    assert _accepted(out) == _accepted(ref_out)
    assert _digests(out) == _digests(ref_out)
    # batches ran inside the worker processes (not the flow's), each loading the models at most once
    pids = {pid for pid, _ in per_worker.values()}
    assert os.getpid() not in pids and len(pids) == 2
    assert sum(n for _, n in per_worker.values()) >= 1 and all(n <= 1 for _, n in per_worker.values())


def test_kill_9_then_resume(tmp_path, flow_sources, thread_run, prefect_server):
    out = tmp_path / "resume"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "flows.build_dataset", *cli_args(flow_sources, out)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not list((out / "parts").glob("*.parquet")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no batch finished in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_at_kill = len(list((out / "parts").glob("*.parquet")))
    assert 1 <= done_at_kill < 3, "the run must be interrupted mid-way"
    assert not (out / "manifest.parquet").exists()

    state = build_dataset_flow(**flow_kwargs(flow_sources, out), return_state=True)
    assert state.is_completed(), state.message
    ref_out, _ = thread_run
    keys = [r["key"] for r in _rows(out)]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(r["key"] for r in _rows(ref_out))
    assert _accepted(out) == _accepted(ref_out)
    assert _digests(out) == _digests(ref_out)  # no partial or stale shard left behind
    assert not [p for p in (out / "shards").iterdir() if not p.name.endswith(".tar")]


def test_failing_batch_is_retried_then_reported(tmp_path, flow_sources, thread_run, monkeypatch):
    """A transient error is retried; a batch that keeps failing fails the run only after the other
    batches finished and the manifest was written, and a rerun completes the missing batch."""
    import trackgo_data.build as tb

    real = tb.process_batch
    calls: dict[str, int] = {}

    def flaky(spec, cfg, out, limit=None):
        calls[spec.sources[0]] = calls.get(spec.sources[0], 0) + 1
        if "carphone" in spec.sources[0]:
            raise OSError("storage hiccup")  # always fails
        if "bigbuckbunny" in spec.sources[0] and calls[spec.sources[0]] == 1:
            raise OSError("first attempt fails")  # transient: the retry succeeds
        return real(spec, cfg, out, limit=limit)

    monkeypatch.setattr(tb, "process_batch", flaky)
    out = tmp_path / "flaky"
    state = build_dataset_flow(**flow_kwargs(flow_sources, out, previews=0, retries=2, retry_delay_seconds=0),
                               return_state=True)
    assert state.is_failed() and "rerun to resume" in state.message
    carphone = next(k for k in calls if "carphone" in k)
    bunny = next(k for k in calls if "bigbuckbunny" in k)
    assert calls[carphone] == 3 and calls[bunny] == 2  # 1 + 2 retries; 1 + 1 retry
    rows = _rows(out)  # finished batches are merged although the run failed
    assert {Path(r["source"]).name for r in rows} == {"broken.mp4", "bigbuckbunny.mp4"}

    monkeypatch.setattr(tb, "process_batch", real)
    state = build_dataset_flow(**flow_kwargs(flow_sources, out, previews=0), return_state=True)
    assert state.is_completed()
    ref_out, _ = thread_run
    assert _accepted(out) == _accepted(ref_out) and _digests(out) == _digests(ref_out)


def test_max_clips_is_exact_and_matches_library(tmp_path, flow_sources, build_cfg):
    from trackgo_data.build import build_dataset

    ref = build_dataset(str(flow_sources), tmp_path / "lib", build_cfg, max_clips=1, batch_size=1, progress=False)
    state = build_dataset_flow(**flow_kwargs(flow_sources, tmp_path / "flow", max_clips=1, previews=0),
                               return_state=True)
    assert state.is_completed()
    assert state.result()["accepted"] == ref["accepted"] == 1
    assert _accepted(tmp_path / "flow") == _accepted(tmp_path / "lib")
    assert sorted(r["key"] for r in _rows(tmp_path / "flow")) == sorted(r["key"] for r in _rows(tmp_path / "lib"))

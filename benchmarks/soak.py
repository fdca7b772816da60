"""Soak test of ``build-dataset/cluster`` with dying machines: kill -9 a Dask worker mid-run, later
kill -9 the flow run's process, then run the deployment again.

Set-up, all on this machine:

* a Prefect API (temporary local server) and the deployment ``build-dataset/cluster`` served by
  a Prefect runner process, with the parameters of prefect.yaml's cluster deployment, except
  ``profile=local`` (no GPU here), the scheduler address below and small clips; the runner
  starts each flow run as its own process, as a work-pool worker would;
* an external Dask scheduler and 2 ``dask worker --nthreads 1 --no-nanny`` processes (fixed
  size, like the pods of infra/dask), library threads 1 each;
* ``--videos`` sources (hard links to three small transcodes of the bundled sample videos),
  ``--clips-per-video`` windows each.

Timeline: run 1 starts; after ``--kill-worker-at`` of the batches are recorded, one worker is
killed with SIGKILL (its batch moves to the other worker); after ``--kill-flow-at``, the flow
run's process is killed with SIGKILL (the orphaned batches finish on the workers; nothing tells
the API). A replacement worker starts (as an orchestrator would restart the pod) and run 2 of
the deployment completes the build. A worker plugin logs when each batch starts and ends
executing (flushed per line, so a killed worker's log survives it): the work lost is measured,
not guessed.

Checks after run 2: every candidate clip has exactly one manifest row (the windows of each
source are computed independently from its frame count); every accepted key is in exactly one
shard, with all its members; every shard on disk is referenced by the manifest and no partial
shard (``*.tmp``) or batch lock is left; ``trackgo data inspect`` finds no problem.

Prints clips/s with 2 workers (before the worker kill), with 1 (between the kills) and in run 2,
counted from the first batch recorded in each period (start-up excluded, and printed apart), and
the work lost: the batch the killed worker was executing, its seconds and clips.

    python benchmarks/soak.py [--videos 400] [--clips-per-video 4] [--size 256x144] [--frames 16] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# ----------------------------------------------------------------------------------------- sources

def make_sources(root: Path, n: int) -> Path:
    """Three small transcodes of the bundled samples, ``n`` hard links to them; a list file."""
    from trackgo_data.samples import sample_video_paths
    from trackgo_data.video import encode_mp4, probe, read_frames

    base = root / "base"
    base.mkdir(parents=True, exist_ok=True)
    small = []
    for name, path in sorted(sample_video_paths().items()):
        info = probe(path)
        w, h = (256, 144) if info.width / info.height > 1.5 else (176, 144)
        out = base / f"{name}.mp4"
        if not out.exists():
            encode_mp4(read_frames(path, 0, None, size=(w, h)), out, fps=info.fps or 25.0)
        small.append(out)
    lines = []
    for i in range(n):
        link = root / f"v{i:05d}.mp4"
        if not link.exists():
            os.link(small[i % len(small)], link)
        lines.append(str(link))
    listing = root / "videos.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


# ------------------------------------------------------------------------------------- deployment

def cluster_parameters() -> dict:
    """The parameters of prefect.yaml's build-dataset/cluster deployment."""
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == "cluster"
              and d["entrypoint"].startswith("flows/build_dataset.py")]
    return dict(dep.get("parameters") or {})


def serve() -> None:
    """Child process: serve build-dataset/cluster (each flow run becomes its own process)."""
    import flows  # noqa: F401  (Prefect tuning)
    from prefect import serve as prefect_serve

    from flows.build_dataset import build_dataset_flow

    dep = build_dataset_flow.to_deployment(name="cluster", parameters=cluster_parameters())
    prefect_serve(dep)


def flow_run_pid(serve_pid: int, timeout: float = 120) -> int:
    """The pid of the flow-run process the runner started (``python -m prefect.engine``)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(serve_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "prefect.engine" in " ".join(child.cmdline()):
                    return child.pid
        time.sleep(0.2)
    raise RuntimeError("the runner started no flow-run process")


# ------------------------------------------------------------------------------------------ checks

def progress(out: Path, cache: dict) -> tuple[int, int]:
    """(batches recorded, clips recorded) from the part files (each read once)."""
    from trackgo_data.shards import read_part

    parts = out / "parts"
    for p in parts.glob("*.parquet") if parts.is_dir() else []:
        if p.name not in cache:
            with contextlib.suppress(Exception):  # a part is renamed into place: complete once seen
                cache[p.name] = len(read_part(p)[0])
    return len(cache), sum(cache.values())


def verify(out: Path, sources: list[str], cfg) -> dict:
    import tarfile
    from collections import Counter

    from trackgo_data.build import video_ids_for
    from trackgo_data.clips import plan_windows
    from trackgo_data.inspect import inspect_shards
    from trackgo_data.sample import MEMBERS, sample_key
    from trackgo_data.shards import read_manifest
    from trackgo_data.video import probe

    rows = read_manifest(out / "manifest.parquet")
    keys = Counter(r["key"] for r in rows)
    expected = set()
    frames: dict[int, int] = {}
    for src, vid in zip(sources, video_ids_for([Path(s) for s in sources])):
        ino = os.stat(src).st_ino
        if ino not in frames:
            frames[ino] = probe(src).num_frames
        expected |= {sample_key(vid, s) for s in plan_windows(frames[ino], cfg.clip)}
    accepted = {r["key"]: r["shard"] for r in rows if r["status"] == "accepted"}
    in_shards: Counter = Counter()
    members: dict[str, set] = {}
    shards = sorted((out / "shards").glob("*.tar"))
    for shard in shards:
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                key, member = name.split(".", 1)
                members.setdefault(key, set()).add(member)
                if member == "meta.json":
                    in_shards[key] += 1
    report = inspect_shards(shards)
    checks = {
        "one manifest row per candidate clip": set(keys) == expected and max(keys.values()) == 1,
        "accepted keys each in exactly one shard": set(in_shards) == set(accepted) and max(in_shards.values()) == 1,
        "every accepted sample complete": all(members[k] == set(MEMBERS) for k in accepted),
        "shards on disk = shards in manifest": {f"shards/{p.name}" for p in shards} == set(accepted.values()),
        "no partial shard or lock left": not list((out / "shards").glob("*.tmp"))
        and not list((out / "parts").glob(".*.lock")),
        "trackgo data inspect: no problem": report.ok,
    }
    return {"candidate_clips": len(expected), "rows": len(rows), "accepted": len(accepted),
            "shards": len(shards), "checks": checks}


# ----------------------------------------------------------------------------------------- the run

class Progress:
    """Batches and clips recorded so far (the part files), sampled over time for the rates."""

    def __init__(self, out: Path, n_batches: int) -> None:
        self.out, self.n_batches = out, n_batches
        self.cache: dict[str, int] = {}
        self.timeline: list[tuple[float, int, int]] = []

    def now(self) -> tuple[int, int]:
        return progress(self.out, self.cache)

    def wait_until(self, share: float | None, run) -> None:
        """Until ``share`` of the batches are recorded (None: until ``run`` completes); a run that
        ends otherwise stops the benchmark."""
        from prefect import get_client

        while True:
            batches, clips = self.now()
            self.timeline.append((time.time(), batches, clips))
            if share is not None and batches >= share * self.n_batches:
                return
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                if not state.is_completed():
                    raise RuntimeError(f"run {run.id} ended {state.name}: {state.message[:2000]}")
                if share is None:
                    return
                raise RuntimeError(f"run {run.id} completed before {share:.0%} of the batches were "
                                   "recorded: use more --videos")
            time.sleep(0.5)

    def rate(self, t0: float, t1: float) -> str:
        """clips/s recorded in (t0, t1], from the first batch recorded after t0 (no start-up)."""
        points = [(t, clips) for t, _, clips in self.timeline if t0 <= t <= t1]
        base = next(((t, c) for (t, c), (_, c_next) in zip(points, points[1:]) if c_next > c), None)
        if base is None or points[-1][1] == base[1]:
            return "n/a"
        first = next((t, c) for t, c in points if c > base[1])
        clips, seconds = points[-1][1] - first[1], points[-1][0] - first[0]
        return f"{clips} clips in {seconds:.1f} s = {clips / max(1e-9, seconds):.2f} clips/s"


def start_run(params: dict):
    """A flow run of build-dataset/cluster (retried until the runner has registered it)."""
    from prefect.deployments import run_deployment

    deadline = time.monotonic() + 120
    while True:
        try:
            return run_deployment("build-dataset/cluster", parameters=params, timeout=0)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def run_with_kills(a, tmp: Path, params: dict, progress_: Progress) -> dict:
    """Run 1, kill a worker, kill the flow run, replace the worker, run 2 to completion → the
    moments (``t_*``, wall clock) and the clips recorded at each (``c_*``)."""
    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    from dask_cluster import DaskCluster, ExecLog, cluster_env

    env = cluster_env(1, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_RUNNER_POLL_FREQUENCY="1")
    marks: dict = {"log_dir": tmp / "exec-log"}
    server = None
    with DaskCluster(tmp, env) as cluster:
        try:
            for name in ("w0", "w1"):
                cluster.start_worker(name)
            client = Client(cluster.address)
            client.wait_for_workers(2, timeout=120)
            marks["log_dir"].mkdir()
            client.register_plugin(ExecLog(str(marks["log_dir"])))
            server = subprocess.Popen([sys.executable, __file__, "--serve"], cwd=REPO, env=env,
                                      stdout=(tmp / "serve.log").open("wb"), stderr=subprocess.STDOUT)
            params = {**params, "address": cluster.address}
            marks["t_start"] = time.time()
            run1 = start_run(params)
            flow_pid = flow_run_pid(server.pid)
            progress_.wait_until(a.kill_worker_at, run1)
            time.sleep(a.kill_delay)
            marks["t_wkill"] = time.time()
            cluster.kill_worker("w1")
            batches, marks["c_wkill"] = progress_.now()
            print(f"killed worker w1 (SIGKILL) at {batches}/{progress_.n_batches} batches, "
                  f"{marks['t_wkill'] - marks['t_start']:.1f} s in")
            progress_.wait_until(a.kill_flow_at, run1)
            time.sleep(a.kill_delay)
            marks["t_fkill"] = time.time()
            os.kill(flow_pid, signal.SIGKILL)
            batches, marks["c_fkill"] = progress_.now()
            print(f"killed the flow-run process {flow_pid} (SIGKILL) at {batches}/{progress_.n_batches} batches, "
                  f"{marks['t_fkill'] - marks['t_start']:.1f} s in (run 1 {run1.id})")
            cluster.start_worker("w2")  # the replacement an orchestrator would start
            client.wait_for_workers(2, timeout=120)
            time.sleep(2)
            marks["t_rerun"] = time.time()
            _, marks["c_rerun"] = progress_.now()
            progress_.wait_until(None, start_run(params))
            marks["t_end"] = time.time()
            marks["b_end"], marks["c_end"] = progress_.now()
            client.close()
        finally:
            if server is not None:
                server.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=30)
    return marks


def report(marks: dict, progress_: Progress, result: dict, lost: dict) -> None:
    """Print the rates of each period, the work lost and the checks."""
    t_start, t_wkill, t_fkill = marks["t_start"], marks["t_wkill"], marks["t_fkill"]
    print(f"run 1, 2 workers, before the worker kill: {progress_.rate(t_start, t_wkill)} "
          f"(with start-up: {marks['c_wkill']} clips in {t_wkill - t_start:.1f} s)")
    print(f"run 1, 1 worker, between the kills: {progress_.rate(t_wkill, t_fkill)}")
    print(f"between the flow-run kill and run 2: {marks['c_rerun'] - marks['c_fkill']} more clips recorded "
          "by orphaned tasks")
    print(f"run 2, 2 workers (one replaced): {progress_.rate(marks['t_rerun'], marks['t_end'])} "
          f"(with start-up: {marks['c_end'] - marks['c_rerun']} clips in {marks['t_end'] - marks['t_rerun']:.1f} s)")
    print(f"work lost: {json.dumps(lost)}")
    print(f"result: {result['candidate_clips']} candidate clips, {result['rows']} manifest rows, "
          f"{result['accepted']} accepted in {result['shards']} shards")
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=400)
    p.add_argument("--clips-per-video", type=int, default=4)
    p.add_argument("--size", default="256x144")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--kill-worker-at", type=float, default=0.3, help="share of batches recorded")
    p.add_argument("--kill-flow-at", type=float, default=0.6, help="share of batches recorded")
    p.add_argument("--kill-delay", type=float, default=5.0,
                   help="seconds after that share is reached (so the kill lands inside a batch)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.serve:
        return serve()

    from prefect.testing.utilities import prefect_test_harness

    from flows.build_dataset import make_build_config
    from trackgo_data.build import discover_sources

    width, height = (int(v) for v in args.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="trackgo-soak-"))
    listing = make_sources(tmp / "src", args.videos)
    sources = [str(s) for s in discover_sources(listing)]
    out = tmp / "out"
    cfg = make_build_config("local", args.frames, width, height, clips_per_video=args.clips_per_video)
    n_batches = -(-len(sources) // args.batch_size)
    params = {"source": str(listing), "output": str(out), "profile": "local", "num_frames": args.frames,
              "width": width, "height": height, "clips_per_video": args.clips_per_video,
              "batch_size": args.batch_size, "previews": 0, "progress_bar": False}
    print(f"{len(sources)} sources × ≤ {args.clips_per_video} windows of {args.frames} frames at {width}x{height}, "
          f"{n_batches} batches of {args.batch_size}; deployment parameters from prefect.yaml: {cluster_parameters()}")
    progress_ = Progress(out, n_batches)
    with prefect_test_harness(server_startup_timeout=180):
        marks = run_with_kills(args, tmp, params, progress_)
    result = verify(out, sources, cfg)
    from dask_cluster import lost_work

    lost = lost_work(marks["log_dir"], {"worker": marks["t_wkill"], "worker_name": "w1", "flow": marks["t_fkill"]},
                     marks["c_end"] / max(1, marks["b_end"]))
    report(marks, progress_, result, lost)
    if args.keep:
        print(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if not all(result["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

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

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed comes with prefect-dask
    WorkerPlugin = object


class ExecLog(WorkerPlugin):
    """Worker plugin: appends each task's execution start and end (wall-clock) to
    ``<folder>/<worker name>.jsonl``, flushed at once, so the log of a worker killed with
    SIGKILL still tells which batch it was running and since when."""

    name = "trackgo-exec-log"

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def setup(self, worker) -> None:
        self.worker_name = str(worker.name)
        self.fh = open(Path(self.folder) / f"{self.worker_name}.jsonl", "a")

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" or start in ("executing", "cancelled") and finish not in ("executing", "cancelled"):
            self.fh.write(json.dumps([time.time(), str(key), start, finish]) + "\n")
            self.fh.flush()


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


# ----------------------------------------------------------------------------------------- cluster

class Cluster:
    """``dask scheduler`` + named ``dask worker`` processes that can be killed and replaced."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.workers: dict[str, subprocess.Popen] = {}
        sched_file = workdir / "scheduler.json"
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.1)
        time.sleep(0.3)
        self.address = json.loads(sched_file.read_text())["address"]

    def start_worker(self, name: str) -> None:
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--name", name], env=self.env, stderr=subprocess.DEVNULL)

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            proc.terminate()
        for proc in [*self.workers.values(), self.scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


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


def lost_work(log_dir: Path, kills: dict[str, float], clips_per_batch: float) -> dict:
    """What the kills cost, from the workers' execution logs.

    Worker kill: the batch the killed worker was executing, from its start to the kill (it is run
    again elsewhere). Flow-run kill: batches released while executing keep running on their
    worker and record their batch (run 2 finds it, or waits on the batch lock): work kept, not lost.
    """
    out = {}
    starts: dict[str, float] = {}
    open_at_kill = []
    for t, key, start, finish in (json.loads(l) for l in (log_dir / f"{kills['worker_name']}.jsonl").open()):
        if finish == "executing":
            starts[key] = t
        else:
            starts.pop(key, None)
    for key, t0 in starts.items():  # never ended: cut by the SIGKILL
        open_at_kill.append(kills["worker"] - t0)
    out["worker kill"] = {"batches_cut": len(open_at_kill), "seconds_lost": round(sum(open_at_kill), 1),
                          "clips_redone_about": round(len(open_at_kill) * clips_per_batch)}
    orphans = []
    for f in log_dir.glob("*.jsonl"):
        running: dict[str, float] = {}
        for t, key, start, finish in (json.loads(l) for l in f.open()):
            if finish == "executing":
                running[key] = t
            elif key in running:
                t0 = running.pop(key)
                if t0 < kills["flow"] < t:
                    orphans.append((t0, t, finish, start))
    kept = [o for o in orphans if o[2] in ("memory", "released", "forgotten")]  # ran to the end
    cut = [o for o in orphans if o not in kept]
    out["flow-run kill"] = {"batches_executing": len(orphans), "finished_after_the_kill": len(kept),
                            "seconds_lost": round(sum(t1 - t0 for t0, t1, _, _ in cut), 1)}
    return out


# -------------------------------------------------------------------------------------------- main

def main() -> None:
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
    a = p.parse_args()
    if a.serve:
        return serve()

    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.build_dataset import make_build_config
    from flows.task_runners.dask import worker_environ
    from trackgo_data.build import discover_sources

    width, height = (int(v) for v in a.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="trackgo-soak-"))
    listing = make_sources(tmp / "src", a.videos)
    sources = [str(s) for s in discover_sources(listing)]
    out = tmp / "out"
    cfg = make_build_config("local", a.frames, width, height, clips_per_video=a.clips_per_video)
    n_batches = -(-len(sources) // a.batch_size)
    params = {"source": str(listing), "output": str(out), "profile": "local", "num_frames": a.frames,
              "width": width, "height": height, "clips_per_video": a.clips_per_video,
              "batch_size": a.batch_size, "previews": 0, "progress_bar": False}
    print(f"{len(sources)} sources × ≤ {a.clips_per_video} windows of {a.frames} frames at {width}x{height}, "
          f"{n_batches} batches of {a.batch_size}; deployment parameters from prefect.yaml: {cluster_parameters()}")

    procs: list[subprocess.Popen] = []
    cluster = None
    with prefect_test_harness(server_startup_timeout=180):
        api = PREFECT_API_URL.value()
        env = {**os.environ, **worker_environ(1), "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
        try:
            cluster = Cluster(tmp, env)
            for name in ("w0", "w1"):
                cluster.start_worker(name)
            from distributed import Client

            client = Client(cluster.address)
            client.wait_for_workers(2, timeout=120)
            log_dir = tmp / "exec-log"
            log_dir.mkdir()
            client.register_plugin(ExecLog(str(log_dir)))
            server = subprocess.Popen([sys.executable, __file__, "--serve"], cwd=REPO, env=env,
                                      stdout=(tmp / "serve.log").open("wb"), stderr=subprocess.STDOUT)
            procs.append(server)
            params["address"] = cluster.address

            def start_run():
                deadline = time.monotonic() + 120
                while True:  # the runner registers the deployment when it starts serving
                    try:
                        return run_deployment("build-dataset/cluster", parameters=params, timeout=0)
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(1)

            cache: dict[str, int] = {}
            timeline: list[tuple[float, int, int]] = []

            def wait_until(share: float | None, run) -> None:
                """Until ``share`` of the batches are recorded (None: until ``run`` completes);
                a run that ends otherwise stops the benchmark."""
                from prefect import get_client

                while True:
                    b, c = progress(out, cache)
                    timeline.append((time.time(), b, c))
                    if share is not None and b >= share * n_batches:
                        return
                    with get_client(sync_client=True) as pc:
                        state = pc.read_flow_run(run.id).state
                    if state is not None and state.is_final():
                        if not state.is_completed():
                            raise RuntimeError(f"run {run.id} ended {state.name}: {state.message[:2000]}")
                        if share is None:
                            return
                        raise RuntimeError(f"run {run.id} completed before {share:.0%} of the batches were "
                                           "recorded: use more --videos")
                    time.sleep(0.5)

            t_start = time.time()
            run1 = start_run()
            flow_pid = flow_run_pid(server.pid)
            wait_until(a.kill_worker_at, run1)
            time.sleep(a.kill_delay)
            t_wkill = time.time()
            cluster.kill_worker("w1")
            b_wkill, c_wkill = progress(out, cache)
            print(f"killed worker w1 (SIGKILL) at {b_wkill}/{n_batches} batches, {t_wkill - t_start:.1f} s in")
            wait_until(a.kill_flow_at, run1)
            time.sleep(a.kill_delay)
            t_fkill = time.time()
            os.kill(flow_pid, signal.SIGKILL)
            b_fkill, c_fkill = progress(out, cache)
            print(f"killed the flow-run process {flow_pid} (SIGKILL) at {b_fkill}/{n_batches} batches, "
                  f"{t_fkill - t_start:.1f} s in (run 1 {run1.id})")
            cluster.start_worker("w2")  # the replacement an orchestrator would start
            client.wait_for_workers(2, timeout=120)
            time.sleep(2)
            t_rerun = time.time()
            b_rerun, c_rerun = progress(out, cache)
            run2 = start_run()
            wait_until(None, run2)
            t_end = time.time()
            b_end, c_end = progress(out, cache)
            client.close()
        finally:
            for proc in procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            if cluster is not None:
                cluster.close()

    result = verify(out, sources, cfg)
    lost = lost_work(log_dir, {"worker": t_wkill, "worker_name": "w1", "flow": t_fkill}, c_end / max(1, b_end))

    def rate(t0: float, t1: float) -> str:
        """clips/s recorded in (t0, t1], from the first batch recorded after t0 (no start-up)."""
        pts = [(t, c) for t, _, c in timeline if t0 <= t <= t1]
        base = next(((t, c) for (t, c), (_, c1) in zip(pts, pts[1:]) if c1 > c), None)
        if base is None or pts[-1][1] == base[1]:
            return "n/a"
        first = next((t, c) for t, c in pts if c > base[1])
        return (f"{pts[-1][1] - first[1]} clips in {pts[-1][0] - first[0]:.1f} s = "
                f"{(pts[-1][1] - first[1]) / max(1e-9, pts[-1][0] - first[0]):.2f} clips/s")

    print(f"run 1, 2 workers, before the worker kill: {rate(t_start, t_wkill)} "
          f"(with start-up: {c_wkill} clips in {t_wkill - t_start:.1f} s)")
    print(f"run 1, 1 worker, between the kills: {rate(t_wkill, t_fkill)}")
    print(f"between the flow-run kill and run 2: {c_rerun - c_fkill} more clips recorded by orphaned tasks")
    print(f"run 2, 2 workers (one replaced): {rate(t_rerun, t_end)} "
          f"(with start-up: {c_end - c_rerun} clips in {t_end - t_rerun:.1f} s)")
    print(f"work lost: {json.dumps(lost)}")
    print(f"result: {result['candidate_clips']} candidate clips, {result['rows']} manifest rows, "
          f"{result['accepted']} accepted in {result['shards']} shards")
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if a.keep:
        print(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if not all(result["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

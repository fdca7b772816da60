"""An existing Dask engine on this machine, as ``infra/dask`` runs one: a ``dask scheduler``
process and ``dask worker --nthreads 1 --no-nanny`` processes started from the command line, which
a benchmark can kill (SIGKILL) and replace (``orchestration.py``, ``soak.py``); and the workers'
execution logs that say what a kill cost (``soak.py``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed comes with prefect-dask
    WorkerPlugin = object

REPO = Path(__file__).resolve().parents[1]


def cluster_env(threads: int, **extra: str) -> dict[str, str]:
    """This process's environment for scheduler and workers: each worker's libraries limited to
    ``threads`` threads (as infra/dask configures its workers), the repository and ``benchmarks/``
    importable, plus ``extra`` variables."""
    from flows.task_runners.dask import worker_environ

    env = {**os.environ, **worker_environ(threads), **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])
    return env


class DaskCluster:
    """A scheduler process (started at once; ``address`` once it listens) and named worker processes."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str = "scheduler") -> None:
        self.env = env
        self.workers: dict[str, subprocess.Popen] = {}
        sched_file = Path(workdir) / f"{name}.json"
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                self.close()
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.1)
        time.sleep(0.3)  # the file is written before the scheduler accepts workers
        self.address = json.loads(sched_file.read_text())["address"]

    def start_worker(self, name: str) -> None:
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--name", name], env=self.env, stderr=subprocess.DEVNULL)

    def kill_worker(self, name: str) -> None:
        """SIGKILL: the worker dies mid-task, as a machine that goes away."""
        proc = self.workers.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        """Workers, then the scheduler: terminated, killed after 30 s."""
        procs = [*self.workers.values(), self.scheduler]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> "DaskCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def lost_work(log_dir: Path, kills: dict[str, float], clips_per_batch: float) -> dict:
    """What the kills cost, from the workers' execution logs.

    Worker kill: the batch the killed worker was executing, from its start to the kill (it is run
    again elsewhere). Flow-run kill: batches released while executing keep running on their
    worker and record their batch (run 2 finds it, or waits on the batch lock): work kept, not lost.
    """
    out = {}
    starts: dict[str, float] = {}
    open_at_kill = []
    for t, key, start, finish in (json.loads(line) for line in (log_dir / f"{kills['worker_name']}.jsonl").open()):
        if finish == "executing":
            starts[key] = t
        else:
            starts.pop(key, None)
    for key, t0 in starts.items():  # never ended: cut by the SIGKILL
        open_at_kill.append(kills["worker"] - t0)
    out["worker kill"] = {"batches_cut": len(open_at_kill), "seconds_lost": round(sum(open_at_kill), 1),
                          "clips_redone_about": round(len(open_at_kill) * clips_per_batch)}
    orphans = []
    for log in log_dir.glob("*.jsonl"):
        running: dict[str, float] = {}
        for t, key, start, finish in (json.loads(line) for line in log.open()):
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

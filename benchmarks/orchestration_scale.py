"""Prefect at the size of a corpus: build-dataset's task structure with 10,000 batch task runs,
on PostgreSQL and on SQLite, measured in one run.

For each database a Prefect server is brought up by the project's script (``scripts/server.sh
up`` with ``TRACKGO_PREFECT_DB=postgres|sqlite``; its own state folder and port; PostgreSQL is a
private cluster, ``scripts/postgres.sh``). The sources are N zero-byte files, one per batch
(``batch_size=1``): every batch takes the real library path — plan, fingerprint, batch lock,
backends (loaded once), probe, an ``empty_file`` row, the batch's part file — in a few
milliseconds, so what is measured is the orchestration around it:

- **per-task-run overhead** = (wall time of the flow, ``python -m flows.build_dataset`` with the
  thread runner, process start included − wall time of the same batches in the plain loop,
  ``trackgo_data.build.build_dataset``) / N; and the same with CPU seconds (user + system of the
  process), which a loaded machine inflates less; the server's CPU seconds per batch beside;
- **peak memory** of the flow process (RSS), of the Prefect server (RSS of its process tree) and
  of PostgreSQL (PSS of the cluster's processes: shared buffers counted once), sampled every
  0.5 s, with the flow's RSS when 10 %, 50 % and 90 % of the batches were done (flat = growth
  from 10 % to 90 % small against the peak);
- **task runs lost** = N − build-batch task runs the server holds in state Completed once its
  event pipeline has drained (waited for up to ``--drain`` s after the flow ended; the time it
  took is printed), with the number of events the server's queue dropped (its log's warnings);
- **flow-run page**: headless Chromium (Playwright, the system's ``chromium``) opens the run's
  page in the Prefect UI; seconds until the load event, until the run's name is shown, and until
  the network is idle (every API call the page makes answered), cold and again;
- the number of artifacts of the run (a handful, whatever N).

    python benchmarks/orchestration_scale.py [--batches 10000] [--dbs postgres,sqlite] [--keep]

Goals: 0 task runs lost, overhead ≤ 20 ms per batch, flow memory flat, page usable ≤ 3 s on
PostgreSQL; SQLite's figures beside them. The machine's load average is printed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("orchestration_scale")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """scripts/server.sh on one database, with its own state folder, Prefect home and port."""

    def __init__(self, db: str, root: Path):
        self.db, self.root, self.port = db, root, free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(PREFECT_HOME=str(root / "home"), TRACKGO_PREFECT_DIR=str(root / "state"),
                        TRACKGO_PREFECT_PORT=str(self.port), TRACKGO_PREFECT_DB=db,
                        PREFECT_BIN=str(Path(sys.executable).parent / "prefect"))
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.ui = f"http://127.0.0.1:{self.port}"

    def script(self, name: str, *args: str, timeout: int = 600) -> str:
        done = subprocess.run(["bash", str(REPO / "scripts" / name), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{name} {' '.join(args)} failed: {done.stderr[-3000:]}")
        return done.stdout

    def up(self) -> None:
        t0 = time.perf_counter()
        self.script("server.sh", "up")
        log.info("%s: server up in %.1f s (%s)", self.db, time.perf_counter() - t0, self.ui)

    def down(self) -> None:
        self.script("server.sh", "down")
        if self.db == "postgres":
            self.script("postgres.sh", "destroy")

    def server_pid(self) -> int:
        return int((self.root / "state" / "run" / "server.pid").read_text())

    def postgres_pid(self) -> int | None:
        if self.db != "postgres":
            return None
        data = self.script("postgres.sh", "status").split("data ", 1)[1].split()[0]
        return int(Path(data, "postmaster.pid").read_text().split()[0])

    def post(self, path: str, body: dict) -> object:
        import httpx

        r = httpx.post(f"{self.api}{path}", json=body, timeout=120)
        r.raise_for_status()
        return r.json()


def tree_memory(pid: int | None, pss: bool = False) -> int:
    """RSS (or PSS) bytes of ``pid`` and its descendants; 0 when it is gone."""
    import psutil

    if pid is None:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss if pss else p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class Sampler(threading.Thread):
    """Every ``every`` s: (seconds, batches done, flow RSS, server RSS, database PSS)."""

    def __init__(self, flow_pid: int, server: Server, parts: Path, every: float = 0.5):
        super().__init__(daemon=True)
        self.flow_pid, self.server, self.parts, self.every = flow_pid, server, parts, every
        self.server_pid, self.pg_pid = server.server_pid(), server.postgres_pid()
        self.samples: list[tuple[float, int, int, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.is_set():
            try:
                done = sum(1 for e in os.scandir(self.parts) if e.name.endswith(".parquet"))
            except FileNotFoundError:
                done = 0
            self.samples.append((time.perf_counter() - t0, done, tree_memory(self.flow_pid),
                                 tree_memory(self.server_pid), tree_memory(self.pg_pid, pss=True)))
            self.stop.wait(self.every)

    def at(self, fraction: float, n: int) -> int:
        """Flow RSS at the first sample with ``fraction`` of the batches done."""
        return next((s[2] for s in self.samples if s[1] >= fraction * n), 0)


def make_sources(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        p = root / f"v{i:06d}.mp4"
        p.touch()
        lines.append(str(p))
    listing = root / "videos.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def child_cpu() -> float:
    """User + system seconds of this process's waited-for children so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tree_cpu(pid: int | None) -> float:
    """User + system seconds of ``pid`` and its live descendants (0 for None)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())


def plain_loop(listing: Path, out: Path) -> tuple[float, float]:
    """The same batches without Prefect, in a child process (as the flow runs in one)."""
    code = ("import sys, time; t0 = time.perf_counter(); "
            "from trackgo_data.build import build_dataset, make_config; "
            "s = build_dataset(sys.argv[1], sys.argv[2], make_config('local'), batch_size=1, progress=False); "
            "print(time.perf_counter() - t0, s['clips'])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0, c0 = time.perf_counter(), child_cpu()
    done = subprocess.run([sys.executable, "-c", code, str(listing), str(out)], env=env, capture_output=True,
                          text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu() - c0
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return wall, cpu


def run_flow(server: Server, listing: Path, out: Path, logfile: Path) -> tuple[float, float, float, Sampler]:
    """(wall s, flow CPU s, server CPU s, memory samples) of one flow run."""
    env = {**server.env, "PREFECT_API_URL": server.api,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "flows.build_dataset", "--source", str(listing), "--output", str(out),
           "--batch-size", "1", "--previews", "0", "--no-progress"]
    s0 = tree_cpu(server.server_pid()) + tree_cpu(server.postgres_pid())
    t0, c0 = time.perf_counter(), child_cpu()
    with logfile.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid, server, out / "parts")
        sampler.start()
        rc = proc.wait()
    wall, cpu = time.perf_counter() - t0, child_cpu() - c0
    server_cpu = tree_cpu(server.server_pid()) + tree_cpu(server.postgres_pid()) - s0
    sampler.stop.set()
    sampler.join()
    if rc:
        raise RuntimeError(f"the flow failed (exit {rc}); see {logfile}:\n" + logfile.read_text()[-3000:])
    return wall, cpu, server_cpu, sampler


def drain(server: Server, n: int, wait: float) -> tuple[str, int, int, float]:
    """(flow run id, build-batch task runs Completed, all task runs, seconds waited) once the
    server's counts stop moving (or ``wait`` s passed)."""
    run = server.post("/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})[0]
    fr = {"id": {"any_": [run["id"]]}}
    t0 = time.perf_counter()
    last, stable_since = (-1, -1), time.perf_counter()
    while True:
        completed = server.post("/task_runs/count", {"flow_runs": fr, "task_runs": {
            "name": {"like_": "batch-"}, "state": {"type": {"any_": ["COMPLETED"]}}}})
        total = server.post("/task_runs/count", {"flow_runs": fr})
        if (completed, total) != last:
            last, stable_since = (completed, total), time.perf_counter()
        if completed >= n or time.perf_counter() - stable_since > 20 or time.perf_counter() - t0 > wait:
            return run["id"], completed, total, time.perf_counter() - t0
        time.sleep(1)


def page_load(server: Server, flow_run_id: str) -> dict[str, object]:
    """Seconds to the load event, to the run's name on the page and to network idle, cold and
    warm (a second visit in the same browser); the status of the run graph's API call."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"error": "no system chromium"}
    name = server.post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})[0]["name"]
    url = f"{server.ui}/runs/flow-run/{flow_run_id}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    result: dict[str, object] = {"url": url}
    profile = tempfile.mkdtemp(prefix="trackgo-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=flags,
                                                       viewport={"width": 1400, "height": 1000})
            ctx.set_default_timeout(120_000)
            for visit in ("cold", "warm"):
                page = ctx.new_page()
                graph: dict[str, object] = {}
                page.on("response", lambda r, g=graph: g.update(status=r.status, url=r.url)
                        if "/graph" in r.url else None)
                t0 = time.perf_counter()
                page.goto(url, wait_until="load")
                t_load = time.perf_counter() - t0
                page.get_by_text(name).first.wait_for(state="visible")
                t_name = time.perf_counter() - t0
                page.wait_for_load_state("networkidle")
                t_idle = time.perf_counter() - t0
                result[visit] = {"load_s": round(t_load, 2), "name_shown_s": round(t_name, 2),
                                 "network_idle_s": round(t_idle, 2), "graph_status": graph.get("status")}
                page.close()
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return result


def measure(db: str, n: int, listing: Path, plain: tuple[float, float], root: Path, drain_wait: float
            ) -> dict[str, object]:
    server = Server(db, root / db)
    server.up()
    try:
        out = root / db / "out"
        log.info("%s: flow with %d batches (load %s)", db, n, loadavg())
        wall, cpu, server_cpu, sampler = run_flow(server, listing, out, root / db / "flow.log")
        run_id, completed, total, waited = drain(server, n, drain_wait)
        artifacts = server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        page = page_load(server, run_id)
        peak = [max(s[i] for s in sampler.samples) for i in (2, 3, 4)]
        return {
            "db": db, "batches": n, "flow_wall_s": round(wall, 1), "plain_wall_s": round(plain[0], 1),
            "overhead_ms_per_batch": round(1000 * (wall - plain[0]) / n, 2),
            "flow_cpu_s": round(cpu, 1), "plain_cpu_s": round(plain[1], 1),
            "cpu_overhead_ms_per_batch": round(1000 * (cpu - plain[1]) / n, 2),
            "server_cpu_ms_per_batch": round(1000 * server_cpu / n, 2),
            "task_runs_completed": completed, "task_runs_total": total, "task_runs_lost": n - completed,
            "drain_s": round(waited, 1), "artifacts": len(artifacts),
            "events_dropped_by_server": (root / db / "state" / "logs" / "server.log").read_text(
                errors="replace").count("Subscription queue is full"),
            "flow_rss_peak_mib": round(peak[0] / 2**20), "server_rss_peak_mib": round(peak[1] / 2**20),
            "postgres_pss_peak_mib": round(peak[2] / 2**20) if db == "postgres" else None,
            "flow_rss_at_10_50_90_mib": [round(sampler.at(f, n) / 2**20) for f in (0.1, 0.5, 0.9)],
            "server_rss_at_10_50_90_mib": [round(next((s[3] for s in sampler.samples if s[1] >= f * n), 0) / 2**20)
                                           for f in (0.1, 0.5, 0.9)],
            "page": page, "load_average": loadavg(),
        }
    finally:
        server.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=10_000)
    p.add_argument("--dbs", default="postgres,sqlite")
    p.add_argument("--drain", type=float, default=600.0, help="seconds to wait for the server to ingest task runs")
    p.add_argument("--root", default="", help="working folder (default: a temp folder)")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    root = Path(a.root or tempfile.mkdtemp(prefix="trackgo-orch-scale-"))
    try:
        listing = make_sources(root / "videos", a.batches)
        log.info("plain loop over %d batches (load %s)", a.batches, loadavg())
        plain = plain_loop(listing, root / "plain")
        log.info("plain loop: %.1f s, %.1f CPU-s (%.2f ms per batch)", plain[0], plain[1], 1000 * plain[0] / a.batches)
        results = []
        for db in a.dbs.split(","):
            results.append(measure(db, a.batches, listing, plain, root, a.drain))
            log.info("%s: %s", db, json.dumps(results[-1]))
    finally:
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    keys = ["overhead_ms_per_batch", "cpu_overhead_ms_per_batch", "server_cpu_ms_per_batch", "task_runs_lost",
            "events_dropped_by_server", "flow_rss_peak_mib", "flow_rss_at_10_50_90_mib",
            "server_rss_peak_mib", "server_rss_at_10_50_90_mib", "postgres_pss_peak_mib", "flow_wall_s",
            "plain_wall_s", "flow_cpu_s", "plain_cpu_s", "drain_s", "artifacts", "load_average"]
    print(f"\n{'':30s}" + "".join(f"{r['db']:>24s}" for r in results))
    for k in keys:
        print(f"{k:30s}" + "".join(f"{str(r[k]):>24s}" for r in results))
    for r in results:
        print(f"{r['db']} flow-run page: {json.dumps(r['page'])}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

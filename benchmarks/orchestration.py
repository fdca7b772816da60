"""Orchestration cost of the build-dataset flow, measured in one run.

1. Overhead: wall time of the ``build-dataset`` flow (thread runner, one worker) on N clips ÷ the
   same stage functions in a plain in-process loop (``trackgo_data.build.build_dataset``) on the
   same clips. Goal ≤ 1.3.
2. Scale-out: the flow with the ``dask`` task runner on 1 worker process vs 2, same clips.
   Goal ≥ 1.7× on 2 cores. Two kinds of cluster (``--clusters``):
   ``external`` — an existing engine, as the ``build-dataset/cluster`` deployment uses one: a
   ``dask scheduler`` process and ``dask worker --nthreads 1 --no-nanny`` processes started from
   the command line, the flow connecting by ``address``. Every worker is the same size whether
   there are 1 or 2 (``--worker-threads`` library threads, default 1 = one core), like the
   fixed-size pods of ``infra/dask``: the ratio is what adding a worker buys.
   ``local`` — the ``distributed.LocalCluster`` the runner starts itself without an address
   (``flows.task_runners.dask.local_cluster``: scheduler inside the flow process, ``cpus //
   workers`` library threads per worker, so a lone worker already spreads onto the second core
   and the ratio is smaller by design).

Each measurement writes to a fresh output folder (no cache reuse); models are loaded and every
process is warmed up on a throw-away run first, so the figures compare steady-state work. The
Prefect API is a temporary local server (``prefect_test_harness``) started before timing. Clips
are the ``local`` profile's (25 frames at 1024×576, as ``make dataset`` builds) unless
``--size``/``--frames`` say otherwise.

    python benchmarks/orchestration.py [--videos 16] [--batch-size 4] [--clips-per-video 3] [--size 1024x576] [--frames 25]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from the test server


def make_sources(root: Path, n: int, video: Path) -> Path:
    """A list file of ``n`` copies (hard links where possible) of one sample video under distinct
    names: ``n`` equal-cost batches."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        copy = root / f"clip{i:03d}{video.suffix}"
        if not copy.exists():
            try:
                os.link(video, copy)
            except OSError:
                shutil.copyfile(video, copy)
        lines.append(str(copy))
    listing = root / "videos.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def free_parallelism(work: int = 3_000_000) -> float:
    """How much two processes gain over one right now: 2 * t(1 job) / t(2 jobs at once).
    2.0 = two free cores; ~1.0 = the cores are busy with other work."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_spin, [1000, 1000]))  # start both processes
        t0 = time.perf_counter()
        ex.submit(_spin, work).result()
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(ex.map(_spin, [work, work]))
        t2 = time.perf_counter() - t0
    return 2 * t1 / t2


def _run_batch(spec, cfg, out: str) -> int:
    """One batch through the library alone (no Prefect); returns its number of clips."""
    from trackgo_data.build import prepare_output
    from trackgo_data.process import process_batch

    prepare_output(out, cfg)
    return len(process_batch(spec, cfg, out).rows)


def _warm_worker(cfg, source: str, out: str) -> int:
    """Run one batch in this process (models, imports, first-call costs) and return the pid."""
    from trackgo_data.build import discover_sources, plan_batches

    _run_batch(plan_batches(discover_sources(source), cfg, 1)[0], cfg, out)
    return os.getpid()


def _cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and the processes it started
    (API server, Dask workers) that are still running."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


@contextlib.contextmanager
def external_cluster(n_workers: int, workdir: Path, threads: int = 1):
    """``dask scheduler`` + ``n_workers`` × ``dask worker --nthreads 1 --no-nanny`` as separate
    processes (an existing engine, like ``infra/dask``), each worker's libraries limited to
    ``threads`` threads; yields the scheduler address."""
    from dask_cluster import DaskCluster, cluster_env

    with DaskCluster(workdir, cluster_env(threads), name=f"scheduler-{n_workers}") as cluster:
        for i in range(n_workers):
            cluster.start_worker(f"w{i}")
        yield cluster.address


def time_cluster(kind: str, n: int, a, cfg, flow_kw: dict, video: Path, tmp: Path, s_loop: dict,
                 plain: bool) -> tuple[float, float, float | None]:
    """The flow on a warmed-up ``kind`` cluster of ``n`` workers: (wall s, CPU-s of this process
    tree, and with ``plain`` the wall s of the same batches as plain Dask futures)."""
    from distributed import Client

    from flows.build_dataset import build_dataset_flow
    from flows.task_runners.dask import PinThreads, local_cluster
    from trackgo_data.build import discover_sources, plan_batches

    if kind == "local":  # the cluster the runner starts for max_workers=n
        cm = contextlib.closing(local_cluster(n))
    else:
        cm = external_cluster(n, tmp, a.worker_threads)
    with cm as cl:
        address = cl if isinstance(cl, str) else cl.scheduler_address
        with Client(address) as client:
            client.wait_for_workers(n, timeout=120)
            if kind == "external":
                client.register_plugin(PinThreads(a.worker_threads))
            # every worker process runs one batch before timing (models, imports, first calls)
            pids = {client.submit(_warm_worker, cfg, str(make_sources(tmp / f"warm{kind}{n}-{i}", 1, video)),
                                  str(tmp / f"warm-w{kind}{n}-{i}"), workers=[w], pure=False).result()
                    for i, w in enumerate(client.scheduler_info()["workers"])}
            assert len(pids) == n
        run_kw = {**flow_kw, "task_runner": "dask", "address": address, "previews": 0}
        build_dataset_flow(**{**run_kw, "source": str(make_sources(tmp / f"warm{kind}{n}", n, video)),
                              "output": str(tmp / f"warm-dask{kind}{n}")})
        src = str(make_sources(tmp / f"src-dask{kind}{n}", a.videos, video))
        c0 = _cpu_seconds()
        t0 = time.perf_counter()
        s = build_dataset_flow(**{**run_kw, "source": src, "output": str(tmp / f"dask{kind}{n}")})
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds() - c0
        assert s["accepted"] == s_loop["accepted"]
        if not plain:
            return wall, cpu, None
        # the same batches as plain Dask futures on the same workers, no Prefect
        specs = plan_batches(discover_sources(str(make_sources(tmp / f"src-plain{kind}{n}", a.videos, video))),
                             cfg, a.batch_size)
        with Client(address) as client:
            t0 = time.perf_counter()
            rows = client.gather([client.submit(_run_batch, spec, cfg, str(tmp / f"plain{kind}{n}"), pure=False)
                                  for spec in specs])
            plain_wall = time.perf_counter() - t0
        assert sum(rows) == s["clips"]
        return wall, cpu, plain_wall


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default="bikes", help="bundled sample to replicate (bigbuckbunny|bikes|carphone)")
    p.add_argument("--videos", type=int, default=16, help="source files (copies of --video)")
    p.add_argument("--batch-size", type=int, default=4, help="videos per task run (the flow's default: 4)")
    p.add_argument("--clips-per-video", type=int, default=3)
    p.add_argument("--size", default="", help="WxH of the clips (default: the profile's, 1024x576)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the profile's, 25)")
    p.add_argument("--clusters", default="external,local", help="comma list of external, local")
    p.add_argument("--worker-threads", type=int, default=1,
                   help="library threads of each external worker (a worker = this many cores, for 1 and 2 workers)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved loop/flow repetitions (min is kept)")
    p.add_argument("--keep", action="store_true", help="keep the temporary outputs")
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.clusters.split(",") if k.strip()]
    if not args.kinds or set(args.kinds) - {"external", "local"}:
        p.error(f"--clusters takes external and/or local, got {args.clusters!r}")
    return args


def measure_overhead(a, cfg, flow_kw: dict, video: Path, tmp: Path) -> tuple[dict[str, list[float]], dict]:
    """After a warm-up, the plain loop, the flow and the flow without previews, interleaved
    ``a.repeats`` times → (wall seconds per kind, the loop's summary)."""
    from flows.build_dataset import build_dataset_flow
    from trackgo_data.build import build_dataset, get_models

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    # warm-up: imports, models, Prefect client, matplotlib (artifacts)
    warm_src = make_sources(tmp / "warm", 1, video)
    get_models(cfg)
    build_dataset(str(warm_src), tmp / "warm-loop", cfg, batch_size=a.batch_size, progress=False)
    build_dataset_flow(**{**flow_kw, "source": str(warm_src), "output": str(tmp / "warm-flow")})
    # each run gets its own copies of the sources so that both pay for content hashing (the
    # library caches hashes per path within a process)
    runs: dict[str, list[float]] = {"loop": [], "flow": [], "flow-np": []}
    for rep in range(a.repeats):
        src = {k: str(make_sources(tmp / f"src-{k}-{rep}", a.videos, video)) for k in runs}
        seconds, s_loop = timed(lambda: build_dataset(src["loop"], tmp / f"loop{rep}", cfg,
                                                      batch_size=a.batch_size, progress=False))
        runs["loop"].append(seconds)
        seconds, s_flow = timed(lambda: build_dataset_flow(**{**flow_kw, "source": src["flow"],
                                                              "output": str(tmp / f"flow{rep}")}))
        runs["flow"].append(seconds)
        seconds, _ = timed(lambda: build_dataset_flow(**{**flow_kw, "source": src["flow-np"],
                                                         "output": str(tmp / f"flow-np{rep}"), "previews": 0}))
        runs["flow-np"].append(seconds)
        assert s_flow["accepted"] == s_loop["accepted"] and s_flow["clips"] == s_loop["clips"]
    return runs, s_loop


def report(a, cfg, runs: dict, s_loop: dict, scale: dict, loads: tuple) -> None:
    """Print the figures of one run (``scale``: wall/CPU per cluster kind and size, plain Dask,
    free parallelism before and after)."""
    n_clips = s_loop["clips"]
    t_loop, t_flow, t_flow_np = (min(runs[k]) for k in ("loop", "flow", "flow-np"))
    print(f"clips: N={n_clips} candidate clips ({s_loop['accepted']} accepted) from {a.videos} copies of "
          f"{a.video}, {cfg.clip.num_frames} frames at {cfg.clip.width}x{cfg.clip.height}, "
          f"batch_size={a.batch_size} ({-(-a.videos // a.batch_size)} batches)")
    print(f"machine: {os.cpu_count()} cpus, load average before {loads[0][0]:.2f}, after {loads[1][0]:.2f} "
          "(shared machine: other processes compete for the cores)")
    print(f"times are the min of {a.repeats} interleaved runs: " +
          ", ".join(f"{k} {[round(v, 2) for v in values]}" for k, values in runs.items()))
    print(f"plain loop (trackgo_data.build.build_dataset): {t_loop:8.2f} s  {n_clips / t_loop:6.2f} clips/s")
    print(f"flow, thread runner (with artifacts):          {t_flow:8.2f} s  {n_clips / t_flow:6.2f} clips/s")
    print(f"flow, thread runner (no previews):             {t_flow_np:8.2f} s")
    print(f"overhead ratio flow / plain loop: {t_flow / t_loop:.3f} (no previews {t_flow_np / t_loop:.3f}; goal <= 1.3)")
    labels = {"external": "Dask, external scheduler + workers", "local": "Dask, LocalCluster in the flow process"}
    wall, cpu, plain = scale["wall"], scale["cpu"], scale["plain"]
    for kind in a.kinds:
        print(f"{labels[kind]}: 1 worker {wall[kind, 1]:.2f} s, 2 workers {wall[kind, 2]:.2f} s -> scale-out "
              f"{wall[kind, 1] / wall[kind, 2]:.3f}x (goal >= 1.7 on 2 free cores)")
        for n in (1, 2):
            print(f"  {n} worker(s): {cpu[kind, n]:.1f} CPU-s used by flow process + API server + "
                  f"scheduler + workers in {wall[kind, n]:.2f} s wall = "
                  f"{cpu[kind, n] / wall[kind, n]:.2f} of {os.cpu_count()} cores busy")
    if plain:
        print(f"plain Dask futures, same batches, same external workers, no Prefect: 1 worker {plain[1]:.2f} s, "
              f"2 workers {plain[2]:.2f} s -> {plain[1] / plain[2]:.3f}x (what the cores give this work; "
              f"the flow keeps {wall['external', 1] / wall['external', 2] / (plain[1] / plain[2]):.0%} of it)")
    print(f"free parallelism of the machine (2 CPU-bound processes vs 1, ideal 2.0): before Dask "
          f"{scale['parallelism'][0]:.2f}, after {scale['parallelism'][1]:.2f}")


def main(argv=None) -> None:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(v) for v in a.size.lower().split("x")) if a.size else (None, None)

    from prefect.testing.utilities import prefect_test_harness

    from flows.build_dataset import make_build_config
    from trackgo_data.samples import sample_video_paths

    tmp = Path(tempfile.mkdtemp(prefix="trackgo-bench-"))
    video = sample_video_paths()[a.video]
    cfg = make_build_config("local", a.frames, width, height, clips_per_video=a.clips_per_video)
    flow_kw = dict(source=str(make_sources(tmp / "src", a.videos, video)), profile="local", num_frames=a.frames,
                   width=width, height=height, clips_per_video=a.clips_per_video, batch_size=a.batch_size,
                   progress_bar=False)
    load0 = os.getloadavg()
    with prefect_test_harness(server_startup_timeout=180):
        runs, s_loop = measure_overhead(a, cfg, flow_kw, video, tmp)
        scale = {"wall": {}, "cpu": {}, "plain": {}, "parallelism": [free_parallelism()]}
        for kind in a.kinds:
            for n in (1, 2):
                scale["wall"][kind, n], scale["cpu"][kind, n], plain = time_cluster(
                    kind, n, a, cfg, flow_kw, video, tmp, s_loop, plain=(kind == "external"))
                if plain is not None:
                    scale["plain"][n] = plain
        scale["parallelism"].append(free_parallelism())
    report(a, cfg, runs, s_loop, scale, (load0, os.getloadavg()))
    if a.keep:
        print(f"outputs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Orchestration cost of the build-dataset flow, measured in one run.

1. Overhead: wall time of the ``build-dataset`` flow (thread runner, one worker) on N clips ÷ the
   same stage functions in a plain in-process loop (``trackgo_data.build.build_dataset``) on the
   same clips. Goal ≤ 1.3.
2. Scale-out: the flow on the ``distributed.LocalCluster`` the ``dask`` task runner starts
   (``flows.task_runners.dask.local_cluster``: one task thread per worker process, cpus // workers
   library threads each) with 1 worker process vs 2, same clips. Goal ≥ 1.7× on 2 cores.

Each measurement writes to a fresh output folder (no cache reuse); models are loaded and every
process is warmed up on a throw-away run first, so the figures compare steady-state work. The
Prefect API is a temporary local server (``prefect_test_harness``) started before timing.

    python benchmarks/orchestration.py [--videos 8] [--clips-per-video 3] [--size 512x288] [--frames 16]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


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


def _warm_worker(cfg, source: str, out: str) -> int:
    """Run one batch in this process (models, imports, first-call costs) and return the pid."""
    from trackgo_data.build import discover_sources, plan_batches, prepare_output
    from trackgo_data.process import process_batch

    prepare_output(out, cfg)
    process_batch(plan_batches(discover_sources(source), cfg, 1)[0], cfg, out)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default="bikes", help="bundled sample to replicate (bigbuckbunny|bikes|carphone)")
    p.add_argument("--videos", type=int, default=8, help="source files (one batch each)")
    p.add_argument("--clips-per-video", type=int, default=3)
    p.add_argument("--size", default="512x288")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="interleaved loop/flow repetitions (min is kept)")
    p.add_argument("--keep", action="store_true", help="keep the temporary outputs")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(v) for v in a.size.lower().split("x"))

    from distributed import Client
    from prefect.testing.utilities import prefect_test_harness

    from flows.build_dataset import build_dataset_flow, make_build_config
    from flows.task_runners.dask import local_cluster
    from trackgo_data.build import build_dataset, get_models
    from trackgo_data.samples import sample_video_paths

    tmp = Path(tempfile.mkdtemp(prefix="trackgo-bench-"))
    video = sample_video_paths()[a.video]
    sources = make_sources(tmp / "src", a.videos, video)
    warm_src = make_sources(tmp / "warm", 1, video)
    cfg = make_build_config("local", a.frames, width, height, clips_per_video=a.clips_per_video)
    flow_kw = dict(source=str(sources), profile="local", num_frames=a.frames, width=width, height=height,
                   clips_per_video=a.clips_per_video, batch_size=1, progress_bar=False)
    load0 = os.getloadavg()

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    with prefect_test_harness(server_startup_timeout=180):
        # warm-up: imports, models, Prefect client, matplotlib (artifacts)
        get_models(cfg)
        build_dataset(str(warm_src), tmp / "warm-loop", cfg, batch_size=1, progress=False)
        build_dataset_flow(**{**flow_kw, "source": str(warm_src), "output": str(tmp / "warm-flow")})

        # loop and flow interleaved, twice; each run gets its own copies of the sources so that
        # both pay for content hashing (the library caches hashes per path within a process)
        runs: dict[str, list[float]] = {"loop": [], "flow": [], "flow-np": []}
        for rep in range(a.repeats):
            src = {k: str(make_sources(tmp / f"src-{k}-{rep}", a.videos, video)) for k in runs}
            t, s_loop = timed(lambda: build_dataset(src["loop"], tmp / f"loop{rep}", cfg, batch_size=1,
                                                    progress=False))
            runs["loop"].append(t)
            t, s_flow = timed(lambda: build_dataset_flow(**{**flow_kw, "source": src["flow"],
                                                           "output": str(tmp / f"flow{rep}")}))
            runs["flow"].append(t)
            t, _ = timed(lambda: build_dataset_flow(**{**flow_kw, "source": src["flow-np"],
                                                      "output": str(tmp / f"flow-np{rep}"), "previews": 0}))
            runs["flow-np"].append(t)
            assert s_flow["accepted"] == s_loop["accepted"] and s_flow["clips"] == s_loop["clips"]
        t_loop, t_flow, t_flow_np = (min(runs[k]) for k in ("loop", "flow", "flow-np"))

        dask_t, dask_cpu = {}, {}
        par0 = free_parallelism()
        for n in (1, 2):
            # the cluster the "dask" task runner starts for max_workers=n (flows/task_runners/dask.py)
            with local_cluster(n) as cl:
                with Client(cl) as client:
                    # every worker process runs one batch before timing (models, imports, first calls)
                    pids = {client.submit(_warm_worker, cfg, str(make_sources(tmp / f"warm{n}-{i}", 1, video)),
                                          str(tmp / f"warm-w{n}-{i}"), workers=[w], pure=False).result()
                            for i, w in enumerate(client.scheduler_info()["workers"])}
                    assert len(pids) == n
                build_dataset_flow(**{**flow_kw, "source": str(make_sources(tmp / f"warm{n}", n, video)),
                                      "output": str(tmp / f"warm-dask{n}"), "task_runner": "dask",
                                      "address": cl.scheduler_address, "previews": 0})
                src_n = str(make_sources(tmp / f"src-dask{n}", a.videos, video))
                c0 = _cpu_seconds()
                dask_t[n], s = timed(lambda: build_dataset_flow(**{**flow_kw, "source": src_n,
                                                                   "output": str(tmp / f"dask{n}"),
                                                                   "task_runner": "dask",
                                                                   "address": cl.scheduler_address,
                                                                   "previews": 0}))
                dask_cpu[n] = _cpu_seconds() - c0
                assert s["accepted"] == s_loop["accepted"]
        par1 = free_parallelism()
    load1 = os.getloadavg()

    n_clips = s_loop["clips"]
    print(f"clips: N={n_clips} candidate clips ({s_loop['accepted']} accepted) from {a.videos} copies of "
          f"{a.video}, {a.frames} frames at {width}x{height}, batch_size=1 ({a.videos} batches)")
    print(f"machine: {os.cpu_count()} cpus, load average before {load0[0]:.2f}, after {load1[0]:.2f} "
          "(shared machine: other processes compete for the cores)")
    print(f"times are the min of {a.repeats} interleaved runs: " +
          ", ".join(f"{k} {[round(v, 2) for v in vs]}" for k, vs in runs.items()))
    print(f"plain loop (trackgo_data.build.build_dataset): {t_loop:8.2f} s  {n_clips / t_loop:6.2f} clips/s")
    print(f"flow, thread runner (with artifacts):          {t_flow:8.2f} s  {n_clips / t_flow:6.2f} clips/s")
    print(f"flow, thread runner (no previews):             {t_flow_np:8.2f} s")
    print(f"overhead ratio flow / plain loop: {t_flow / t_loop:.3f} (no previews {t_flow_np / t_loop:.3f}; goal <= 1.3)")
    print(f"flow, Dask LocalCluster 1 worker:              {dask_t[1]:8.2f} s")
    print(f"flow, Dask LocalCluster 2 workers:             {dask_t[2]:8.2f} s")
    print(f"scale-out speed-up 2 vs 1 workers: {dask_t[1] / dask_t[2]:.3f}x (goal >= 1.7 on 2 free cores)")
    for n in (1, 2):
        print(f"  {n} worker(s): {dask_cpu[n]:.1f} CPU-s used by flow process + API server + workers in "
              f"{dask_t[n]:.2f} s wall = {dask_cpu[n] / dask_t[n]:.2f} of {os.cpu_count()} cores busy")
    print(f"free parallelism of the machine (2 CPU-bound processes vs 1, ideal 2.0): before Dask {par0:.2f}, "
          f"after {par1:.2f}")
    if a.keep:
        print(f"outputs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

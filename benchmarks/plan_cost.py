"""Cost of planning a build of 200k source videos: ``trackgo data plan`` (discover the sources,
fingerprint each — size, mtime, 8 sampled blocks of 4 KiB — group them into batches, count the
batches already done, probe 32 sources to estimate the clips). Goal: ≤ 60 s and ≤ 2 GiB.

The sources are sparse files of realistic sizes (log-normal, median 25 MB, 1 MB – 2 GB: reading
a hole costs what reading data from the page cache costs, but no disk) in folders of 1000, as a
crawl would store them; the 32 sources the plan probes are real videos (hard links to a bundled
sample), so the estimate does real probing. Half of the sources are recorded done (part files
with one record and one row per source), as after an interrupted build. Then one source is
touched and the build is planned again: exactly one more source must be to run.

The plan runs in a child process (the real command line: ``python -m trackgo_model.cli data
plan``); its wall time, CPU time and peak memory (max RSS) are printed with the bytes it read.
Page cache state: the files were just created (their inodes are cached), as on a machine that
listed the data set recently; a cold network file system adds its metadata latency.

    python benchmarks/plan_cost.py [--sources 200000] [--root DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_sources(root: Path, n: int, seed: int = 0) -> tuple[int, float]:
    """``n`` sparse files under root/dNNN/; returns (total bytes, seconds)."""
    from trackgo_data.build import probe_indices
    from trackgo_data.samples import sample_video_paths

    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(np.log(25e6), 1.0, n), 1e6, 2e9).astype(np.int64)
    real = set(probe_indices(n, 32))
    video = sample_video_paths()["bikes"]
    t0 = time.perf_counter()
    total = 0
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"v{i:07d}.mp4"
        if i in real:
            os.link(video, path)
            total += video.stat().st_size
        else:
            with open(path, "wb") as fh:
                fh.truncate(int(sizes[i]))
            total += int(sizes[i])
    return total, time.perf_counter() - t0


def record_done(out: Path, spec) -> None:
    """A part file recording ``spec``'s sources as processed (one rejected row each)."""
    from trackgo_data.records import PART_FORMAT
    from trackgo_data.shards import manifest_row, write_part

    rows = [{**manifest_row(f"{v}-000000", s, v, 0, "rejected", "too_short"), "batch_id": spec.batch_id}
            for s, v in zip(spec.sources, spec.video_ids)]
    records = [{"source": s, "video_id": v, "fingerprint": fp, "accepted": 0, "complete": True, "limit": None}
               for s, v, fp in zip(spec.sources, spec.video_ids, spec.fingerprints)]
    write_part(out / "parts" / f"{spec.batch_id}.parquet", rows,
               {"format": PART_FORMAT, "batch_id": spec.batch_id, "shards": [], "seconds": {}, "counts":
                {"accepted": 0, "rejected": len(rows)}, "limit": None, "exhausted": True, "sources": spec.sources,
                "backends": [], "records": records, "removed": []})


def child(root: str, out: str) -> None:
    """The measured process: the real ``trackgo data plan`` command, then what it read."""
    from trackgo_model.cli import main

    rc = main(["data", "plan", "--source", root, "--out", out, "--batch-size", "4", "--json"])
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    print(json.dumps({"rc": rc, "rchar": int(io["rchar"]), "syscr": int(io["syscr"])}), file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sources", type=int, default=200_000)
    p.add_argument("--root", default="", help="where to create the files (default: a temp folder)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child)

    from trackgo_data import build as B

    tmp = Path(a.root or tempfile.mkdtemp(prefix="trackgo-plan-"))
    src, out = tmp / "videos", tmp / "out"
    try:
        total, t_make = make_sources(src, a.sources)
        print(f"created {a.sources} sources ({total / 2**40:.2f} TiB apparent, sparse) in {t_make:.1f} s")
        cfg = B.make_config("local")
        specs = B.plan_batches(B.discover_sources(src), cfg, 4)          # to mark half of them done
        B.prepare_output(out, cfg)
        t0 = time.perf_counter()
        for s in specs[: len(specs) // 2]:
            record_done(out, s)
        print(f"recorded {len(specs) // 2} batches as done in {time.perf_counter() - t0:.1f} s")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                             os.environ.get("PYTHONPATH", "")])}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(src), str(out)], env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        plan = json.loads(proc.stdout)
        io = json.loads(proc.stderr.strip().splitlines()[-1])
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rss_gib = after.ru_maxrss / 2**20                                # KiB → GiB (max over children)
        print(f"plan: {json.dumps(plan, sort_keys=True)}")
        assert plan["sources"] == a.sources and plan["sources_done"] == 4 * (len(specs) // 2)
        print(f"planning {a.sources} sources: {wall:.1f} s wall (goal <= 60), {cpu:.1f} CPU-s, "
              f"max RSS {rss_gib:.2f} GiB (goal <= 2), read {io['rchar'] / 2**30:.2f} GiB in "
              f"{io['syscr']} read calls ({io['rchar'] / a.sources / 1024:.1f} KiB per source, "
              "Python and libraries included)")

        victim = Path(specs[len(specs) // 3].sources[1])
        st = victim.stat()
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        t0 = time.perf_counter()
        again = B.plan_build(src, out, cfg, 4)
        print(f"after touching one source: {again.sources_to_run} sources to run (was "
              f"{plan['sources_to_run']}; the touched one among them: "
              f"{str(victim) in {x for b in again.batches for x in b.sources}}); in-process re-plan "
              f"{time.perf_counter() - t0:.1f} s")
    finally:
        if a.keep:
            print(f"kept {tmp}")
        elif not a.root:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

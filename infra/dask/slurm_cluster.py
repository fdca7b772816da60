"""Start a Dask cluster on SLURM GPU nodes for ``build-dataset`` (dask-jobqueue: ``pip install 'trackgo[slurm]'``).

    python infra/dask/slurm_cluster.py --jobs 8 --partition gpu

prints the scheduler address and keeps the cluster alive until interrupted; pass that address as
the flow's ``address`` parameter (``--param task_runner=dask --param address=tcp://…:8786``).
One SLURM job = one Dask worker process with one thread and one GPU, so the segmenter and tracker
load once per GPU. The jobs run the Python this script runs with (``--python``), so install TrackGo
(``make setup-paper VENV=/shared/path/venv``) on a filesystem every node mounts, like the source
videos, the output folder and the weights.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=8, help="SLURM jobs = Dask workers = GPUs")
    p.add_argument("--partition", default="gpu")
    p.add_argument("--account", default=None)
    p.add_argument("--cores", type=int, default=8, help="CPU cores per job")
    p.add_argument("--memory", default="48GB", help="memory per job")
    p.add_argument("--walltime", default="24:00:00")
    p.add_argument("--python", default=sys.executable,
                   help="the Python of a TrackGo install every node sees (default: this one)")
    p.add_argument("--scheduler-port", type=int, default=8786)
    p.add_argument("--interface", default=None,
                   help="network interface the scheduler listens on, one the compute nodes reach (e.g. ib0)")
    return p.parse_args(argv)


def make_cluster(a: argparse.Namespace):
    """The SLURMCluster (scheduler started here, no job submitted yet)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        queue=a.partition,
        account=a.account,
        cores=1,                          # one worker thread (one GPU model instance) ...
        processes=1,                      # ... in one worker process per job,
        job_cpu=a.cores,                  # with the job's cores for decoding and OpenCV/torch threads
        memory=a.memory,
        walltime=a.walltime,
        python=a.python,
        job_extra_directives=["--gres=gpu:1"],
        # Dask's task profiler costs ~9 % of a worker's time on these batches
        job_script_prologue=["export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"],
        scheduler_options={"port": a.scheduler_port, "dashboard_address": ":8787", "interface": a.interface},
    )


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cluster = make_cluster(a)
    cluster.scale(jobs=a.jobs)
    log.info("scheduler address: %s (dashboard %s)", cluster.scheduler_address, cluster.dashboard_link)
    sys.stdout.write(cluster.scheduler_address + "\n")
    sys.stdout.flush()
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()

"""Start a Dask cluster on SLURM GPU nodes for ``build-dataset`` (needs ``pip install dask-jobqueue``).

    python infra/dask/slurm_cluster.py --jobs 8 --partition gpu

prints the scheduler address and keeps the cluster alive until interrupted; pass that address as
the flow's ``address`` parameter (``--param task_runner=dask --param address=tcp://…:8786``).
One SLURM job = one Dask worker process with one thread and one GPU, so the segmenter and tracker
load once per GPU. Source videos and the output folder must be on a filesystem all nodes mount.
"""
from __future__ import annotations

import argparse
import logging
import signal


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=8, help="SLURM jobs = Dask workers = GPUs")
    p.add_argument("--partition", default="gpu")
    p.add_argument("--account", default=None)
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--memory", default="48GB")
    p.add_argument("--walltime", default="24:00:00")
    p.add_argument("--image-env", default="/opt/venv/bin/activate", help="environment to source in each job")
    p.add_argument("--scheduler-port", type=int, default=8786)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(
        queue=a.partition,
        account=a.account,
        cores=a.cores,
        processes=1,                      # one worker process per job ...
        memory=a.memory,
        walltime=a.walltime,
        job_extra_directives=["--gres=gpu:1"],
        job_script_prologue=[f"source {a.image_env}",
                             # Dask's task profiler costs ~9 % of a worker's time on these batches
                             "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"],
        worker_extra_args=["--nthreads", "1"],   # ... with one thread (one GPU model instance)
        scheduler_options={"port": a.scheduler_port, "dashboard_address": ":8787"},
    )
    cluster.scale(jobs=a.jobs)
    logging.info("scheduler address: %s (dashboard %s)", cluster.scheduler_address, cluster.dashboard_link)
    print(cluster.scheduler_address, flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()

"""The Prefect steps of infra/README.md against a real (temporary) server: the Kubernetes work pool
from our base job template, the deployments by the names the docs give, the Job a flow run of
build-dataset/cluster becomes (rendered by prefect-kubernetes' own model, then checked against the
Kubernetes schema), and the GPU concurrency limit bounding build-batch task runs."""
from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.infra.conftest import IMAGE, REPO
from tests.infra.test_manifests import k8s_errors

BIN = Path(sys.executable).parent


def _prefect(api: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PREFECT_API_URL=api, PYTHONPATH=str(REPO), COLUMNS="250", **env)
    return subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=300)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"{r.args}: {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_work_pool_deploy_and_the_job_a_flow_run_becomes(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    _ok(_prefect(prefect_api, "work-pool", "create", "trackgo-k8s", "--type", "kubernetes",
                 "--base-job-template", "infra/k8s/base-job-template.json"))
    _ok(_prefect(prefect_api, "work-pool", "create", "trackgo-compose", "--type", "process"))
    # the name form the old comment gave matches no deployment (Prefect matches the part before
    # the slash against the entrypoint's function); the documented forms do
    assert _prefect(prefect_api, "--no-prompt", "deploy", "--name", "build-dataset/cluster",
                    TRACKGO_WORKER_IMAGE=IMAGE).returncode != 0
    _ok(_prefect(prefect_api, "--no-prompt", "deploy", "--name", "cluster", TRACKGO_WORKER_IMAGE=IMAGE))
    _ok(_prefect(prefect_api, "--no-prompt", "deploy", "--name", "compose"))

    async def read():
        async with get_client() as client:
            dep = await client.read_deployment_by_name("build-dataset/cluster")
            compose = await client.read_deployment_by_name("build-dataset/compose")
            pool = await client.read_work_pool("trackgo-k8s")
            return dep, compose, pool

    dep, compose, pool = asyncio.run(read())
    assert dep.job_variables["image"] == IMAGE
    for d in (dep, compose):
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/trackgo"}}]
        assert d.parameters["settings"]["segmenter.options.deva_weights"] == "/weights/DEVA-propagation.pth"

    # the Job of one flow run, as the Kubernetes worker makes it
    cfg = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        pool.base_job_template, dep.job_variables))
    cfg.prepare_for_flow_run(FlowRun(flow_id=dep.flow_id, deployment_id=dep.id, name="quiet-fox"))
    job = copy.deepcopy(cfg.job_manifest)
    pod = job["spec"]["template"]["spec"]
    # prefect-kubernetes' model requires these two keys in the pod spec; the API server drops them
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    job["metadata"]["name"] = "quiet-fox"  # the API server makes it from generateName
    assert k8s_errors(job) == []
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    env = {e["name"]: e for e in container["env"]}
    assert env["PREFECT_API_URL"]["value"] == "http://prefect-server.trackgo.svc.cluster.local:4200/api"
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "trackgo-prefect-auth"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/weights"}
    # the command it runs exists here
    r = subprocess.run([str(BIN / container["args"][0]), *container["args"][1:], "--help"], capture_output=True,
                       text=True, env=dict(os.environ, PREFECT_API_URL=prefect_api))
    assert r.returncode == 0, r.stderr[-2000:]


def test_gpu_limit_bounds_batches_and_settings_reach_the_build(prefect_api, tmp_path, sample_videos):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    from flows.build_dataset import build_dataset_flow

    _ok(_prefect(prefect_api, "concurrency-limit", "create", "trackgo-gpu", "1"))
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{sample_videos['carphone']}\n{sample_videos['bikes']}\n")
    out = tmp_path / "out"
    state = build_dataset_flow(source=str(listing), output=str(out), num_frames=8, width=256, height=144,
                               clips_per_video=1, batch_size=1, task_runner="thread", max_workers=2, previews=0,
                               progress_bar=False, settings={"filters.min_median_motion": 0.25,
                                                             "tracker.options.win_size": 15},
                               return_state=True)
    assert state.is_completed()
    recorded = json.loads((out / "build_config.json").read_text())
    recorded = recorded.get("config", recorded)
    assert recorded["filters"]["min_median_motion"] == 0.25
    assert recorded["tracker"] == {"name": "lk", "options": {"win_size": 15}}

    async def batches():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="batch-")))

    runs = asyncio.run(batches())
    assert len(runs) == 2 and all("trackgo-gpu" in r.tags for r in runs)
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert spans[0][1] <= spans[1][0], f"two batches ran at once under a limit of 1: {spans}"

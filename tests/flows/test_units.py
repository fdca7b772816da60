"""Flow pieces without a Prefect server: helpers, task-runner registry, tasks via ``.fn()``."""
from __future__ import annotations

import base64
import io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from flows import artifacts
from flows.build_dataset import (
    _retry_transient,
    batch_task_with,
    build_batch_task,
    finalize_task,
    make_build_config,
    plan_task,
)
from flows.task_runners import TASK_RUNNER_NAMES, make_task_runner
from trackgo_data.config import ConfigError


def _png_from_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_make_build_config_overrides_only_given_fields():
    base = make_build_config("local")
    cfg = make_build_config("local", num_frames=8, width=256, height=144, shard_maxcount=7, clips_per_video=2)
    assert (cfg.clip.num_frames, cfg.clip.width, cfg.clip.height) == (8, 256, 144)
    assert cfg.clip.max_clips_per_video == 2 and cfg.shards.maxcount == 7
    assert cfg.clip.stride == base.clip.stride and cfg.segmenter == base.segmenter
    assert make_build_config("paper").tracker.name != base.tracker.name
    with pytest.raises(ConfigError):
        make_build_config("nope")


def test_batch_settings_retries_backoff_and_concurrency_tag():
    """Retries and the concurrency tag are run settings; results are never cached by Prefect (the
    library's per-source records are the cache) nor persisted."""
    from prefect.cache_policies import NO_CACHE

    t = batch_task_with(retries=5, retry_delay_seconds=2.0, concurrency_tag="trackgo-gpu")
    assert t.retries == 5 and t.retry_delay_seconds == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert t.tags == {"trackgo-gpu"} and t.retry_jitter_factor == 0.5
    assert t.cache_policy is NO_CACHE and not t.persist_result
    plain = batch_task_with(retries=0, retry_delay_seconds=1.0, concurrency_tag=None)
    assert plain.retries == 0 and plain.tags == set()


def test_retry_only_transient_errors():
    from prefect.states import Failed

    assert _retry_transient(None, None, Failed(data=OSError("nfs hiccup"))) is True
    assert _retry_transient(None, None, Failed(data=RuntimeError("cuda oom"))) is True
    assert _retry_transient(None, None, Failed(data=ConfigError("bad key"))) is False
    assert _retry_transient(None, None, Failed(data=ValueError("bad arg"))) is False
    # a machine problem in a batch (backend cannot load, CUDA, out of memory) is retried
    from trackgo_data.process import InfrastructureError

    assert _retry_transient(None, None, Failed(data=InfrastructureError("the tracker cannot load"))) is True


def test_task_runner_registry():
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert set(TASK_RUNNER_NAMES) == {"thread", "process", "dask", "ray"}
    r = make_task_runner("thread", max_workers=3)
    assert isinstance(r, ThreadPoolTaskRunner) and r._max_workers == 3
    assert make_task_runner("thread")._max_workers == 1  # models are shared: one thread unless asked
    assert isinstance(make_task_runner("process", max_workers=2), ProcessPoolTaskRunner)
    d = make_task_runner("dask", address="tcp://127.0.0.1:8786")
    assert isinstance(d, DaskTaskRunner) and d.address == "tcp://127.0.0.1:8786"
    local = make_task_runner("dask", max_workers=2)
    assert local.address is None and local.cluster_kwargs["n_workers"] == 2
    from flows.task_runners.dask import local_cluster, threads_per_process

    assert local.cluster_class is local_cluster
    assert [threads_per_process(n, cpus=8) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    with pytest.raises(ValueError, match="n_workers"):
        threads_per_process(0, cpus=2)
    with pytest.raises(ValueError, match="unknown task_runner"):
        make_task_runner("spark")
    with pytest.raises(ValueError, match="no address"):
        make_task_runner("thread", address="tcp://x:1")
    with pytest.raises(ValueError, match="max_workers"):
        make_task_runner("thread", max_workers=0)


def test_ray_backend_names_the_missing_extra():
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"trackgo\[ray\]"):
            make_task_runner("ray")
    else:
        assert type(make_task_runner("ray")).__name__ == "RayTaskRunner"


def test_summary_table_hand_computed():
    summary = {"sources": 3, "batches": 2, "clips": 10, "accepted": 6, "rejected": 4,
               "rejected_by_reason": {"scene_cut": 1, "empty_file": 3}, "shard_bytes_per_sample": 1234.6,
               "seconds": {"decode": 1.5, "track": 0.25}, "sources_processed": 1, "sources_removed": 2}
    rows = {r["item"]: r["value"] for r in artifacts.summary_table(summary, wall_seconds=4.0)}
    assert rows["accepted"] == 6 and rows["rejected"] == 4
    assert rows["sources processed by this run"] == 1 and rows["sources removed (rows left the manifest)"] == 2
    assert rows["rejected: empty_file"] == 3 and rows["rejected: scene_cut"] == 1
    assert rows["clips/s (wall)"] == 2.5
    assert rows["stage decode (s, summed over workers)"] == 1.5
    assert rows["shard bytes per accepted sample"] == 1234


def test_histograms_markdown_counts_and_images():
    rows = [
        {"status": "accepted", "median_motion_px": 2.0, "num_points": 16, "num_components": 1},
        {"status": "accepted", "median_motion_px": 4.0, "num_points": 48, "num_components": 3},
        {"status": "rejected", "median_motion_px": 100.0, "num_points": 5, "num_components": 9},
    ]
    md = artifacts.histograms_markdown(rows)
    uris = re.findall(r"\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", md)
    assert len(uris) == 3
    for uri in uris:
        img = _png_from_uri(uri)
        assert img.size == (320, 208)  # 4 x 2.6 in at 80 dpi
    # only accepted clips are counted: median of motion (2, 4) = 3, of points (16, 48) = 32
    assert "(n=2) median 3.00, min 2.00, max 4.00" in md
    assert "(n=2) median 32.00, min 16.00, max 48.00" in md
    assert "(n=2) median 2.00, min 1.00, max 3.00" in md


def test_histogram_png_depends_on_values():
    a = artifacts.histogram_png([1, 1, 1, 5], "t", "x")
    b = artifacts.histogram_png([1, 5, 5, 5], "t", "x")
    empty = artifacts.histogram_png([], "t", "x")
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a != b and empty != a


def test_tasks_via_fn_and_previews(tmp_path, flow_sources, build_cfg, reference_build):
    """plan → one batch → rerun (reused) → finalize, called as plain functions; previews match a
    second decoding of the shard done with tarfile."""
    out = tmp_path / "out"
    plan = plan_task.fn(str(flow_sources), str(out), build_cfg, 1)
    specs = plan.batches
    assert len(specs) == 3 and (out / "build_config.json").is_file() and plan.sources_to_run == 3
    ref_out, _ = reference_build
    assert {s.batch_id for s in specs} == {p.stem for p in (ref_out / "parts").glob("*.parquet")}
    carphone = next(s for s in specs if "carphone" in s.sources[0])
    res = build_batch_task.fn(carphone, build_cfg, str(out))
    assert not res.reused and res.rows and all(r["batch_id"] == carphone.batch_id for r in res.rows)
    again = build_batch_task.fn(carphone, build_cfg, str(out))
    assert again.reused and [r["key"] for r in again.rows] == [r["key"] for r in res.rows]
    assert plan_task.fn(str(flow_sources), str(out), build_cfg, 1).sources_to_run == 2
    summary = finalize_task.fn(str(out), plan)
    assert summary["clips"] == len(res.rows) and summary["accepted"] == res.counts["accepted"]
    for shard in res.shards:  # byte-identical to the plain loop's shard of the same batch
        assert (out / shard).read_bytes() == (ref_out / shard).read_bytes()

    from trackgo_data.render import overlay_tracks
    from trackgo_data.shards import read_manifest

    rows = read_manifest(out / "manifest.parquet")
    acc = [r for r in rows if r["status"] == "accepted"]
    assert acc, "carphone should give at least one accepted clip at 256x144"
    images = artifacts.preview_images(out, rows, limit=1, max_width=1024)
    assert [k for k, _ in images] == [acc[0]["key"]]
    with tarfile.open(out / acc[0]["shard"]) as tar:
        m = {n.name.split(".", 1)[1]: tar.extractfile(n).read() for n in tar.getmembers()
             if n.name.startswith(acc[0]["key"] + ".")}
    image = np.array(Image.open(io.BytesIO(m["image.png"])).convert("RGB"))
    expect = overlay_tracks(image, np.load(io.BytesIO(m["tracks.npy"])), np.load(io.BytesIO(m["visibility.npy"])),
                            np.load(io.BytesIO(m["components.npy"])))
    got = np.array(Image.open(io.BytesIO(images[0][1])).convert("RGB"))
    np.testing.assert_array_equal(got, expect)
    assert (out / "previews" / f"{acc[0]['key']}.png").read_bytes() == images[0][1]
    md = artifacts.previews_markdown(images)
    assert md.count("data:image/png;base64,") == 1 and acc[0]["key"] in md


def test_prefect_yaml_deployments():
    """prefect.yaml: pinned 3.x, explicit pull step, the deployments the scripts rely on, and
    parameters that the flows accept."""
    import inspect
    import re as _re
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "prefect.yaml").read_text())
    assert _re.fullmatch(r"3\.\d+\.\d+", str(doc["prefect-version"]))
    assert "prefect.deployments.steps.set_working_directory" in doc["pull"][0]
    flows = {"flows/build_dataset.py:build_dataset_flow": "build-dataset",
             "flows/train.py:train_flow": "train", "flows/eval_vipseg.py:eval_vipseg_flow": "eval-vipseg"}
    deployed = set()
    for dep in doc["deployments"]:
        assert dep["entrypoint"] in flows
        deployed.add((flows[dep["entrypoint"]], dep["name"]))
        if not (root / dep["entrypoint"].split(":")[0]).is_file():
            continue  # a flow not written yet is skipped by scripts/server.sh as well
        fl = load_flow_from_entrypoint(str(root / dep["entrypoint"]))
        assert fl.name == flows[dep["entrypoint"]]
        params = inspect.signature(fl.fn).parameters
        assert set(dep.get("parameters", {})) <= set(params), dep["name"]
    assert {("build-dataset", "local"), ("build-dataset", "cluster"), ("train", "local"),
            ("eval-vipseg", "local")} <= deployed
    cluster = next(d for d in doc["deployments"] if d["name"] == "cluster")
    assert cluster["parameters"]["task_runner"] == "dask" and cluster["parameters"]["address"].startswith("tcp://")
    # scripts/server.sh registers exactly the */local entrypoints of prefect.yaml
    text = (root / "scripts" / "server.sh").read_text()
    listed = set(_re.search(r'LOCAL_DEPLOYMENTS="([^"]+)"', text).group(1).split())
    assert listed == {d["entrypoint"] for d in doc["deployments"] if d["name"] == "local"}


def test_flow_loaded_from_its_entrypoint_pickles_for_dask_workers(tmp_path):
    """A Prefect runner/worker loads prefect.yaml's entrypoint by path; the batch task it then
    sends to Dask must unpickle in a process that only has the repository on its path (the
    file's own module name, "build_dataset", would not import there)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cloudpickle
    from prefect.utilities.importtools import import_object

    repo = Path(__file__).resolve().parents[2]
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        flow = import_object("flows/build_dataset.py:build_dataset_flow")
    finally:
        os.chdir(cwd)
    assert flow.fn.__module__ == "flows.build_dataset"
    batch_task = sys.modules[flow.fn.__module__].build_batch_task
    blob = tmp_path / "task.pkl"
    blob.write_bytes(cloudpickle.dumps(batch_task))
    code = "import pickle, sys; t = pickle.load(open(sys.argv[1], 'rb')); print(t.fn.__module__, t.name)"
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-c", code, str(blob)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["flows.build_dataset", "build-batch"]

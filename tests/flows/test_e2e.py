"""End to end through the real deployment path: scripts/server.sh up (Prefect server on a free
loopback port + process worker + `prefect deploy` from prefect.yaml), a plain
`prefect deployment run build-dataset/local … --watch` with no API URL in the environment, then
scripts/server.sh down. Everything lives under tmp (Prefect home, profiles, server state)."""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from flows.build_dataset import make_build_config
from trackgo_data.build import build_dataset
from trackgo_data.inspect import inspect_shards
from trackgo_data.render import render_trajectories
from trackgo_data.sample import decode_sample
from trackgo_data.shards import read_manifest

from tests.processes import alive, free_port

from .conftest import CLIP

REPO = Path(__file__).resolve().parents[2]
PREFECT = REPO / ".venv" / "bin" / "prefect"


def _reference_tracks(out: Path, key: str) -> np.ndarray:
    """tracks of sample ``key`` in the build under ``out``."""
    import io

    (row,) = [r for r in read_manifest(out / "manifest.parquet") if r["key"] == key]
    with tarfile.open(out / row["shard"]) as tar:
        return np.load(io.BytesIO(tar.extractfile(f"{key}.tracks.npy").read()))


@pytest.mark.slow
def test_server_deploy_run_down(tmp_path, sample_videos):
    port = free_port()
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), TRACKGO_PREFECT_DIR=str(state),
               TRACKGO_PREFECT_PORT=str(port), PREFECT_BIN=str(PREFECT))
    out = tmp_path / "out"

    def sh(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    pids: list[int] = []
    try:
        up = sh("bash", str(REPO / "scripts" / "server.sh"), "up")
        assert up.returncode == 0, up.stdout + up.stderr
        pids = [int((state / "run" / f"{n}.pid").read_text()) for n in ("server", "worker")]
        assert all(alive(p) for p in pids)
        assert (state / "logs" / "server.log").is_file() and (state / "logs" / "worker.log").is_file()
        # the user's profile now points at the server: no PREFECT_API_URL in the environment
        assert f"127.0.0.1:{port}/api" in (tmp_path / "home" / "profiles.toml").read_text()
        again = sh("bash", str(REPO / "scripts" / "server.sh"), "up")
        assert again.returncode == 0 and "already running" in again.stderr
        assert [int((state / "run" / f"{n}.pid").read_text()) for n in ("server", "worker")] == pids

        src = sample_videos["carphone"]
        run = sh(str(PREFECT), "deployment", "run", "build-dataset/local",
                 "--param", f"source={src}", "--param", f"output={out}",
                 "--param", f"num_frames={CLIP['num_frames']}", "--param", f"width={CLIP['width']}",
                 "--param", f"height={CLIP['height']}", "--param", "clips_per_video=1", "--watch")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"127.0.0.1:{port}" in run.stdout or "Completed" in run.stdout

        rows = read_manifest(out / "manifest.parquet")
        assert rows and {r["source"] for r in rows} == {str(src)}
        accepted = [r for r in rows if r["status"] == "accepted"]
        assert accepted, [(r["key"], r["reason"]) for r in rows]       # carphone's clip is accepted
        shards = sorted((out / "shards").glob("*.tar"))
        assert [p.name for p in shards] == sorted({Path(r["shard"]).name for r in accepted})
        report = inspect_shards(shards)                            # every member valid, P in the palette
        assert report.ok and report.samples == len(accepted), report.problems
        # the deployment ran the library's stages: the same samples as a plain in-process build
        reference = build_dataset(str(src), tmp_path / "reference", make_build_config(
            "local", CLIP["num_frames"], CLIP["width"], CLIP["height"], clips_per_video=1), progress=False)
        assert reference["accepted"] == len(accepted)
        for row in accepted:
            with tarfile.open(out / row["shard"]) as tar:
                members = {name.split(".", 1)[1]: tar.extractfile(name).read() for name in tar.getnames()
                           if name.startswith(row["key"] + ".")}
            sample = decode_sample(members)
            assert sample.video.shape == (CLIP["num_frames"], CLIP["height"], CLIP["width"], 3)
            np.testing.assert_array_equal(sample.trajectory, render_trajectories(
                sample.tracks, sample.visibility, sample.components, CLIP["height"], CLIP["width"]))
            np.testing.assert_array_equal(sample.tracks, _reference_tracks(tmp_path / "reference", row["key"]))
    finally:
        down = sh("bash", str(REPO / "scripts" / "server.sh"), "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert not [p for p in pids if alive(p)], "server.sh down left a process running"
    assert not (state / "run" / "server.pid").exists()

"""End to end through the real deployment path: scripts/server.sh up (Prefect server on a free
loopback port + process worker + `prefect deploy` from prefect.yaml), a plain
`prefect deployment run build-dataset/local … --watch` with no API URL in the environment, then
scripts/server.sh down. Everything lives under tmp (Prefect home, profiles, server state)."""
from __future__ import annotations

import os
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from trackgo_data.shards import read_manifest

from .conftest import CLIP

REPO = Path(__file__).resolve().parents[2]
PREFECT = REPO / ".venv" / "bin" / "prefect"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_server_deploy_run_down(tmp_path, sample_videos):
    port = _free_port()
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
        assert all(_alive(p) for p in pids)
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
        acc = [r for r in rows if r["status"] == "accepted"]
        for r in acc:
            with tarfile.open(out / r["shard"]) as tar:
                names = tar.getnames()
            assert f"{r['key']}.trajectory.mp4" in names and f"{r['key']}.meta.json" in names
        shards = sorted(p.name for p in (out / "shards").iterdir())
        assert shards == sorted({Path(r["shard"]).name for r in acc})
    finally:
        down = sh("bash", str(REPO / "scripts" / "server.sh"), "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert not [p for p in pids if _alive(p)], "server.sh down left a process running"
    assert not (state / "run" / "server.pid").exists()

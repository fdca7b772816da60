"""`make server DB=postgres`: scripts/server.sh brings up a private PostgreSQL cluster (initdb into
the state folder, or where the cluster's user can reach when run as root; socket only) and the
Prefect server on it; build-dataset runs against it and its task runs land in PostgreSQL; `down`
stops server, worker and PostgreSQL. Skipped only where PostgreSQL's binaries are absent."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trackgo_data.shards import read_manifest

from tests.processes import alive, free_port

from .conftest import cli_args

REPO = Path(__file__).resolve().parents[2]
PREFECT = REPO / ".venv" / "bin" / "prefect"
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PG_BIN, reason="PostgreSQL is not installed (apt-get install postgresql)")]


def test_server_on_postgres(tmp_path, flow_sources):
    port = free_port()
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), TRACKGO_PREFECT_DIR=str(state), TRACKGO_PREFECT_PORT=str(port),
               PREFECT_BIN=str(PREFECT), TRACKGO_PREFECT_DB="postgres")

    def sh(*args: str, timeout: int = 420, **extra) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True,
                              timeout=timeout)

    def psql(sql: str) -> str:
        url = sh("bash", str(REPO / "scripts" / "postgres.sh"), "url").stdout.strip()
        sock = url.split("host=", 1)[1]
        psql_bin = str(Path(PG_BIN[-1]).parent / "psql")
        return sh(psql_bin, "-h", sock, "-U", "prefect", "-d", "prefect", "-tAc", sql).stdout.strip()

    pids: list[int] = []
    try:
        up = sh("bash", str(REPO / "scripts" / "server.sh"), "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "database postgres" in up.stdout and "postgres: running" in up.stdout, up.stdout
        pids = [int((state / "run" / f"{n}.pid").read_text()) for n in ("server", "worker")]
        assert not (state / "prefect.db").exists()                         # not the SQLite file
        other = sh("bash", str(REPO / "scripts" / "server.sh"), "up", TRACKGO_PREFECT_DB="sqlite")
        assert other.returncode == 1 and "runs on postgres" in other.stderr

        out = tmp_path / "out"
        run = sh(sys.executable, "-m", "flows.build_dataset", *cli_args(flow_sources, out),
                 PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PYTHONPATH=os.pathsep.join(
                     [str(REPO), os.environ.get("PYTHONPATH", "")]))
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert len(read_manifest(out / "manifest.parquet")) == 3
        deadline = time.monotonic() + 60
        while True:  # task runs reach the database through the server's event pipeline
            names = psql("select name from task_run order by name").split()
            if len([n for n in names if n.startswith("batch-")]) == 3 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert sorted(n.split("-")[0] for n in names) == ["batch", "batch", "batch", "finalize", "plan"], names
        assert psql("select count(*) from flow_run where state_type = 'COMPLETED'") == "1"
    finally:
        down = sh("bash", str(REPO / "scripts" / "server.sh"), "down", timeout=180)
        status = sh("bash", str(REPO / "scripts" / "postgres.sh"), "status")
        sh("bash", str(REPO / "scripts" / "postgres.sh"), "destroy", timeout=180)
    assert down.returncode == 0, down.stderr
    assert "postgres: stopped" in status.stdout, status.stdout
    assert not [p for p in pids if alive(p)], "server.sh down left a process running"

"""Every command an image or manifest runs exists in this environment (the one the install recipe
makes, as in the image) and knows the options written there: each runs with ``--help`` appended,
and every ``--option`` written must be one its help lists (``--help`` alone stops before unknown
options are noticed). The launchers' commands are parsed by the launchers' own argument parsers."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import REPO, dockerfile_instructions, read_manifests

BIN = Path(sys.executable).parent


def _help(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``argv --help`` with this environment's executables first on PATH."""
    exe = argv[0]
    if exe in ("python", "python3"):
        argv = [sys.executable, *argv[1:]]
    elif (BIN / exe).exists():
        argv = [str(BIN / exe), *argv[1:]]
    full_env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    COLUMNS="250", **(env or {}))
    r = subprocess.run([*argv, "--help"], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{' '.join(argv)} --help: {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    text = r.stdout + r.stderr
    assert "usage" in text.lower()
    unknown = [t for t in argv if t.startswith("--")
               and not re.search(rf"(?<![\w-]){re.escape(t.split('=')[0])}(?![\w-])", text)]
    assert not unknown, f"{' '.join(argv)}: options its --help does not list: {unknown}"
    return r


def _manifest_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every container command in the Kubernetes and compose manifests run with our image."""
    out = []
    (cluster,) = read_manifests("infra/dask/dask-cluster.yaml")
    for part in ("worker", "scheduler"):
        (c,) = cluster["spec"][part]["spec"]["containers"]
        # the operator fills $(DASK_WORKER_NAME) in: Kubernetes expands it in the pod
        out.append((f"dask-cluster {part}", [a.replace("$(DASK_WORKER_NAME)", "w-0") for a in c["args"]]))
    compose = yaml.safe_load((REPO / "infra/compose/docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        if "command" in svc and "prefect" in svc["command"][0]:
            out.append((f"compose {name}", list(svc["command"])))
    (_, cmd), = [(k, a) for k, a in dockerfile_instructions() if k == "CMD"]
    out.append(("image CMD", json.loads(cmd)))
    return out


@pytest.mark.parametrize("where,argv", _manifest_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_manifest_commands_exist(where, argv):
    _help(argv)


def test_training_job_and_slurm_commands_exist(tmp_path):
    # Kubernetes: bash -c "…exec infra/train/launch.sh multinode <train args>"
    _, job = read_manifests("infra/train/k8s-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["bash", "-c"] and container["workingDir"] == "/opt/trackgo"
    line = shlex.split(container["args"][0])
    start = line.index("exec") + 1
    script, mode, *train_args = line[start:]
    # SLURM: the step runs the same script
    sbatch = (REPO / "infra/train/slurm.sbatch").read_text()
    assert f"exec {script} multinode" in sbatch
    _help([script])
    _help(["python", "-m", "trackgo_model.train", *train_args])
    # what launch.sh execs, with its options, through each launcher's own parser
    shim = tmp_path / "python"
    shim.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_OUT"\n')
    shim.chmod(0o755)
    for launcher in ("accelerate", "torchrun"):
        out = tmp_path / f"{launcher}.argv"
        env = dict(os.environ, PYTHON=str(shim), ARGV_OUT=str(out), LAUNCHER=launcher, NNODES="2",
                   NODE_RANK="1", MASTER_ADDR="trackgo-train-0.trackgo-train")
        subprocess.run(["bash", script, mode, *train_args], cwd=REPO, env=env, check=True)
        argv = out.read_text().splitlines()
        assert argv[0] == "-m"
        module, launch_args = argv[1], argv[2:]
        if module == "accelerate.commands.launch":
            from accelerate.commands.launch import launch_command_parser

            ns = launch_command_parser().parse_args(launch_args)
            assert (ns.num_machines, ns.num_processes, ns.machine_rank) == (2, 16, 1)
            assert Path(REPO / ns.config_file).is_file()
            assert ns.module and ns.training_script == "trackgo_model.train"
        else:
            from torch.distributed.run import get_args_parser

            ns = get_args_parser().parse_args(launch_args)
            assert (ns.nnodes, ns.nproc_per_node, ns.node_rank) == ("2", "8", 1)
            assert ns.module and ns.training_script == "trackgo_model.train"
        assert ns.training_script_args == train_args


def test_slurm_dask_worker_command_exists():
    import importlib.util

    spec = importlib.util.spec_from_file_location("slurm_cluster", REPO / "infra/dask/slurm_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cluster = mod.make_cluster(mod.parse_args(["--scheduler-port", "0", "--python", sys.executable]))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "activate" not in script  # no environment that only exists inside the image
    (line,) = [ln for ln in script.splitlines() if "distributed.cli" in ln]
    argv = shlex.split(line)
    assert argv[0] == sys.executable and "--nthreads" in argv and argv[argv.index("--nthreads") + 1] == "1"
    _help([*argv[:3], *argv[4:]])  # without the scheduler address (a positional)
    _help(["python", "infra/dask/slurm_cluster.py"])


def test_install_recipe_commands_exist():
    _help(["scripts/install.sh"])
    r = subprocess.run(["make", "--no-print-directory", "-n", "setup-paper"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "scripts/install.sh paper" in r.stdout


def _readme_commands(rel: str) -> list[str]:
    """Command lines of the bash blocks of a README (continuations joined, comments dropped)."""
    text = (REPO / rel).read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        buf = ""
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if not line and not buf:
                continue
            buf += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                lines.append(buf.strip())
                buf = ""
    return [ln for ln in lines if ln]


#: tools of the operator's machine or the cluster, not of this environment (prerequisites in infra/README.md)
EXTERNAL = {"kubectl", "helm", "docker", "sbatch", "squeue", "scancel", "envsubst", "git", "cp", "export",
            "cd", "mkdir", "curl", "ssh", "source", "sinfo", "make"}


@pytest.mark.parametrize("readme", ["infra/README.md", "infra/compose/README.md", "infra/k8s/README.md",
                                    "infra/dask/README.md", "infra/docker/README.md"])
def test_readme_steps_are_commands_that_exist(readme):
    commands = _readme_commands(readme)
    assert commands, readme
    for line in commands:
        for part in re.split(r"\s*(?:&&|\|)\s*", line):
            words = shlex.split(part.replace("$(", "").replace(")", ""))
            for stop in (">", ">>", "&", "<"):
                words = words[:words.index(stop)] if stop in words else words
            while words and re.fullmatch(r"\w+=.*", words[0]):
                words = words[1:]  # VAR=value prefixes
            if not words or words[0] in EXTERNAL:
                continue
            if words[0] in ("prefect", "python", "trackgo", "dask", "torchrun", "accelerate") or \
                    words[0].startswith(("infra/", "scripts/")):
                _help(words)
            else:
                raise AssertionError(f"{readme}: unknown command {words[0]!r} in: {line}")

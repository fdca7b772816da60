"""Helpers of the infra checks: the repository's manifests, read as an operator's tools read them."""
from __future__ import annotations

import os
import re
import string
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
#: what an operator puts in before applying (envsubst '$TRACKGO_WORKER_IMAGE')
IMAGE = "registry.example.com/trackgo-gpu-worker:1.0"

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def read_manifests(rel: str) -> list[dict]:
    """The YAML documents of ``rel`` after ``envsubst '$TRACKGO_WORKER_IMAGE'`` (only that name)."""
    text = (REPO / rel).read_text()
    text = text.replace("${TRACKGO_WORKER_IMAGE}", IMAGE)
    return [d for d in yaml.safe_load_all(text) if d is not None]


def dockerfile_instructions(rel: str = "infra/docker/Dockerfile.gpu-worker") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in (REPO / rel).read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), re.sub(r"\s+", " ", rest.strip())))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in dockerfile_instructions() if k == "ARG" and "=" in a)


def substitute(text: str, values: dict[str, str]) -> str:
    """${NAME} / $NAME of a Dockerfile ARG, as the builder expands it."""
    return string.Template(text).safe_substitute(values)


@pytest.fixture(scope="module")
def prefect_api():
    """A real temporary Prefect server (SQLite) for the module; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()

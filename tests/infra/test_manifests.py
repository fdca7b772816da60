"""Every manifest against its schema, with the tools made for each: Kubernetes objects against the
official schemas (kubernetes-validate, strict: a misspelt field is an error, not silently dropped),
the DaskCluster against the CRD of the dask-kubernetes operator we pin, the compose file against the
compose specification, accelerate configs through accelerate's own config class, the Dockerfile
through hadolint and every shell script through shellcheck. Plus what a schema cannot see: paths
compose resolves, the database password reaching Prefect intact."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import IMAGE, REPO, read_manifests

K8S_VERSION = "1.33.0"
K8S_FILES = ["infra/k8s/namespace.yaml", "infra/k8s/volumes-pod.yaml", "infra/train/k8s-job.yaml"]
SHELL_SCRIPTS = [".ci/run", "scripts/install.sh", "scripts/server.sh", "scripts/dataset.sh",
                 "scripts/prefect_env.sh", "scripts/postgres.sh", "infra/train/launch.sh", "infra/train/slurm.sbatch"]
BIN = Path(sys.executable).parent


def k8s_errors(resource: dict) -> list[str]:
    """Strict validation of one Kubernetes object against the official schema (offline)."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except jsonschema.ValidationError as exc:
        return [f"{resource['kind']}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except SchemaNotFoundError as exc:
        return [f"{resource['kind']}: no schema ({exc})"]
    return []


def _strict(schema):
    """An OpenAPI structural schema → JSON schema that refuses unknown fields (as kubectl --validate=strict)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


def _crd_schema(kind: str) -> dict:
    crds = resources.files("dask_kubernetes") / "operator/deployment/helm/dask-kubernetes-operator/crds"
    for f in crds.iterdir():
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            # apiVersion/kind/metadata are the API server's; spec is the operator's
            return {**schema, "properties": {**schema["properties"], "spec": _strict(schema["properties"]["spec"])}}
    raise AssertionError(f"no CRD for {kind}")


def _as_pod(spec: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "trackgo"}, "spec": spec}


def test_kubernetes_objects_are_valid():
    errors = []
    for rel in K8S_FILES:
        docs = read_manifests(rel)
        assert docs, rel
        for doc in docs:
            errors += [f"{rel}: {e}" for e in k8s_errors(doc)]
    assert errors == [], "\n".join(errors)


def test_a_misspelt_field_is_caught():
    job = copy.deepcopy(read_manifests("infra/train/k8s-job.yaml")[1])
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert len(k8s_errors(job)) == 1


def test_dask_cluster_against_the_operator_crd_and_pod_schema():
    import jsonschema

    (cluster,) = read_manifests("infra/dask/dask-cluster.yaml")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["kind"] == "DaskCluster"
    errors = [e.message for e in jsonschema.Draft7Validator(_crd_schema("DaskCluster")).iter_errors(cluster)]
    for part in ("worker", "scheduler"):
        errors += k8s_errors(_as_pod(cluster["spec"][part]["spec"], f"dask-{part}"))
    assert errors == [], "\n".join(errors)
    # the scheduler Service is the deployment's address
    cluster_deploy = _deployment("cluster")
    assert cluster_deploy["parameters"]["address"] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    # the one image of the flow runs, and what the image's user needs
    for part in ("worker", "scheduler"):
        pod = cluster["spec"][part]["spec"]
        assert [c["image"] for c in pod["containers"]] == [IMAGE]
        assert pod["securityContext"]["fsGroup"] == 1000
    worker = cluster["spec"]["worker"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    env = {e["name"]: e for e in worker["containers"][0]["env"]}
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "trackgo-prefect-auth"


def test_compose_file_against_the_compose_spec():
    import jsonschema

    schema = json.loads((resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json").read_text())
    compose = yaml.safe_load((REPO / "infra/compose/docker-compose.yml").read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert errors == []


def _compose_env(service: str, env: dict[str, str]) -> dict[str, str]:
    """A service's environment with ${VAR}, ${VAR:-default} and ${VAR:?msg} interpolated from ``env``."""
    compose = yaml.safe_load((REPO / "infra/compose/docker-compose.yml").read_text())

    def interp(value: str) -> str:
        def one(m):
            name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
            if name in env and env[name] != "":
                return env[name]
            if op == ":?":
                raise KeyError(f"{name}: {arg}")
            return arg if op == ":-" else ""
        return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, value)

    return {k: interp(str(v)) for k, v in compose["services"][service]["environment"].items()}


def test_compose_database_password_reaches_prefect_intact():
    from prefect.settings import Settings
    from sqlalchemy.engine import make_url

    password = "p@ss:w/rd#%?"
    env = _compose_env("prefect-server", {"POSTGRES_PASSWORD": password})
    settings = Settings(**{"server": {"database": {
        k.removeprefix("PREFECT_SERVER_DATABASE_").lower(): v for k, v in env.items()
        if k.startswith("PREFECT_SERVER_DATABASE_")}}})
    url = make_url(settings.server.database.connection_url.get_secret_value())
    assert (url.password, url.host, url.port, url.database) == (password, "postgres", 5432, "prefect")
    with pytest.raises(KeyError):  # no password, no start
        _compose_env("prefect-server", {})


def test_compose_paths_and_pool():
    compose_dir = REPO / "infra/compose"
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    # relative paths resolve against the compose file's folder: they must land in the repository
    assert (compose_dir / worker["build"]["context"]).resolve() == REPO
    assert (compose_dir / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    for vol in worker["volumes"]:
        m = re.fullmatch(r"\$\{\w+:-([^}]+)\}:(/\w+)(:ro)?", vol)
        assert m, f"host folders are ${{VAR:-default}}: {vol}"
        assert (compose_dir / m.group(1)).resolve() == REPO / m.group(2).lstrip("/"), vol
    # the worker's pool is served by a deployment that runs from the image's checkout
    pool = worker["command"][worker["command"].index("--pool") + 1]
    served = [d for d in _deployments() if _pool_name(d) == pool]
    assert served and all(d["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
                          == "/opt/trackgo" for d in served)


def test_dockerignore_keeps_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".git", "data/", "runs/", ".prefect/", ".env", "build/"):
        assert path in ignored


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import ClusterConfig

    for path in sorted((REPO / "infra/train").glob("accelerate-*.yaml")):
        cfg = ClusterConfig.from_yaml_file(str(path))
        assert cfg.num_processes >= 1 and cfg.num_machines >= 1, path


def test_dockerfile_passes_hadolint():
    r = subprocess.run([str(BIN / "hadolint"), "infra/docker/Dockerfile.gpu-worker"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shell_scripts_pass_shellcheck():
    found = {str(p.relative_to(REPO)) for p in REPO.rglob("*.sh") if ".venv" not in p.parts and "build" not in p.parts}
    assert found <= set(SHELL_SCRIPTS), f"add new scripts to SHELL_SCRIPTS: {found - set(SHELL_SCRIPTS)}"
    r = subprocess.run([str(BIN / "shellcheck"), "-x", *SHELL_SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _pool_name(d: dict) -> str:
    return d["work_pool"]["name"]


def _deployment(name: str) -> dict:
    (d,) = [d for d in _deployments() if d["name"] == name and d["entrypoint"].startswith("flows/build_dataset.py")]
    return d


def test_deployment_parameters_fit_the_flow_and_reach_the_backends():
    import jsonschema
    from prefect.utilities.callables import parameter_schema

    from flows.build_dataset import build_dataset_flow, make_build_config

    schema = parameter_schema(build_dataset_flow).model_dump_for_openapi()
    for d in _deployments():
        if d["entrypoint"] != "flows/build_dataset.py:build_dataset_flow":
            continue
        params = d.get("parameters", {})
        jsonschema.validate(params, schema)
        if params.get("profile") != "paper":
            continue
        if "settings" not in params:  # a site's own paths (SLURM): given with each run, and said so
            assert "settings when running it" in d["description"], d["name"]
            continue
        cfg = make_build_config(params["profile"], settings=params.get("settings"))
        # weights come from the one volume, Co-Tracker's code from the image
        assert cfg.segmenter.options["deva_weights"].startswith("/weights/")
        assert cfg.segmenter.options["sam_weights"].startswith("/weights/")
        assert cfg.tracker.options["checkpoint"].startswith("/weights/")
        assert cfg.tracker.options["repo"] == "/opt/src/co-tracker"


def test_training_job_reads_what_build_dataset_writes():
    _, job = read_manifests("infra/train/k8s-job.yaml")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"][0].split()
    shards = next(a.split("=", 1)[1] for a in args if a.startswith("data.shards="))
    mount = next(m for m in container["volumeMounts"] if shards.startswith(m["mountPath"] + "/"))
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    template = json.loads((REPO / "infra/k8s/base-job-template.json").read_text())
    variables = template["variables"]["properties"]
    assert claim == variables["data_pvc"]["default"] and mount["mountPath"] == "/data"
    assert pod["terminationGracePeriodSeconds"] > int(
        next(e["value"] for e in container["env"] if e["name"] == "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"))

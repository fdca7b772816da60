"""One install recipe: `make setup-paper` (laptop, CI) and the worker image run the same steps,
and the Python and torch pins agree across pyproject.toml, scripts/install.sh, the Makefile, the
image and the environment these tests run in."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra.conftest import REPO, dockerfile_args, dockerfile_instructions, substitute

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _script_pins() -> dict[str, str]:
    text = (REPO / "scripts/install.sh").read_text()
    return dict(re.findall(r"^(TORCH_VERSION|TORCHVISION_VERSION)=(\S+)$", text, re.M))


def _requirement(name: str, reqs: list[str]) -> Requirement:
    found = [Requirement(r) for r in reqs if canonicalize_name(Requirement(r).name) == name]
    assert len(found) == 1, f"{name} should be listed once in {reqs}"
    return found[0]


def _dry_run(profile: str, **env: str) -> list[str]:
    out = subprocess.run(["bash", "scripts/install.sh", "--dry-run", profile], cwd=REPO, check=True,
                         capture_output=True, text=True, env=dict(os.environ, **env)).stdout
    return [ln[2:] for ln in out.splitlines() if ln.startswith("+ ")]


def test_torch_pins_agree():
    pins = _script_pins()
    torch, vision = Version(pins["TORCH_VERSION"]), Version(pins["TORCHVISION_VERSION"])
    project = PYPROJECT["project"]
    assert torch in _requirement("torch", project["dependencies"]).specifier
    assert vision in _requirement("torchvision", project["optional-dependencies"]["paper"]).specifier
    # the Makefile pins nothing itself: it only chooses the build (TORCH_INDEX)
    makefile = (REPO / "Makefile").read_text()
    assert not re.search(r"torch(vision)?==", makefile), "a torch pin in the Makefile: keep it in scripts/install.sh"
    # the image pins nothing either (it runs make setup-paper); its index is a build of that version
    assert not any(re.search(r"torch(vision)?==", a) for _, a in dockerfile_instructions())
    # and this environment was installed by the recipe
    assert Version(metadata.version("torch")).base_version == str(torch)
    assert Version(metadata.version("torchvision")).base_version == str(vision)


def test_python_pins_agree_and_state_the_truth():
    floor = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor, "requires-python should be one floor, >=X.Y"
    floor_v = Version(floor.group(1))
    here = Version(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert here >= floor_v
    # the image's Python (its base image tag) satisfies it
    base = substitute(dict(dockerfile_instructions())["FROM"], dockerfile_args())
    m = re.fullmatch(r"python:(\d+\.\d+)(\.\d+)?-\S+", base)
    assert m, f"the image should start from an official python image, not {base}"
    assert Version(m.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    # every installed dependency of ours supports the floor: a lower floor would promise an
    # install that pip cannot make with these pins
    names = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    for extra in ("test", "paper", "k8s", "slurm"):
        names |= {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"][extra]}
    names.discard("trackgo")
    too_new = {}
    for name in sorted(names):
        rp = metadata.metadata(name).get("Requires-Python")
        if rp and str(floor_v) + ".0" not in SpecifierSet(rp):
            too_new[name] = rp
    assert not too_new, f"requires-python {floor_v} is below what these need: {too_new}"
    # and the floor is not higher than needed: some dependency needs exactly it
    needs = [metadata.metadata(n).get("Requires-Python") or "" for n in names]
    assert any(f"{floor_v.major}.{floor_v.minor - 1}.0" not in SpecifierSet(rp) for rp in needs if rp)


def test_make_setup_paper_ci_and_image_are_one_code_path(tmp_path):
    # CI runs `make setup-paper`, the image runs `make setup-paper`, and the target runs the script
    ci = (REPO / ".ci/run").read_text()
    assert re.search(r"^make setup-paper$", ci, re.M)
    runs = [a for k, a in dockerfile_instructions() if k == "RUN" and "make setup-paper" in a]
    assert len(runs) == 1
    image_call = runs[0].split("&&")[0].strip()
    words = shlex.split(image_call)
    assert words[:2] == ["make", "setup-paper"]
    args = dockerfile_args()
    image_env = {k: substitute(v, args) for k, v in (w.split("=", 1) for w in words[2:])}
    recipe = subprocess.run(["make", "--no-print-directory", "-n", "setup-paper", *(f"{k}={v}" for k, v in image_env.items())],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    assert recipe.endswith("bash scripts/install.sh paper"), recipe
    laptop = subprocess.run(["make", "--no-print-directory", "-n", "setup-paper"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    assert laptop.split()[-3:] == recipe.split()[-3:]
    # the same steps in the same order: only the venv and the torch index differ
    assert image_env["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    clone = tmp_path / "deva"  # stands in for the clone the image makes at DEVA_SRC
    clone.mkdir()
    (clone / "setup.py").write_text("")
    image_steps = _dry_run("paper", **{**image_env, "DEVA_SRC": str(clone)})
    # a laptop's first install (a venv that does not exist yet: an existing one skips its steps)
    laptop_venv = str(tmp_path / "laptop" / ".venv")
    laptop_steps = _dry_run("paper", VENV=laptop_venv, TORCH_INDEX="", DEVA_SRC=str(clone))

    def normal(steps: list[str], venv: str) -> list[str]:
        return [s.replace(venv, "VENV").replace(f"--index-url {image_env['TORCH_INDEX']} ", "")
                for s in steps]

    assert normal(image_steps, "/opt/venv") == normal(laptop_steps, laptop_venv)
    assert any("--no-deps ./build/deva-src" in s for s in image_steps)  # DEVA without its dependencies
    assert any(".[test,paper]" in s.replace("\\", "") for s in image_steps)  # the paper extra


def test_install_script_refuses_unknown_profiles():
    r = subprocess.run(["bash", "scripts/install.sh", "--dry-run", "gpu"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument gpu" in r.stderr

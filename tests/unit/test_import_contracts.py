"""The import contracts of pyproject.toml ([tool.importlinter]: layers, no Prefect/Gradio below the
flows, no import cycle in any package) hold — checked by running import-linter's ``lint-imports`` as
CI would — and the same contracts fail on a scratch copy of the layout with a violation planted."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def lint_imports(cwd: Path, pythonpath: Path) -> tuple[int, dict[str, str]]:
    """Run ``lint-imports`` with the project's contracts on the packages found on ``pythonpath``:
    (exit status, {contract name: "KEPT" | "BROKEN"}); the full output on failure to parse."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.is_file() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    proc = subprocess.run([*cmd, "--no-cache", "--no-logo", str(PYPROJECT)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    status = dict(re.findall(r"^(.+) (KEPT|BROKEN)$", proc.stdout, flags=re.M))
    assert status, proc.stdout + proc.stderr
    return proc.returncode, status


@pytest.fixture(scope="module")
def project() -> tuple[int, dict[str, str], list[str]]:
    from importlinter.api import read_configuration

    names = [c["name"] for c in read_configuration(str(PYPROJECT))["contracts_options"]]
    rc, status = lint_imports(ROOT, ROOT)
    assert sorted(status) == sorted(names)  # every contract was checked
    return rc, status, names


def contract(name_part: str, **marks):
    return pytest.param(name_part, id=name_part, **marks)


@pytest.mark.parametrize("name_part", [
    contract("layers:"),
    contract("never import prefect or gradio"),
    contract("no import cycle in trackgo_data"),
    contract("no import cycle in trackgo_model"),
    contract("no import cycle in flows"),
    contract("no import cycle in studio"),
    contract("no import cycle in benchmarks"),
])
def test_contract_is_kept(project, name_part):
    _, status, names = project
    (name,) = [n for n in names if name_part in n]
    assert status[name] == "KEPT", f"{name}: run `lint-imports` in the repository root for the import that breaks it"


# one violation per contract, planted in an otherwise clean copy of the layout
PLANTED = {
    "layers:": {"trackgo_data/low.py": "import trackgo_model.high\n"},
    "flows | studio": {"flows/f.py": "from studio import s\n"},
    "never import prefect or gradio": {"trackgo_model/m.py": "import gradio\n"},
    "no import cycle in trackgo_model": {"trackgo_model/toy/a.py": "from trackgo_model.toy import b\n",
                                         "trackgo_model/toy/b.py": "from trackgo_model.toy import a\n"},
    "no import cycle in trackgo_data": {"trackgo_data/a.py": "import trackgo_data.b\n",
                                        "trackgo_data/b.py": "import trackgo_data.a\n"},
}


def scratch_layout(folder: Path, planted: dict[str, str]) -> Path:
    """Packages named like the project's, each importing the one below it, plus ``planted``."""
    files = {
        "trackgo_data/__init__.py": "", "trackgo_data/a.py": "", "trackgo_data/b.py": "",
        "trackgo_model/__init__.py": "import trackgo_data.a\n", "trackgo_model/high.py": "",
        "trackgo_model/toy/__init__.py": "", "trackgo_model/toy/a.py": "", "trackgo_model/toy/b.py": "",
        "flows/__init__.py": "import prefect\nimport trackgo_model\n", "studio/__init__.py": "import gradio\n",
        "studio/s.py": "import trackgo_model.high\n", "benchmarks/run.py": "import flows\nimport studio\n",
    }
    files.update(planted)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def test_contracts_catch_a_planted_violation(tmp_path):
    rc, status = lint_imports(tmp_path, scratch_layout(tmp_path / "clean", {}))
    assert rc == 0 and set(status.values()) == {"KEPT"}, status  # the clean layout passes
    for i, (which, planted) in enumerate(PLANTED.items()):
        rc, status = lint_imports(tmp_path, scratch_layout(tmp_path / f"bad{i}", planted))
        broken = [n for n, s in status.items() if s == "BROKEN"]
        assert rc != 0 and len(broken) == 1 and which in broken[0], (which, status)

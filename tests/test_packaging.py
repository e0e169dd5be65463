"""The dependency lists agree, and the repository layout is the fixed one."""
from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_name_the_same_packages():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(s) for s in py["dependencies"]}
    for extra in py.get("optional-dependencies", {}).values():
        wanted |= {_name(s) for s in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(s) for s in dep["pip"] if not s.startswith("-e")}
        else:
            conda.add(_name(dep))
    conda -= {"python", "pip"}
    assert conda | pip == wanted, f"only in environment.yml: {(conda | pip) - wanted}; only in pyproject: {wanted - (conda | pip)}"
    assert not conda & pip, f"listed twice in environment.yml: {conda & pip}"


def test_native_keras3_not_legacy():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(_name(d) == "tf-keras" for d in deps)
    import keras

    assert int(keras.__version__.split(".")[0]) >= 3


def test_fixed_layout_exists():
    for name in ("notebooks", "src/skinlesion", "dashboards", "webapp", "data", "tests", "environment.yml", "README.md"):
        assert (ROOT / name).exists(), name

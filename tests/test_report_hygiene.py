"""Committed files are portable and strict: no absolute path of the machine that wrote them, and
every JSON file parses as strict JSON (no NaN or Infinity; a value that cannot be computed is
``null`` and its record says why).

The scan covers every text file git tracks or would add (``git ls-files --cached --others
--exclude-standard``): reports, notebooks with their outputs, docs, code and tests.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Files allowed to hold a matching string, each with the reason. Keep it empty where possible:
# rewrite the text instead (e.g. `$(mktemp -d)` rather than a literal temporary folder).
ALLOWED: dict[str, str] = {
    "tests/test_report_hygiene.py": "states the patterns it searches for",
    "Dockerfile": "/tmp is the container's own writable folder (read-only image), not a folder of the writer's machine",
    "compose.yaml": "mounts a tmpfs at the container's /tmp, a path inside the container",
}

# Metric-like keys whose null must be explained by a "note"/"notes" in its record or above.
_METRIC_KEY = re.compile(
    r"^(value|low|high|roc_auc|pr_auc|sensitivity|specificity|balanced_accuracy|accuracy|ppv|npv|f1|ece|brier"
    r"|p_value|p_holm|diff|ci_low|ci_high)(_low|_high|_ci)?$"
)


@cache
def _repo_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    return sorted({p for p in out.decode().split("\0") if p and (ROOT / p).is_file()})


def _text(path: str) -> str | None:
    data = (ROOT / path).read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _machine_patterns() -> dict[str, re.Pattern[str]]:
    """Absolute paths of this machine, computed now: the checkout, its parent, and the usual
    temporary and home folders, plus Windows drive paths (escaped as in JSON, or not)."""
    here = ROOT.resolve()
    folders = {here.as_posix(), ROOT.as_posix()}
    if here.parent != here.parent.parent:  # not directly under "/"
        folders |= {here.parent.as_posix(), ROOT.parent.as_posix()}
    patterns = {f"{f}/": re.compile(re.escape(f) + r"(/|\b)") for f in sorted(folders)}
    for prefix in ("/tmp/", "/home/", "/root/"):
        patterns[prefix] = re.compile(r"(?<![\w.~-])" + re.escape(prefix))
    patterns["C:\\ (a Windows drive)"] = re.compile(
        r"(?<![\w\\])[A-Za-z]:(\\\\|\\|/)(Users|Windows|Program Files|ProgramData|[\w.-]+(\\\\|\\|/)[\w.-]+)")
    return patterns


def test_no_committed_file_holds_an_absolute_path_of_this_machine() -> None:
    patterns = _machine_patterns()
    found = []
    for path in _repo_files():
        if path in ALLOWED:
            continue
        text = _text(path)
        if text is None:
            continue
        for name, pattern in patterns.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path}:{line}: {name!r} in {text[max(0, m.start() - 30):m.end() + 30]!r}")
                break
    assert not found, "absolute paths in committed files (write them relative to the project root):\n" + "\n".join(found)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nulls(obj: Any, explained: bool = False, where: str = "") -> Iterator[str]:
    """Paths of metric-like nulls that no "note"/"notes" on the way down explains."""
    if isinstance(obj, dict):
        explained = explained or bool(obj.get("note") or obj.get("notes"))
        for key, value in obj.items():
            if value is None and _METRIC_KEY.match(str(key)) and not explained:
                yield f"{where}/{key}"
            yield from _nulls(value, explained, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _nulls(value, explained, f"{where}[{i}]")


def test_every_json_file_is_strict_and_explains_its_nulls() -> None:
    files = [p for p in _repo_files() if p.endswith((".json", ".ipynb"))]
    assert any(p.startswith("reports/") for p in files)
    bad = []
    for path in files:
        try:
            data = json.loads((ROOT / path).read_text(), parse_constant=_reject_constant)
        except ValueError as exc:
            bad.append(f"{path}: {exc}")
            continue
        if path.startswith("reports/"):
            bad += [f"{path}: null {p} without a note saying why" for p in _nulls(data)]
    assert not bad, "\n".join(bad)


def test_the_scan_would_catch_what_it_looks_for(tmp_path) -> None:
    patterns = _machine_patterns()
    samples = [f"{ROOT.resolve().as_posix()}/models/x", "see /tmp/run/x.json", "/home/me/data",
               '"C:\\\\Users\\\\me\\\\x"', "D:\\data\\x.csv"]
    for sample in samples:
        assert any(p.search(sample) for p in patterns.values()), sample
    for fine in ("../shared/data/melanoma_cancer_dataset", "else:\\n", 'print(\\"x:\\", 1)', "http://127.0.0.1:8000/x",
                 "$(mktemp -d)", "reports/tmp/x"):
        assert not any(p.search(fine) for p in patterns.values()), fine
    with pytest.raises(ValueError, match="NaN"):
        json.loads('{"auc": NaN}', parse_constant=_reject_constant)
    assert list(_nulls({"rows": [{"roc_auc_low": None, "note": "too small"}], "ece": None})) == ["/ece"]
    assert not math.isnan(json.loads('{"a": null}')["a"] or 0.0)

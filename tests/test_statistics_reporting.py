"""Comparisons report Holm-adjusted p-values, and one bootstrap resample count is used everywhere."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np
import pytest

from skinlesion.metrics.stats import N_BOOTSTRAP, holm_adjust

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_ONLY = ("ens-ft", "lite0-ft60", "lite2-ft60", "lite0-idfh", "lite2-idfh")


# ----------------------------------------------------------------------------- Holm


def test_holm_matches_the_textbook_example() -> None:
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), method = "holm") gives 0.03 0.06 0.06 0.02
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_keeps_the_order_skips_nan_and_caps_at_one() -> None:
    out = holm_adjust([0.5, np.nan, 0.4, 0.9])
    np.testing.assert_allclose(out, [1.0, np.nan, 1.0, 1.0])  # m = 3 tests, NaN not counted
    p = np.random.default_rng(0).uniform(size=12)
    adj = holm_adjust(p)
    assert np.all(adj >= p) and np.all(adj <= 1.0)
    assert np.all(np.diff(adj[np.argsort(p)]) >= 0)  # the step-down keeps the order of the raw p-values
    assert holm_adjust([]).size == 0 and holm_adjust([0.2])[0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.1, 1.5])


def test_compare_adjusts_every_pair_and_writes_portable_paths(tmp_path) -> None:
    from skinlesion.evaluation.compare import compare, write_comparison

    runs = [ROOT / "reports" / name for name in KAGGLE_ONLY[:3]]
    markdown, data = compare(runs, "test_dedup", n_resamples=200)
    pairs = data["pairs"]
    assert len(pairs) == 3
    np.testing.assert_allclose([p["p_holm"] for p in pairs], holm_adjust([p["p_value"] for p in pairs]))
    assert "| p (DeLong) | p (Holm) |" in markdown and "Holm's step-down method over the 3 pairwise tests" in markdown
    assert all(r["report_dir"] == f"reports/{r['name']}" for r in data["runs"])
    out = write_comparison(markdown, data, tmp_path / "cmp")
    json.loads((out / "compare.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_committed_comparisons_carry_holm_p_values() -> None:
    for name in ("compare", "compare-dedup"):
        data = json.loads((ROOT / "reports" / name / "compare.json").read_text())
        assert data["pairs"] and all(p["p_holm"] >= p["p_value"] for p in data["pairs"]), name
        assert "p (Holm)" in (ROOT / "reports" / name / "compare.md").read_text()


# ----------------------------------------------------------------------------- one resample count


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        out[prefix + name] = cmd
        if isinstance(cmd, click.Group):
            out.update(_commands(cmd, f"{prefix}{name} "))
    return out


def test_every_resamples_option_defaults_to_n_bootstrap() -> None:
    """Each --resamples shows N_BOOTSTRAP as its default, or defers to it (None, then `or N_BOOTSTRAP`)."""
    import inspect

    from skinlesion.cli import main

    commands = _commands(main)
    options = {name: p for name, cmd in commands.items() for p in cmd.params if p.name == "resamples"}
    assert {"evaluate", "compare", "generalise"} <= set(options)
    for name, p in options.items():
        if p.default is None:
            source = inspect.getsource(inspect.unwrap(commands[name].callback))
            assert "resamples or N_BOOTSTRAP" in source, name
        else:
            assert p.default == N_BOOTSTRAP, name


def _notebook_code(path: Path) -> str:
    return "\n".join(c.get("source", "") if isinstance(c.get("source"), str) else "".join(c.get("source", []))
                     for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


def test_no_other_resample_count_is_written_down() -> None:
    """Functions, CLI options and notebooks take N_BOOTSTRAP by default; nothing hard-codes another."""
    literal = re.compile(r"(n_resamples\s*(:\s*int\s*)?=\s*\d|--resamples\"?,\s*default\s*=\s*\d|REPORT_RESAMPLES)")
    texts = {str(p.relative_to(ROOT)): p.read_text() for d in ("src", "webapp", "tools", "benchmarks")
             for p in (ROOT / d).rglob("*.py")}
    texts.update({str(p.relative_to(ROOT)): _notebook_code(p) for p in (ROOT / "notebooks").glob("*.ipynb")})
    found = [f"{name}: {m.group(0)}" for name, text in texts.items() for m in literal.finditer(text)]
    assert not found, found


def test_readme_states_the_count_once() -> None:
    readme = (ROOT / "README.md").read_text()
    counts = re.findall(r"(\d[\d,]*) (?:bootstrap |stratified bootstrap )?resamples", readme)
    assert counts == [f"{N_BOOTSTRAP:,}"], counts
    assert "N_BOOTSTRAP" in readme

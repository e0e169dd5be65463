"""`skinlesion generalise-compare`: paired tests of LOSO recipes from their predictions files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from skinlesion.cli import main
from skinlesion.evaluation.common import ReportError
from skinlesion.evaluation.recipe_compare import compare_recipes


def _write(root, recipe, probs, *, labels=None, drop=0, errors=()):
    """A LOSO predictions.csv with two held-out sources and in-source reference rows."""
    rng = np.random.default_rng(0)
    n = len(probs)
    y = labels if labels is not None else np.arange(n) % 2
    rows = pd.DataFrame({
        "source": ["a"] * (n // 2) + ["b"] * (n - n // 2), "path": [f"img{i}.jpg" for i in range(n)],
        "probability": probs, "raw_probability": probs, "error": [None] * n, "y_true": y,
        "held_out": ["a"] * (n // 2) + ["b"] * (n - n // 2)})
    for i in errors:
        rows.loc[i, ["error", "probability"]] = ["unreadable", np.nan]
    ref = rows.head(6).assign(held_out="reference:a", probability=rng.random(6))
    out = root / recipe
    out.mkdir(parents=True)
    pd.concat([rows.iloc[: n - drop], ref]).to_csv(out / "predictions.csv", index=False)


@pytest.fixture()
def recipes(tmp_path):
    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    noise = rng.normal(size=200)
    _write(tmp_path, "base", 1 / (1 + np.exp(-(y * 0.5 + noise))), labels=y)
    _write(tmp_path, "better", 1 / (1 + np.exp(-(y * 2.0 + noise))), labels=y, errors=(3,))
    _write(tmp_path, "same", 1 / (1 + np.exp(-(y * 0.5 + noise))), labels=y)
    return tmp_path


def test_each_recipe_is_tested_against_the_first_per_held_out_source(recipes):
    data = compare_recipes(["base", "better", "same"], recipes, n_resamples=200)
    tests = {(t["recipe"], t["held_out"]): t for t in data["tests"]}
    assert set(tests) == {(r, s) for r in ("better", "same") for s in ("a", "b")}  # reference rows left out
    assert tests["better", "a"]["diff"] > 0 and tests["better", "a"]["ci_low"] > 0
    assert tests["better", "a"]["n"] == 99  # the image one run could not read is left out of the pair
    assert tests["same", "b"]["diff"] == 0 and tests["same", "b"]["p_value"] == 1.0
    assert all(t["p_holm"] >= t["p_value"] for t in data["tests"])


def test_cli_writes_the_comparison(recipes):
    r = CliRunner().invoke(main, ["generalise-compare", "base", "better", "--report-dir", str(recipes),
                                  "--resamples", "100"])
    assert r.exit_code == 0, r.output
    out = recipes / "compare" / "base--better"
    assert json.loads((out / "compare.json").read_text())["baseline"] == "base"
    assert "`better` | a |" in (out / "compare.md").read_text()


def test_runs_over_different_images_or_labels_are_refused(tmp_path):
    y = np.arange(40) % 2
    _write(tmp_path, "base", np.linspace(0, 1, 40), labels=y)
    _write(tmp_path, "short", np.linspace(0, 1, 40), labels=y, drop=1)
    _write(tmp_path, "relabelled", np.linspace(0, 1, 40), labels=1 - y)
    with pytest.raises(ReportError, match="different held-out images"):
        compare_recipes(["base", "short"], tmp_path)
    with pytest.raises(ReportError, match="disagree on some labels"):
        compare_recipes(["base", "relabelled"], tmp_path)


def test_bad_requests_are_clear_errors(recipes):
    with pytest.raises(ReportError, match="at least two"):
        compare_recipes(["base"], recipes)
    with pytest.raises(ReportError, match="named twice"):
        compare_recipes(["base", "base"], recipes)
    with pytest.raises(ReportError, match="generalise --recipe missing"):
        compare_recipes(["base", "missing"], recipes)
    r = CliRunner().invoke(main, ["generalise-compare", "base", "missing", "--report-dir", str(recipes)])
    assert r.exit_code != 0 and "Traceback" not in r.output and "missing" in r.output

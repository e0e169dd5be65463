"""Is one recipe's leave-one-source-out gain real? Paired ROC AUC tests on the held-out images.

Two LOSO runs score the same held-out images (evaluation sets stay whole), so each held-out
source gives a paired test of recipe B against recipe A: DeLong's p-value and a paired
stratified bootstrap CI of the AUC difference (``metrics.stats.paired_auc_test``), with Holm's
adjustment over every (recipe, source) test. Reads ``reports/generalisation/<recipe>/
predictions.csv``; trains and scores nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from skinlesion import config
from skinlesion.evaluation.common import ReportError, fmt, md_table
from skinlesion.evaluation.compare import fmt_p
from skinlesion.io import atomic_write_text, clean_json, write_json
from skinlesion.metrics.stats import N_BOOTSTRAP, holm_adjust, paired_auc_test

_KEY = ["held_out", "source", "path"]
_CLUSTERED = {"ham10000": "HAM10000 holds several images of some lesions and the tests treat images as "
                          "independent, so its p-value and CI are optimistic"}


def load_loso_predictions(recipe_dir: Path) -> pd.DataFrame:
    """The scored held-out rows of one LOSO run (``predictions.csv``), one row per image."""
    path = recipe_dir / "predictions.csv"
    if not path.is_file():
        raise ReportError(f"{path} not found: run `skinlesion generalise --recipe {recipe_dir.name} ...` first")
    df = pd.read_csv(path)
    missing = {*_KEY, "probability", "y_true", "error"} - set(df.columns)
    if missing:
        raise ReportError(f"{path} lacks columns {sorted(missing)}; re-run `skinlesion generalise`")
    # Recipes are chosen on held-out sources only; the in-source reference rows are test splits.
    df = df[~df["held_out"].astype(str).str.startswith("reference:")]
    if df.empty:
        raise ReportError(f"{path} has no held-out rows; re-run `skinlesion generalise`")
    if df.duplicated(_KEY).any():
        raise ReportError(f"{path} lists some held-out images twice; re-run `skinlesion generalise`")
    return df


def compare_recipes(recipes: Sequence[str], root: Path | None = None, *, n_resamples: int = N_BOOTSTRAP,
                    seed: int = 0) -> dict[str, Any]:
    """Each recipe after the first against the first, per held-out source (see the module docstring)."""
    if len(recipes) < 2:
        raise ReportError("compare at least two recipes: the first is the baseline")
    if len(set(recipes)) != len(recipes):
        raise ReportError(f"a recipe is named twice: {list(recipes)}")
    root = root or config.reports_dir() / "generalisation"
    frames = {r: load_loso_predictions(root / r) for r in recipes}
    base_name, base = recipes[0], frames[recipes[0]]
    sources = list(dict.fromkeys(base["held_out"]))
    for name in recipes[1:]:
        other = frames[name]
        if set(other["held_out"]) != set(sources):
            raise ReportError(f"{name} held out {sorted(set(other['held_out']))}, {base_name} held out "
                              f"{sorted(sources)}: compare runs over the same sources")
        joined = base.merge(other, on=_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
        if (joined["_merge"] != "both").any():
            n = int((joined["_merge"] != "both").sum())
            raise ReportError(f"{base_name} and {name} scored different held-out images ({n} differ); "
                              "they are not comparable")
        if (joined["y_true_a"] != joined["y_true_b"]).any():
            raise ReportError(f"{base_name} and {name} disagree on some labels: not the same data")

    tests: list[dict[str, Any]] = []
    for name in recipes[1:]:
        joined = base.merge(frames[name], on=_KEY, suffixes=("_a", "_b"))
        ok = joined[joined["error_a"].isna() & joined["error_b"].isna()]
        for src in sources:
            part = ok[ok["held_out"] == src]
            row: dict[str, Any] = {"recipe": name, "held_out": src, "n": len(part),
                                   "n_malignant": int(part["y_true_a"].sum())}
            try:
                # A = the recipe, B = the baseline: a positive difference is a gain.
                row.update(paired_auc_test(part["y_true_a"].to_numpy(), part["probability_b"].to_numpy(),
                                           part["probability_a"].to_numpy(), n_resamples=n_resamples, seed=seed))
            except ValueError as exc:
                row["note"] = f"paired AUC test undefined: {exc}"
            if src in _CLUSTERED:
                row["caveat"] = _CLUSTERED[src]
            tests.append(row)
    done = [t for t in tests if "p_value" in t]
    for t, p in zip(done, holm_adjust([t["p_value"] for t in done])):
        t["p_holm"] = float(p)
    return clean_json({"baseline": base_name, "recipes": list(recipes[1:]), "n_resamples": n_resamples,
                       "seed": seed, "tests": tests})


def recipes_markdown(data: dict[str, Any]) -> str:
    """The readable page of :func:`compare_recipes`."""
    rows = []
    for t in data["tests"]:
        if "note" in t:
            rows.append([t["recipe"], t["held_out"], t["n"], "n/a", "n/a", "n/a", "n/a", "n/a", t["note"]])
            continue
        rows.append([f"`{t['recipe']}`", t["held_out"], f"{t['n']} ({t['n_malignant']})", fmt(t["auc_b"]),
                     fmt(t["auc_a"]), f"{t['diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]",
                     fmt_p(t["p_value"]), fmt_p(t.get("p_holm")), t.get("caveat", "")])
    methods = sorted({t["method"] for t in data["tests"] if "method" in t})
    return "\n".join([
        f"# Leave-one-source-out: recipes against `{data['baseline']}`", "",
        "Paired tests on the same held-out images: each row is a recipe's model and the baseline's model, both "
        "trained without that source. Difference = recipe − baseline ROC AUC; p (Holm) adjusts over every row.",
        "", md_table(["recipe", "held-out source", "n (malignant)", "AUC baseline", "AUC recipe",
                      "difference [95 % CI]", "p (DeLong)", "p (Holm)", "note"], rows), "",
        *[f"Method: {m}." for m in methods], ""])


def write_recipe_comparison(data: dict[str, Any], out_dir: Path) -> Path:
    """Write ``compare.md`` and ``compare.json`` into ``out_dir``; return it."""
    write_json(out_dir / "compare.json", data)
    atomic_write_text(out_dir / "compare.md", recipes_markdown(data))
    return out_dir

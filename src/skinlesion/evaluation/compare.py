"""Several evaluated runs side by side, with a paired test of each pair's ROC AUC on the same
images (DeLong p-value, Holm-adjusted over all the pairs, and a paired bootstrap CI of the
difference)."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from skinlesion import DISCLAIMER, config
from skinlesion.evaluation.common import (
    HEADLINE_METRICS,
    METRIC_LABELS,
    ReportError,
    fmt,
    fmt_ci,
    load_evaluation,
    md_table,
    num,
    scored_rows,
    set_file_stem,
)
from skinlesion.io import clean_json, read_json, write_json
from skinlesion.metrics.stats import N_BOOTSTRAP, holm_adjust, paired_auc_test


def resolve_report_dir(path: str | os.PathLike[str]) -> Path:
    """A report folder given itself or the bundle it evaluated (then ``reports/<run-id>``)."""
    p = Path(path)
    if (p / "metrics.json").is_file():
        return p
    if (p / "bundle.json").is_file():
        run_id = read_json(p / "bundle.json", ReportError).get("run_id", p.name)
        candidate = config.reports_dir() / str(run_id)
        if (candidate / "metrics.json").is_file():
            return candidate
        raise ReportError(f"bundle {p} has no evaluation report at {candidate}; run `skinlesion evaluate {p}` first")
    raise ReportError(f"{p} is neither an evaluation report (metrics.json) nor a model bundle (bundle.json)")


def compare_runs(
    runs: Sequence[str | os.PathLike[str]],
    set_name: str = "test",
    *,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Headline metrics of several evaluated runs on one set, plus a paired ROC AUC test per pair.

    ``runs`` are report folders or bundles (their default report is used). All runs must have
    scored exactly the same images (matched by path, with the same labels); otherwise a
    :class:`ReportError` says which differ. The pairwise test uses the images every run could read.
    """
    if len(runs) < 2:
        raise ReportError("compare needs at least two evaluated runs (report folders or bundles)")
    loaded: list[tuple[str, Path, dict[str, Any], Any]] = []
    names: list[str] = []
    for run in runs:
        d = resolve_report_dir(run)
        if any(d.resolve() == other.resolve() for _, other, _, _ in loaded):
            # A run against itself "agrees" perfectly and would read as evidence.
            raise ReportError(f"{d} is given more than once; compare different runs")
        results, preds = load_evaluation(d)
        if set_name not in results.get("sets", {}):
            raise ReportError(f"{d} has no evaluation set {set_name!r} (it has: "
                              f"{', '.join(results.get('sets', {})) or 'none'}); choose one with --set")
        if set_name not in preds:
            raise ReportError(f"{d} lacks predictions_{set_file_stem(set_name)}.csv; re-run `skinlesion evaluate`")
        name = str(results.get("bundle") or d.name)
        if name in names:
            name = f"{name} ({d.name})"
        names.append(name)
        df = preds[set_name]
        if df["path"].duplicated().any():
            raise ReportError(f"{d}: predictions for {set_name!r} list some images twice; re-run the evaluation")
        loaded.append((name, d, results, df))

    ref_name, _, _, ref = loaded[0]
    ref_paths = set(ref["path"])
    ref_labels = ref.set_index("path")["y_true"].astype(int)
    for name, _, _, df in loaded[1:]:
        paths = set(df["path"])
        if paths != ref_paths:
            only_a, only_b = sorted(ref_paths - paths), sorted(paths - ref_paths)
            raise ReportError(
                f"runs {ref_name!r} and {name!r} were evaluated on different images for {set_name!r} "
                f"({len(ref_paths)} vs {len(paths)} images; {len(only_a)} only in the first, e.g. "
                f"{only_a[:2]}; {len(only_b)} only in the second, e.g. {only_b[:2]}). Evaluate both on the "
                "same split (same splits file and --data-dir) to compare them."
            )
        labels = df.set_index("path")["y_true"].astype(int).reindex(ref_labels.index)
        if not labels.equals(ref_labels):
            n_bad = int((labels != ref_labels).sum())
            raise ReportError(f"runs {ref_name!r} and {name!r} disagree on the label of {n_bad} images in "
                              f"{set_name!r}: they were not evaluated on the same data set")

    readable = set.intersection(*(set(scored_rows(df)["path"]) for _, _, _, df in loaded))
    order = sorted(readable)
    notes: list[str] = []
    n_dropped = len(ref_paths) - len(order)
    if n_dropped:
        notes.append(f"{n_dropped} image(s) unreadable in at least one run are left out of the paired tests")
    synthetic = [n for n, _, r, _ in loaded if r.get("synthetic")]
    if synthetic:
        notes.append(f"SYNTHETIC model(s): {', '.join(synthetic)}; these numbers are about generated images")
    roots = {str((r.get("data_roots") or {}).get(set_name)) for _, _, r, _ in loaded if (r.get("data_roots") or {}).get(set_name)}
    if len(roots) > 1:
        notes.append(f"the runs read their images from different folders ({', '.join(sorted(roots))}); "
                     "paths and labels match, so they are assumed to be copies of the same images")

    run_rows = []
    probs = {}
    for name, d, results, df in loaded:
        r = results["sets"][set_name]
        run_rows.append({
            "name": name, "report_dir": config.display_path(d), "backbone": results.get("backbone"),
            "synthetic": bool(results.get("synthetic")), "tta": bool(results.get("tta")),
            "threshold": results.get("threshold"), "n": r.get("n"), "n_unreadable": r.get("n_unreadable", 0),
            "at_threshold": r.get("at_threshold", {}), "at_0.5": r.get("at_0.5", {}),
            "ece": r.get("ece"), "brier": r.get("brier"), "notes": r.get("notes", []),
        })
        ok = scored_rows(df).set_index("path")
        probs[name] = ok.loc[order, "probability"].to_numpy()
    y = ref_labels.loc[order].to_numpy()

    pairs = []
    for a, b in combinations(names, 2):
        pair: dict[str, Any] = {"a": a, "b": b, "n": len(order), "n_pos": int(y.sum())}
        try:
            pair.update(paired_auc_test(y, probs[a], probs[b], n_resamples=n_resamples, seed=seed))
        except ValueError as exc:
            pair["note"] = f"paired AUC test undefined: {exc}"
        pairs.append(pair)
    # Several models compared pairwise means several tests on the same images: Holm keeps the
    # chance of any false "significant" difference at 5 % (family-wise), whatever their correlation.
    tested = [p for p in pairs if "p_value" in p]
    for pair, adjusted in zip(tested, holm_adjust([p["p_value"] for p in tested])):
        pair["p_holm"] = float(adjusted)
    if len(tested) > 1:
        notes.append(f"p (Holm): the DeLong p-values adjusted with Holm's step-down method over the {len(tested)} "
                     "pairwise tests (family-wise error rate); the bootstrap CIs of the differences are "
                     "per-pair 95 % intervals, not adjusted")
    return clean_json({"set": set_name, "n_images": len(order), "runs": run_rows, "pairs": pairs, "notes": notes})


def comparison_markdown(data: Mapping[str, Any]) -> str:
    """The markdown page of a :func:`compare_runs` result."""
    out = [f"# Model comparison on `{data['set']}` ({data['n_images']} images)", "",
           f"> **Not a medical device.** {DISCLAIMER}", ""]
    keys = HEADLINE_METRICS + ("pr_auc",)
    out += ["## At each model's frozen threshold", ""]
    rows = [[r["name"], r.get("backbone") or "", fmt(r.get("threshold")), r.get("n")]
            + [fmt_ci(r["at_threshold"].get(k)) for k in keys] + [fmt(r.get("ece")), fmt(r.get("brier"))]
            for r in data["runs"]]
    header = ["Run", "Backbone", "Threshold", "n"] + [METRIC_LABELS[k].split(" (")[0] for k in keys] + ["ECE", "Brier"]
    out += [md_table(header, rows), ""]
    out += ["## At threshold 0.5 (seed-comparable)", ""]
    keys05 = ("sensitivity", "specificity", "balanced_accuracy", "accuracy", "f1")
    rows = [[r["name"]] + [fmt_ci(r["at_0.5"].get(k)) for k in keys05] for r in data["runs"]]
    out += [md_table(["Run"] + [METRIC_LABELS[k].split(" (")[0] for k in keys05], rows), ""]
    out += ["## Paired ROC AUC tests (same images)", ""]
    rows = []
    for p in data["pairs"]:
        if "note" in p:
            rows.append([p["a"], p["b"], "n/a", "n/a", "n/a", "n/a", "n/a", p["note"]])
            continue
        rows.append([p["a"], p["b"], fmt(p["auc_a"]), fmt(p["auc_b"]),
                     f"{p['diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]",
                     f"{p['p_value']:.3g}", fmt_p(p.get("p_holm")), ""])
    out += [md_table(["A", "B", "AUC A", "AUC B", "A - B [95% CI]", "p (DeLong)", "p (Holm)", "note"], rows), ""]
    methods = {p["method"] for p in data["pairs"] if "method" in p}
    out += [f"Method: {m}." for m in methods] + ([""] if methods else [])
    if data.get("notes"):
        out += ["## Notes", ""] + [f"* {n}" for n in data["notes"]] + [""]
    return "\n".join(out).rstrip() + "\n"

def fmt_p(value: Any) -> str:
    """A p-value to three significant digits ("n/a" when missing)."""
    v = num(value)
    return f"{v:.3g}" if math.isfinite(v) else "n/a"


def compare(
    runs: Sequence[str | os.PathLike[str]],
    set_name: str = "test",
    *,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[str, dict[str, Any]]:
    """(markdown, JSON-ready dict) comparing evaluated runs; see :func:`compare_runs`."""
    data = compare_runs(runs, set_name, n_resamples=n_resamples, seed=seed)
    return comparison_markdown(data), data


def write_comparison(markdown: str, data: Mapping[str, Any], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write compare.md and compare.json into ``out_dir`` (default ``reports/compare``); return the folder."""
    out = Path(out_dir) if out_dir else config.reports_dir() / "compare"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown)
    write_json(out / "compare.json", data)
    return out

"""The evaluation report of one bundle: ``reports/<run>/report.md`` with ``figures/*.png`` and a
skin-tone (ITA) subgroup table per evaluation set, also added to ``metrics.json``.

:func:`write_report` takes ``evaluate.evaluate_bundle``'s (results, predictions); computing and
drawing the figures is :mod:`skinlesion.evaluation.figures`, measuring ITA
:mod:`skinlesion.evaluation.skintone`.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skinlesion import DISCLAIMER, config
from skinlesion.bundle.format import load_meta
from skinlesion.bundle.meta import BundleMeta
from skinlesion.evaluation.common import (
    SKIN_TONE_MIN_N,
    ReportError,
    band_text,
    calibration_text,
    fmt,
    fmt_ci,
    md_table,
    metrics_table,
    num,
    policy_text,
    read_history,
    scored_rows,
)
from skinlesion.evaluation.figures import plot_training_curves, save_figure, set_figures, training_curves
from skinlesion.evaluation.skintone import image_ita
from skinlesion.io import atomic_write_text, write_json
from skinlesion.metrics.stats import N_BOOTSTRAP


@dataclass
class SkinToneTable:
    """ITA subgroup rows (``skintone.subgroup_table``) plus the per-image ITA and plain notes."""

    rows: list[dict[str, Any]]
    per_image: pd.DataFrame
    min_n: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        n_unknown = int((self.per_image["category"] == "unknown").sum()) if len(self.per_image) else 0
        return {"method": "ITA (Del Bino categories) of the skin around the lesion, skinlesion.evaluation.skintone",
                "min_n": self.min_n, "n_images": int(len(self.per_image)), "n_unknown": n_unknown,
                "rows": self.rows, "notes": self.notes}

def skin_tone_table(
    preds_df: pd.DataFrame,
    root: str | os.PathLike[str],
    threshold: float,
    *,
    min_n: int = SKIN_TONE_MIN_N,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    ita: pd.DataFrame | None = None,
    size: int = 224,
    workers: int | None = None,
) -> SkinToneTable:
    """Metrics per ITA skin-tone category for one evaluation set's predictions.

    ``preds_df`` has ``path`` (relative to ``root``), ``y_true`` and ``probability``; unreadable
    rows are left out. ``ita`` is a previous :func:`image_ita` result to reuse (else ITA is
    measured now). Categories with fewer than ``min_n`` images or a single class get point values
    only and a note saying they are too small to judge.
    """
    from skinlesion.evaluation.skintone import ITA_CATEGORIES, subgroup_table

    ok = scored_rows(preds_df)
    root = Path(root)
    if ok.empty:
        return SkinToneTable([], pd.DataFrame(columns=["path", "ita", "category"]), min_n,
                             ["no readable images: no skin-tone table"])
    files = [root / p for p in ok["path"]]
    if not any(f.is_file() for f in files[:20]):
        raise ReportError(f"the images of this set are not under {root}; pass the folder that holds them "
                          "(skinlesion evaluate --data-dir) or turn the skin-tone table off")
    per = image_ita(files, size=size, workers=workers, previous=ita)
    per.insert(0, "path", ok["path"].to_numpy())
    rows = subgroup_table(ok["y_true"].to_numpy(), ok["probability"].to_numpy(), per["category"].to_numpy(),
                          threshold, min_n=min_n, n_resamples=n_resamples, seed=seed)
    notes = []
    small = [r["category"] for r in rows if 0 < r["n"] < min_n]
    empty = [r["category"] for r in rows if r["n"] == 0]
    if small:
        notes.append(f"too few images to judge (n < {min_n}, no CI): {', '.join(small)}")
    if empty:
        notes.append(f"no images at all: {', '.join(empty)}; performance on these skin tones is unknown")
    n_known = int((per["category"] != "unknown").sum())
    if n_known:
        light = int(per["category"].isin(ITA_CATEGORIES[:2]).sum())
        notes.append(f"{light / n_known:.0%} of the images with a measurable ITA are very light or light skin")
    n_unknown = len(per) - n_known
    if n_unknown:
        notes.append(f"ITA could not be measured on {n_unknown} image(s) (too little visible skin): category unknown")
    notes.append("ITA from uncalibrated dermoscopy photos is a rough proxy for skin colour (lighting and camera "
                 "shift it): good for spotting a skewed test set, not for judging individuals")
    return SkinToneTable(rows, per, min_n, notes)


def skin_tone_rows(table: Mapping[str, Any]) -> tuple[list[str], list[list[Any]], list[str]]:
    """(header, rows, notes) of :meth:`SkinToneTable.to_dict` (values with 95 % CIs where judged)."""
    rows = []
    for r in table.get("rows", []):
        def ci(m: str, r: Mapping[str, Any] = r) -> str:
            return fmt_ci({"value": r.get(m), "low": r.get(f"{m}_low"), "high": r.get(f"{m}_high")})

        rows.append([r["category"], r["n"], r["n_pos"], r["n_neg"], ci("accuracy"), ci("sensitivity"),
                     ci("specificity"), ci("roc_auc"), r.get("note") or ""])
    header = ["Skin tone (ITA)", "n", "malignant", "benign", "accuracy", "sensitivity", "specificity",
              "ROC AUC", "note"]
    return header, rows, list(table.get("notes", []))


def skin_tone_markdown(table: Mapping[str, Any]) -> str:
    """Markdown table of :meth:`SkinToneTable.to_dict`, its notes as bullets below."""
    header, rows, notes = skin_tone_rows(table)
    text = md_table(header, rows)
    bullets = "\n".join(f"* {n}" for n in notes)
    return text + ("\n\n" + bullets if bullets else "")


def _default_roots(results: Mapping[str, Any], meta: BundleMeta) -> dict[str, Path]:
    data_dir = meta.training.data_dir
    return {name: Path(data_dir) for name in results.get("sets", {}) if data_dir and name in ("test", "test_dedup")}


def report_threshold(results: Mapping[str, Any], meta: BundleMeta) -> float:
    """The threshold the evaluation used, else the bundle's frozen one (NaN when neither is known)."""
    if results.get("threshold") is not None:
        return num(results["threshold"])
    return meta.decision.threshold if meta.decision else float("nan")


def _set_summary_lines(df: pd.DataFrame | None, r: Mapping[str, Any]) -> list[str]:
    lines = [f"* images: {r.get('n', 0)} scored" + (f", {r['n_unreadable']} unreadable (left out)"
                                                     if r.get("n_unreadable") else "")]
    if df is None:
        return lines
    ok = scored_rows(df)
    if ok.empty:
        return lines
    n_pos = int(ok["y_true"].sum())
    lines.append(f"* malignant {n_pos}, benign {len(ok) - n_pos} (prevalence {n_pos / len(ok):.1%})")
    if "decision" in ok.columns:
        counts = ok["decision"].value_counts()
        parts = [f"{k} {v} ({v / len(ok):.0%})" for k, v in counts.items()]
        lines.append("* decisions: " + ", ".join(parts))
        benign_call = ok["decision"] == "benign-appearing"
        if n_pos:
            missed = int((benign_call & (ok["y_true"] == 1)).sum())
            lines.append(f"* malignant lesions called benign-appearing (not even referred): {missed} of {n_pos}")
    if "out_of_distribution" in ok.columns:
        n_ood = int(ok["out_of_distribution"].astype(str).str.lower().isin({"true", "1"}).sum())
        lines.append(f"* flagged out-of-distribution: {n_ood}")
    return lines


def report_markdown(results: Mapping[str, Any], preds: Mapping[str, pd.DataFrame], meta: BundleMeta,
                    bundle_path: str | os.PathLike[str], figures: Mapping[str, Mapping[str, str]],
                    extra_notes: Mapping[str, Sequence[str]], has_training_curves: bool) -> str:
    """The text of report.md (figure paths relative to the report folder)."""
    threshold = report_threshold(results, meta)
    out = [f"# Evaluation report: {results.get('bundle') or meta.run_id}", ""]
    if results.get("synthetic") or meta.synthetic:
        out += ["> **SYNTHETIC MODEL.** Trained and evaluated on generated images: these numbers say nothing "
                "about skin cancer.", ""]
    out += [f"> **Not a medical device.** {DISCLAIMER}", ""]
    out += ["## Model", ""]
    t = meta.training
    training = f"{t.n_train} train / {t.n_val} validation / {t.n_test} test images"
    if t.data_dir:
        training += f" from `{config.display_path(t.data_dir)}`"
    rows = [
        ["Bundle", f"`{config.display_path(bundle_path)}`"],
        ["Kind", meta.kind + (f" of {len(meta.all_members)} members" if meta.all_members else "")],
        ["Backbone", f"{meta.backbone} (weights {meta.weights or 'n/a'}; {meta.stage or 'n/a'})"],
        ["Input size", f"{meta.input_size} x {meta.input_size} px"],
        ["Training data", training],
        ["Decision threshold", policy_text(meta)],
        ["Uncertain band", band_text(meta)],
        ["Calibration", calibration_text(meta)],
        ["Test-time augmentation", "yes (8 dihedral views)" if results.get("tta") else "no"],
    ]
    out += [md_table(["", ""], rows), ""]
    out += ["## Training curves", ""]
    if has_training_curves:
        out += ["![training curves](figures/training_curves.png)", ""]
    else:
        out += ["No `history.csv` in this bundle (ensembles have none): no training curves.", ""]

    for name, r in results.get("sets", {}).items():
        df = preds.get(name)
        out += [f"## Evaluation set `{name}`", ""]
        out += _set_summary_lines(df, r) + [""]
        if "at_threshold" not in r:
            out += ["No metrics: " + "; ".join(r.get("notes", ["no readable images"])), ""]
            continue
        out += [metrics_table(r, threshold), ""]
        ece_raw = ""
        if df is not None:
            ok = scored_rows(df)
            if "raw_probability" in ok.columns and len(ok) and ok["raw_probability"].notna().all():
                from skinlesion.metrics.calibration import expected_calibration_error

                ece_raw = (f"; before calibration ECE "
                           f"{expected_calibration_error(ok['y_true'], ok['raw_probability']):.3f}")
        out += [f"Calibration (calibrated probabilities): ECE {fmt(r.get('ece'))}, Brier {fmt(r.get('brier'))}"
                f"{ece_raw}.", ""]
        out += ["95 % CIs: stratified percentile bootstrap. The frozen threshold was chosen on validation data, "
                "never on this set; the 0.5 column is only for comparison with the seed notebook.", ""]
        st = r.get("skin_tone")
        out += ["### Skin tone (ITA)", ""]
        if st and st.get("rows"):
            out += [skin_tone_markdown(st), ""]
        else:
            reason = "; ".join((st or {}).get("notes", [])) or "not computed"
            out += [f"No skin-tone table: {reason}.", ""]
        figs = figures.get(name, {})
        if figs:
            out += ["### Figures", ""]
            labels = {"confusion": "Confusion matrix", "roc": "ROC curve", "pr": "Precision-recall curve",
                      "reliability": "Reliability diagram", "threshold": "Sensitivity and specificity vs threshold"}
            out += [f"![{labels[k]}]({v})" for k, v in figs.items()] + [""]
        notes = list(r.get("notes", [])) + list(extra_notes.get(name, []))
        if notes:
            out += ["### Notes", ""] + [f"* {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(out).rstrip() + "\n"


def write_report(
    results: Mapping[str, Any],
    preds: Mapping[str, pd.DataFrame],
    bundle_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    skin_tone: bool = True,
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> Path:
    """Write figures/*.png, report.md and (skin tone) ita.csv into ``out_dir``; return report.md.

    ``results``/``preds`` are ``evaluate.evaluate_bundle``'s output. ``metrics.json`` (from
    ``evaluate.save_results``) is rewritten with the skin-tone table of each set added. ``roots``
    maps a set name to the folder its prediction paths are relative to; the test sets default to
    the bundle's training data folder. Sets whose images cannot be found get a note instead of a
    skin-tone table.

    Writes in place, each file atomically (ita.csv, metrics.json, then report.md last), so
    report.md never describes a metrics.json it was not made from. ``skinlesion evaluate`` calls
    it on the temporary folder of ``evaluate.write_evaluation``, which replaces the report folder
    as a whole only when results, report and card are all written.
    """
    bundle_path = Path(bundle_path)
    meta = load_meta(bundle_path)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = copy.deepcopy(dict(results))  # the caller's dict is not changed
    threshold = report_threshold(data, meta)
    band = (meta.decision.band_low, meta.decision.band_high) if meta.decision else None
    all_roots = {**_default_roots(data, meta), **{k: Path(v) for k, v in (roots or {}).items()}}

    figures: dict[str, dict[str, str]] = {}
    notes: dict[str, list[str]] = {}
    ita_file = out / "ita.csv"
    previous_ita = pd.read_csv(ita_file, keep_default_na=True) if skin_tone and ita_file.is_file() else None
    ita_frames = []
    for name, r in data.get("sets", {}).items():
        df = preds.get(name)
        notes[name] = []
        if df is None:
            notes[name].append("no predictions table for this set: figures and skin-tone table skipped")
            continue
        figs, fig_notes = set_figures(df, name, threshold, band, fig_dir, n_resamples=n_resamples, seed=seed)
        figures[name] = {k: p.relative_to(out).as_posix() for k, p in figs.items()}
        notes[name] += fig_notes
        if not skin_tone:
            r["skin_tone"] = {"rows": [], "notes": ["skin-tone table turned off"]}
            continue
        root = all_roots.get(name)
        if root is None:
            r["skin_tone"] = {"rows": [], "notes": ["the image folder of this set is unknown (pass roots=)"]}
            continue
        try:
            table = skin_tone_table(df, root, threshold, n_resamples=n_resamples, seed=seed, ita=previous_ita)
        except ReportError as exc:
            r["skin_tone"] = {"rows": [], "notes": [str(exc)]}
            continue
        r["skin_tone"] = table.to_dict()
        ita_frames.append(table.per_image.assign(set=name))
        previous_ita = pd.concat([f for f in (previous_ita, table.per_image) if f is not None and len(f)],
                                 ignore_index=True).drop_duplicates("file", keep="last")
    if ita_frames:
        cols = ["set", "path", "ita", "category", "l_star", "b_star", "skin_fraction", "note", "file",
                "size_bytes", "mtime_ns"]
        atomic_write_text(ita_file, pd.concat(ita_frames, ignore_index=True)[cols].to_csv(index=False))

    history = read_history(bundle_path)
    has_curves = False
    if history is not None:
        save_figure(plot_training_curves(training_curves(history)), fig_dir / "training_curves.png")
        has_curves = True

    # Project-relative, so a committed report names no one machine's folders.
    data["bundle_path"] = config.display_path(bundle_path)
    data["data_roots"] = {k: config.display_path(v) for k, v in all_roots.items()}
    data["figures"] = figures
    # Same serialisation as evaluate.save_results (strict JSON, NaN as null), so readers see one format.
    write_json(out / "metrics.json", data)
    text = report_markdown(data, preds, meta, bundle_path, figures, notes, has_curves)
    return atomic_write_text(out / "report.md", text)

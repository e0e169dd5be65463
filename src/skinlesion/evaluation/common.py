"""What the evaluation outputs share: metric labels, number formatting, markdown tables, the
bundle facts they print, and reading an evaluation folder back.

Only numpy and pandas are imported here (no TensorFlow, no matplotlib).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.bundle.meta import BundleMeta
from skinlesion.data.datasets import DataError
from skinlesion.io import read_json

SKIN_TONE_MIN_N = 30

RELIABILITY_BINS = 15  # as evaluate.score_predictions, so the legend ECE matches the table

METRIC_LABELS: dict[str, str] = {
    "roc_auc": "ROC AUC (threshold-free)",
    "pr_auc": "PR AUC / average precision (threshold-free)",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1 (malignant)",
}

HEADLINE_METRICS: tuple[str, ...] = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")

class ReportError(DataError):
    """A report, comparison or model card that cannot be built; says what to do instead."""

def set_file_stem(name: str) -> str:
    """File-name form of an evaluation-set name (as ``evaluate.save_results`` writes it)."""
    return name.replace(":", "_")

def num(value: Any) -> float:
    """A metric value as float (None, as written by strict-JSON writers, becomes NaN)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

def fmt(value: Any, digits: int = 3) -> str:
    v = num(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"

def fmt_ci(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``value [low, high]`` of a ``{"value", "low", "high"}`` dict; ``n/a`` when undefined."""
    if not entry:
        return "n/a"
    v, lo, hi = (num(entry.get(k)) for k in ("value", "low", "high"))
    if not math.isfinite(v):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{digits}f} (no CI)"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

def scored_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of a predictions table that have a prediction (no read ``error``), with clean dtypes."""
    missing = {"path", "probability", "y_true"} - set(df.columns)
    if missing:
        raise ReportError(f"predictions table lacks the column(s) {sorted(missing)}; it must come from "
                          "skinlesion.evaluation.evaluate (evaluate_bundle or predictions_<set>.csv)")
    err = df["error"].fillna("").astype(str) if "error" in df.columns else pd.Series("", index=df.index)
    ok = df[(err == "") & df["probability"].notna()].copy()
    ok["y_true"] = ok["y_true"].astype(int)
    ok["probability"] = ok["probability"].astype(float)
    if "raw_probability" in ok.columns:
        ok["raw_probability"] = ok["raw_probability"].astype(float)
    return ok

def both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def calibration_text(meta: BundleMeta) -> str:
    """How the bundle's probabilities were calibrated, in words."""
    if not meta.calibrated:
        return "not calibrated (raw model output used; temperature treated as 1.0)"
    return f"temperature scaling on validation, T = {meta.temperature:.3f}"


def policy_text(meta: BundleMeta) -> str:
    """The frozen decision threshold, in words."""
    policy = meta.decision
    if policy is None:
        return "no decision policy recorded in this bundle"
    return (f"threshold {fmt(policy.threshold)} on calibrated P(malignant), chosen on validation for "
            f"sensitivity >= {policy.target_sensitivity:.2f}")


def band_text(meta: BundleMeta) -> str:
    """The "uncertain — refer" band, in words."""
    policy = meta.decision
    if policy is None:
        return "none recorded"
    return (f"[{fmt(policy.band_low)}, {fmt(policy.band_high)}) -> \"uncertain — refer\"; below: "
            f"benign-appearing, at or above: suspicious")


def read_history(bundle_path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The bundle's ``history.csv`` (training curves), or None when it has none (e.g. ensembles)."""
    f = Path(bundle_path) / "history.csv"
    if not f.is_file():
        return None
    df = pd.read_csv(f)
    return df if len(df) else None


def default_report_dir(meta: BundleMeta) -> Path:
    """Where ``skinlesion evaluate`` puts a bundle's report by default."""
    return config.reports_dir() / meta.run_id


def metrics_table(r: Mapping[str, Any], threshold: float) -> str:
    rows = []
    for key, label in METRIC_LABELS.items():
        rows.append([label, fmt_ci((r.get("at_threshold") or {}).get(key)), fmt_ci((r.get("at_0.5") or {}).get(key))])
    return md_table(["Metric", f"at frozen threshold {threshold:.3f}", "at 0.5 (seed-comparable)"], rows)

def load_evaluation(report_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """(results, predictions per set) read back from a report folder written by ``save_results``."""
    d = Path(report_dir)
    f = d / "metrics.json"
    if not f.is_file():
        raise ReportError(f"{d} is not an evaluation report (no metrics.json); run `skinlesion evaluate BUNDLE` first")
    results = read_json(f, ReportError)
    if not isinstance(results, dict):
        raise ReportError(f"{f} is not an evaluation report (not a JSON object)")
    preds = {}
    for name in results.get("sets", {}):
        p = d / f"predictions_{set_file_stem(name)}.csv"
        if p.is_file():
            preds[name] = pd.read_csv(p, keep_default_na=False, na_values={"probability": [""],
                                                                            "raw_probability": [""]})
    return results, preds

"""Evaluation figures: compute the curves (pure functions), then draw them.

Confusion matrix, ROC with a bootstrap band, precision-recall, reliability before/after
calibration, sensitivity/specificity against the threshold, and training curves. Figures use
the object API (``matplotlib.figure.Figure`` on an Agg canvas), never ``pyplot`` state, so this
works in web servers, threads and headless jobs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.evaluation.common import (
    RELIABILITY_BINS,
    both_classes,
    scored_rows,
    set_file_stem,
)
from skinlesion.metrics.stats import N_BOOTSTRAP

FIGURE_DPI = 110


def confusion_counts(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> np.ndarray:
    """2x2 counts ``[[tn, fp], [fn, tp]]`` (malignant = ``y_prob >= threshold``)."""
    from skinlesion.metrics.classification import confusion_matrix

    cm = confusion_matrix(y_true, y_prob, threshold)
    return np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.int64)

def threshold_sweep(y_true: np.ndarray, y_prob: np.ndarray, n_points: int = 401) -> pd.DataFrame:
    """Sensitivity and specificity on a fixed threshold grid over [0, 1] (NaN for an absent class).

    A grid rather than scikit-learn's ROC vertices so the x axis is the threshold itself, covering
    the whole [0, 1] range where the frozen threshold and the refer band are drawn.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(y_prob, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, int(n_points))
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    # Count of values >= t is len - (number strictly below t).
    called_pos = len(pos) - np.searchsorted(pos, grid, side="left")
    called_neg_benign = np.searchsorted(neg, grid, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = called_pos / len(pos) if len(pos) else np.full(grid.shape, np.nan)
        spec = called_neg_benign / len(neg) if len(neg) else np.full(grid.shape, np.nan)
    return pd.DataFrame({"threshold": grid, "sensitivity": sens, "specificity": spec})

def pr_curve(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, Any]:
    """Precision-recall curve, average precision and prevalence (needs both classes)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(y_true).astype(int)
    if not both_classes(y):
        raise ValueError("the PR curve needs both benign and malignant cases")
    precision, recall, _ = precision_recall_curve(y, y_prob, pos_label=1)
    return {"precision": precision, "recall": recall,
            "ap": float(average_precision_score(y, y_prob, pos_label=1)), "prevalence": float(y.mean())}

def reliability_before_after(y_true: np.ndarray, raw: np.ndarray | None, calibrated: np.ndarray,
                             n_bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Reliability curves and ECE of the raw and the calibrated probabilities (raw may be None)."""
    from skinlesion.metrics.calibration import expected_calibration_error, reliability_curve

    out: dict[str, Any] = {"after": reliability_curve(y_true, calibrated, n_bins),
                           "ece_after": expected_calibration_error(y_true, calibrated, n_bins)}
    if raw is not None:
        out["before"] = reliability_curve(y_true, raw, n_bins)
        out["ece_before"] = expected_calibration_error(y_true, raw, n_bins)
    out["n_bins"] = n_bins
    return out

def training_curves(history: pd.DataFrame) -> dict[str, Any]:
    """History rows numbered across stages, with where each stage starts (for the x axis)."""
    h = history.reset_index(drop=True).copy()
    h["step"] = np.arange(1, len(h) + 1)
    stages = h["stage"].astype(str) if "stage" in h.columns else pd.Series(["training"] * len(h))
    starts = [(int(h["step"].iloc[i]), stages.iloc[i]) for i in range(len(h)) if i == 0 or stages.iloc[i] != stages.iloc[i - 1]]
    return {"history": h, "stage_starts": starts}

def _figure(width: float = 4.4, height: float = 3.6, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # explicit Agg canvas: no pyplot, no GUI backend, thread-safe per figure
    axes = fig.subplots(1, ncols)
    return fig, axes

def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG (dpi :data:`FIGURE_DPI`) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=FIGURE_DPI)
    return path

def plot_confusion(cm: np.ndarray, threshold: float, title: str = ""):
    """Heatmap of 2x2 counts (rows: true class, columns: predicted) with the counts written in."""
    import seaborn as sns

    from skinlesion import CLASS_NAMES

    fig, ax = _figure(3.8, 3.3)
    sns.heatmap(np.asarray(cm), annot=True, fmt="d", cmap="Blues", cbar=False, square=True, ax=ax,
                xticklabels=[f"pred. {c}" for c in CLASS_NAMES], yticklabels=[f"true {c}" for c in CLASS_NAMES],
                annot_kws={"fontsize": 12}, linewidths=0.5, linecolor="white")
    ax.set_title(f"{title}\nthreshold {threshold:.3f}".strip(), fontsize=10)
    return fig

def plot_roc(band: Mapping[str, Any], operating_point: tuple[float, float] | None, threshold: float,
             title: str = ""):
    """ROC curve with its bootstrap band and the operating point (1 - specificity, sensitivity)."""
    fig, ax = _figure()
    conf = int(round(100 * band.get("confidence", 0.95)))
    ax.fill_between(band["fpr_grid"], band["tpr_low"], band["tpr_high"], color="C0", alpha=0.2,
                    label=f"{conf}% bootstrap band")
    ax.plot(band["fpr_grid"], band["tpr"], color="C0",
            label=f"AUC {band['auc']:.3f} [{band['auc_low']:.3f}, {band['auc_high']:.3f}]")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    if operating_point is not None and all(math.isfinite(v) for v in operating_point):
        ax.plot(*operating_point, "o", color="C3", ms=7, label=f"frozen threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)")
    ax.set_title(f"ROC {title}".strip(), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return fig

def plot_pr(pr: Mapping[str, Any], operating_point: tuple[float, float] | None, threshold: float, title: str = ""):
    """Precision-recall curve with the prevalence baseline and the operating point (recall, precision)."""
    fig, ax = _figure()
    ax.step(pr["recall"], pr["precision"], where="post", color="C0", label=f"AP {pr['ap']:.3f}")
    ax.axhline(pr["prevalence"], ls=":", color="grey", lw=1, label=f"prevalence {pr['prevalence']:.2f}")
    if operating_point is not None and all(math.isfinite(v) for v in operating_point):
        ax.plot(*operating_point, "o", color="C3", ms=7, label=f"frozen threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set_title(f"Precision-recall {title}".strip(), fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return fig

def plot_reliability(rel: Mapping[str, Any], title: str = ""):
    """Reliability diagram of the raw and the calibrated probabilities, ECE in the legend."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    if "before" in rel:
        b = rel["before"]
        ax.plot(b["prob_pred"], b["prob_true"], "s--", color="C1", ms=4,
                label=f"before calibration (ECE {rel['ece_before']:.3f})")
    a = rel["after"]
    ax.plot(a["prob_pred"], a["prob_true"], "o-", color="C0", ms=4,
            label=f"after calibration (ECE {rel['ece_after']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(malignant)", ylabel="observed malignant fraction")
    ax.set_title(f"Reliability {title} ({rel['n_bins']} bins)".strip(), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig

def plot_threshold_sweep(sweep: pd.DataFrame, threshold: float, band: tuple[float, float] | None, title: str = ""):
    """Sensitivity and specificity against the threshold, frozen threshold and refer band marked."""
    fig, ax = _figure(5.0, 3.6)
    if band is not None and all(b is not None for b in band):
        ax.axvspan(band[0], band[1], color="C2", alpha=0.15, label="uncertain — refer band")
    ax.plot(sweep["threshold"], sweep["sensitivity"], color="C3", label="sensitivity")
    ax.plot(sweep["threshold"], sweep["specificity"], color="C0", label="specificity")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"frozen threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold on calibrated P(malignant)", ylabel="rate")
    ax.set_title(f"Sensitivity / specificity vs threshold {title}".strip(), fontsize=10)
    ax.legend(loc="center right", fontsize=8)
    return fig

def plot_training_curves(curves: Mapping[str, Any]):
    """Loss and AUC per epoch, train vs validation, with stage boundaries marked."""
    h = curves["history"]
    starts = curves["stage_starts"]
    ends = [step - 1 for step, _ in starts[1:]] + [len(h)]
    spans = [f"{stage} {start}-{end}" for (start, stage), end in zip(starts, ends)]
    fig, axes = _figure(8.0, 3.2, ncols=2)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "auc", "ROC AUC")):
        for col, name, style in ((key, "train", "-"), (f"val_{key}", "validation", "--")):
            if col in h.columns and h[col].notna().any():
                ax.plot(h["step"], h[col], style, label=name)
        for step, _ in curves["stage_starts"][1:]:
            ax.axvline(step - 0.5, color="grey", ls=":", lw=1)
        # Stage names go in the axis label: text inside the axes collides with curves or gets clipped.
        ax.set(xlabel="epoch: " + " | ".join(spans), ylabel=label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig

def _operating_points(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[tuple[float, float], tuple[float, float]]:
    cm = confusion_counts(y, p, threshold)
    (tn, fp), (fn, tp) = cm
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    ppv = tp / (tp + fp) if tp + fp else math.nan
    return (1.0 - spec, sens), (sens, ppv)

def figures_for_set(df: pd.DataFrame, name: str, threshold: float, band: tuple[float, float] | None, *,
                    n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """One set's figures as matplotlib Figures ({kind: figure}) and notes about skipped ones."""
    from skinlesion.metrics.stats import roc_curve_with_band

    ok = scored_rows(df)
    notes: list[str] = []
    out: dict[str, Any] = {}
    if ok.empty:
        return out, ["no readable images: no figures"]
    y, p = ok["y_true"].to_numpy(), ok["probability"].to_numpy()
    roc_point, pr_point = _operating_points(y, p, threshold)
    out["confusion"] = plot_confusion(confusion_counts(y, p, threshold), threshold, name)
    if both_classes(y):
        band_data = roc_curve_with_band(y, p, n_resamples, seed)
        out["roc"] = plot_roc(band_data, roc_point, threshold, name)
        out["pr"] = plot_pr(pr_curve(y, p), pr_point, threshold, name)
    else:
        notes.append("only one class present: ROC and PR curves are undefined, so those figures are skipped")
    raw = None
    if "raw_probability" in ok.columns and ok["raw_probability"].notna().all():
        raw = ok["raw_probability"].to_numpy()
    else:
        notes.append("no raw (uncalibrated) probabilities: the reliability diagram shows the calibrated ones only")
    out["reliability"] = plot_reliability(reliability_before_after(y, raw, p), name)
    out["threshold"] = plot_threshold_sweep(threshold_sweep(y, p), threshold, band, name)
    return out, notes

def set_figures(df: pd.DataFrame, name: str, threshold: float, band: tuple[float, float] | None,
                fig_dir: str | os.PathLike[str], *, n_resamples: int = N_BOOTSTRAP,
                seed: int = 0) -> tuple[dict[str, Path], list[str]]:
    """Draw and save one set's figures; returns ({kind: png path}, notes about skipped figures)."""
    figs, notes = figures_for_set(df, name, threshold, band, n_resamples=n_resamples, seed=seed)
    stem = set_file_stem(name)
    return {kind: save_figure(fig, Path(fig_dir) / f"{kind}_{stem}.png") for kind, fig in figs.items()}, notes

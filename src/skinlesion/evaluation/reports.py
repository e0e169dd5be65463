"""Evaluation reports, model comparison and model cards.

Three products, each a pure *compute* step and a separate *display* step:

* :func:`write_report` turns ``evaluate_bundle``'s (results, predictions) into
  ``reports/<run>/report.md`` with ``figures/*.png`` (confusion matrix, ROC with bootstrap band,
  PR curve, reliability before/after calibration, sensitivity/specificity vs threshold,
  training curves) and a skin-tone (ITA) subgroup table, also added to ``metrics.json``.
* :func:`compare` puts several evaluated runs side by side and tests each pair's ROC AUC on
  the same images (DeLong p-value, paired bootstrap CI of the difference).
* :func:`model_card` writes a model card for a bundle, using its report when there is one.

Only numpy, pandas, scipy, scikit-learn, Pillow, matplotlib and seaborn are imported; no
TensorFlow. Figures use the object API (``matplotlib.figure.Figure`` on an Agg canvas), never
``pyplot`` state, so this works in web servers, threads and headless jobs.
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import DISCLAIMER, config
from skinlesion.data.datasets import DataError

FIGURE_DPI = 110
# 95 % CIs in reports; each bootstrap here is vectorised, so 1000 resamples take well under a second.
REPORT_RESAMPLES = 1000
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

TRAINING_DATA_TEXT = (
    "Kaggle \"Melanoma Skin Cancer Dataset of 10000 Images\": dermoscopic photographs resized to "
    "300x300 JPEG, labelled benign or malignant, in fixed `train/` and `test/` folders. Known "
    "quirks that matter for anyone reading the numbers:\n\n"
    "* **Duplicates across splits.** The same lesion image (exact copies and near copies: re-crops, "
    "re-compressions) occurs in both `train/` and `test/`; `skinlesion data audit` lists them and "
    "the `test_dedup` evaluation set drops them. Scores on the full test split are optimistic.\n"
    "* **No patient or lesion identifiers.** Splits cannot be grouped by patient, so images of the "
    "same patient or lesion may sit on both sides of every split (train/validation too).\n"
    "* **Skin-tone skew.** Most images show light skin (ITA categories *very light* and *light*); "
    "brown and dark skin are barely represented, so performance there is unknown.\n"
    "* **No metadata.** No age, sex, body site, acquisition device, histopathology confirmation "
    "status or diagnosis subtype (labels are only benign/malignant), and the provenance of the "
    "images is not documented in detail.\n"
    "* Class balance is close to 50/50, far from the low prevalence of malignancy in practice, so "
    "PPV and NPV here do not transfer to a clinic."
)

OUT_OF_SCOPE_USES = (
    "* Diagnosing, ruling out or triaging skin cancer for any real person, or any clinical decision.\n"
    "* Use by patients or the public to decide whether to see a doctor.\n"
    "* Non-dermoscopic photos (phone snapshots, clinical close-ups), histology, or images of "
    "anything that is not a single skin lesion; the out-of-distribution flag catches only some.\n"
    "* Populations the training data do not represent: darker skin tones, children, acral or "
    "mucosal sites, rare lesion types.\n"
    "* Any regulated or commercial use: it is not a medical device and has no clearance or approval."
)


class ReportError(DataError):
    """A report, comparison or model card that cannot be built; says what to do instead."""


# ============================================================================================
# Small helpers
# ============================================================================================
def set_file_stem(name: str) -> str:
    """File-name form of an evaluation-set name (as ``evaluate.save_results`` writes it)."""
    return name.replace(":", "_")


def _num(value: Any) -> float:
    """A metric value as float (None, as written by strict-JSON writers, becomes NaN)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _fmt_ci(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``value [low, high]`` of a ``{"value", "low", "high"}`` dict; ``n/a`` when undefined."""
    if not entry:
        return "n/a"
    v, lo, hi = (_num(entry.get(k)) for k in ("value", "low", "high"))
    if not math.isfinite(v):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{digits}f} (no CI)"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    """Strict-JSON copy (NaN -> None, numpy -> Python) for the files this module writes itself."""
    from skinlesion.metrics.classification import as_jsonable

    return as_jsonable({"x": obj})["x"]


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


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


# ============================================================================================
# Bundle facts
# ============================================================================================
def bundle_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The facts about a bundle that reports and model cards print (missing ones are None)."""
    decision = dict(meta.get("decision") or {})
    cal = meta.get("calibration") or {}
    temperature = cal.get("temperature")
    training = dict(meta.get("training") or {})
    cfg = dict(training.get("config") or {})
    return {
        "run_id": meta.get("run_id"),
        "kind": meta.get("kind", "single"),
        "backbone": meta.get("backbone"),
        "weights": meta.get("weights"),
        "input_size": meta.get("input_size"),
        "stage": meta.get("stage"),
        "created": meta.get("created"),
        "synthetic": bool(meta.get("synthetic")),
        "members": list(meta.get("members") or training.get("members") or []),
        "data_dir": training.get("data_dir"),
        "n_train": training.get("n_train"),
        "n_val": training.get("n_val"),
        "n_test": training.get("n_test"),
        "seed": cfg.get("seed"),
        "views": cfg.get("views"),
        "head_units": cfg.get("head_units"),
        "fine_tune": cfg.get("fine_tune"),
        "threshold": decision.get("threshold"),
        "band_low": decision.get("band_low"),
        "band_high": decision.get("band_high"),
        "target_sensitivity": decision.get("target_sensitivity"),
        "band_sensitivity": decision.get("band_sensitivity"),
        "band_specificity": decision.get("band_specificity"),
        "calibrated": temperature is not None,
        "calibration_method": cal.get("method"),
        # Without calibration the model's output is used as is, i.e. temperature 1.
        "temperature": float(temperature) if temperature is not None else 1.0,
        "ood": dict(meta.get("ood") or {}),
        "versions": dict(meta.get("versions") or {}),
        "val_metrics": dict((meta.get("metrics") or {}).get("val") or {}),
        "policy_val_metrics": dict(decision.get("validation_metrics") or {}),
    }


def _calibration_text(s: Mapping[str, Any]) -> str:
    if not s["calibrated"]:
        return "not calibrated (raw model output used; temperature treated as 1.0)"
    return f"temperature scaling on validation, T = {s['temperature']:.3f}"


def _policy_text(s: Mapping[str, Any]) -> str:
    if s["threshold"] is None:
        return "no decision policy recorded in this bundle"
    text = f"threshold {_fmt(s['threshold'])} on calibrated P(malignant)"
    if s["target_sensitivity"] is not None:
        text += f", chosen on validation for sensitivity >= {_num(s['target_sensitivity']):.2f}"
    return text


def _band_text(s: Mapping[str, Any]) -> str:
    if s["band_low"] is None or s["band_high"] is None:
        return "none recorded"
    return (f"[{_fmt(s['band_low'])}, {_fmt(s['band_high'])}) -> \"uncertain — refer\"; below: "
            f"benign-appearing, at or above: suspicious")


def read_history(bundle_path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The bundle's ``history.csv`` (training curves), or None when it has none (e.g. ensembles)."""
    f = Path(bundle_path) / "history.csv"
    if not f.is_file():
        return None
    df = pd.read_csv(f)
    return df if len(df) else None


def default_report_dir(meta: Mapping[str, Any]) -> Path:
    """Where ``skinlesion evaluate`` puts a bundle's report by default."""
    return config.reports_dir() / str(meta.get("run_id"))


# ============================================================================================
# Compute: curves and tables
# ============================================================================================
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
    if not _both_classes(y):
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


# --------------------------------------------------------------------------------------------
# Skin tone
# --------------------------------------------------------------------------------------------
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


def _ita_one(file: Path, size: int) -> dict[str, Any]:
    from skinlesion.evaluation import skintone
    from skinlesion.data.intake import ImageRejected, load_for_model

    try:
        est = skintone.estimate_ita_details(load_for_model(file, size))
    except (ImageRejected, OSError, ValueError) as exc:
        msg = getattr(exc, "message", None) or str(exc)
        return {"ita": math.nan, "l_star": math.nan, "b_star": math.nan, "skin_fraction": math.nan,
                "note": f"could not measure: {msg}"}
    return {"ita": est.ita, "l_star": est.l_star, "b_star": est.b_star,
            "skin_fraction": est.skin_fraction, "note": est.note or ""}


def image_ita(files: Sequence[str | os.PathLike[str]], *, size: int = 224, workers: int | None = None,
              previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """ITA per image file: columns file, size_bytes, mtime_ns, ita, category, l_star, b_star,
    skin_fraction, note. Rows of ``previous`` (an earlier result) are reused for files whose size
    and modification time are unchanged.

    Images are read as the model reads them (``intake.load_for_model``, centre square at
    ``size``). ITA takes ~40 ms an image, so threads (scipy/skimage release the GIL) keep
    1000 images well under a minute.
    """
    from skinlesion.evaluation.skintone import ita_category

    files = [Path(f) for f in files]
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    known: dict[tuple[str, int, int], dict[str, Any]] = {}
    if previous is not None and len(previous):
        for r in previous.to_dict("records"):
            known[(str(r["file"]), int(r["size_bytes"]), int(r["mtime_ns"]))] = r
    todo = [i for i, (f, s) in enumerate(zip(files, stats)) if (str(f), *s) not in known]
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as ex:
        fresh = dict(zip(todo, ex.map(lambda i: _ita_one(files[i], size), todo)))
    rows = []
    for i, (f, (nbytes, mtime)) in enumerate(zip(files, stats)):
        r = fresh.get(i) or known[(str(f), nbytes, mtime)]
        note = r.get("note")
        rows.append({"file": str(f), "size_bytes": nbytes, "mtime_ns": mtime, "ita": _num(r["ita"]),
                     "category": ita_category(_num(r["ita"])), "l_star": _num(r["l_star"]),
                     "b_star": _num(r["b_star"]), "skin_fraction": _num(r["skin_fraction"]),
                     "note": "" if note is None or (isinstance(note, float) and math.isnan(note)) else str(note)})
    return pd.DataFrame(rows, columns=["file", "size_bytes", "mtime_ns", "ita", "category", "l_star", "b_star",
                                       "skin_fraction", "note"])


def skin_tone_table(
    preds_df: pd.DataFrame,
    root: str | os.PathLike[str],
    threshold: float,
    *,
    min_n: int = SKIN_TONE_MIN_N,
    n_resamples: int = REPORT_RESAMPLES,
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


# ============================================================================================
# Display: figures
# ============================================================================================
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


# ============================================================================================
# Report
# ============================================================================================
def _operating_points(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[tuple[float, float], tuple[float, float]]:
    cm = confusion_counts(y, p, threshold)
    (tn, fp), (fn, tp) = cm
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    ppv = tp / (tp + fp) if tp + fp else math.nan
    return (1.0 - spec, sens), (sens, ppv)


def figures_for_set(df: pd.DataFrame, name: str, threshold: float, band: tuple[float, float] | None, *,
                    n_resamples: int = REPORT_RESAMPLES, seed: int = 0) -> tuple[dict[str, Any], list[str]]:
    """One set's figures as matplotlib Figures ({kind: figure}) and notes about skipped ones."""
    from skinlesion.metrics.classification import roc_curve_with_band

    ok = scored_rows(df)
    notes: list[str] = []
    out: dict[str, Any] = {}
    if ok.empty:
        return out, ["no readable images: no figures"]
    y, p = ok["y_true"].to_numpy(), ok["probability"].to_numpy()
    roc_point, pr_point = _operating_points(y, p, threshold)
    out["confusion"] = plot_confusion(confusion_counts(y, p, threshold), threshold, name)
    if _both_classes(y):
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
                fig_dir: str | os.PathLike[str], *, n_resamples: int = REPORT_RESAMPLES,
                seed: int = 0) -> tuple[dict[str, Path], list[str]]:
    """Draw and save one set's figures; returns ({kind: png path}, notes about skipped figures)."""
    figs, notes = figures_for_set(df, name, threshold, band, n_resamples=n_resamples, seed=seed)
    stem = set_file_stem(name)
    return {kind: save_figure(fig, Path(fig_dir) / f"{kind}_{stem}.png") for kind, fig in figs.items()}, notes


def _default_roots(results: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Path]:
    data_dir = (meta.get("training") or {}).get("data_dir")
    return {name: Path(data_dir) for name in results.get("sets", {}) if data_dir and name in ("test", "test_dedup")}


def _metrics_table(r: Mapping[str, Any], threshold: float) -> str:
    rows = []
    for key, label in METRIC_LABELS.items():
        rows.append([label, _fmt_ci((r.get("at_threshold") or {}).get(key)), _fmt_ci((r.get("at_0.5") or {}).get(key))])
    return _md_table(["Metric", f"at frozen threshold {threshold:.3f}", "at 0.5 (seed-comparable)"], rows)


def skin_tone_markdown(table: Mapping[str, Any]) -> str:
    """Markdown table of :meth:`SkinToneTable.to_dict` (values with 95 % CIs where judged)."""
    rows = []
    for r in table.get("rows", []):
        def ci(m: str) -> str:
            return _fmt_ci({"value": r.get(m), "low": r.get(f"{m}_low"), "high": r.get(f"{m}_high")})

        rows.append([r["category"], r["n"], r["n_pos"], r["n_neg"], ci("accuracy"), ci("sensitivity"),
                     ci("specificity"), ci("roc_auc"), r.get("note") or ""])
    text = _md_table(["Skin tone (ITA)", "n", "malignant", "benign", "accuracy", "sensitivity", "specificity",
                      "ROC AUC", "note"], rows)
    notes = "\n".join(f"* {n}" for n in table.get("notes", []))
    return text + ("\n\n" + notes if notes else "")


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


def report_markdown(results: Mapping[str, Any], preds: Mapping[str, pd.DataFrame], meta: Mapping[str, Any],
                    bundle_path: str | os.PathLike[str], figures: Mapping[str, Mapping[str, str]],
                    extra_notes: Mapping[str, Sequence[str]], has_training_curves: bool) -> str:
    """The text of report.md (figure paths relative to the report folder)."""
    s = bundle_summary(meta)
    threshold = _num(results.get("threshold", s["threshold"]))
    out = [f"# Evaluation report: {results.get('bundle') or s['run_id']}", ""]
    if results.get("synthetic") or s["synthetic"]:
        out += ["> **SYNTHETIC MODEL.** Trained and evaluated on generated images: these numbers say nothing "
                "about skin cancer.", ""]
    out += [f"> **Not a medical device.** {DISCLAIMER}", ""]
    out += ["## Model", ""]
    training = f"{s['n_train']} train / {s['n_val']} validation / {s['n_test']} test images"
    if s["data_dir"]:
        training += f" from `{config.display_path(s['data_dir'])}`"
    rows = [
        ["Bundle", f"`{config.display_path(bundle_path)}`"],
        ["Kind", s["kind"] + (f" of {len(s['members'])} members" if s["members"] else "")],
        ["Backbone", f"{s['backbone']} (weights {s['weights'] or 'n/a'}; {s['stage'] or 'n/a'})"],
        ["Input size", f"{s['input_size']} x {s['input_size']} px"],
        ["Training data", training],
        ["Decision threshold", _policy_text(s)],
        ["Uncertain band", _band_text(s)],
        ["Calibration", _calibration_text(s)],
        ["Test-time augmentation", "yes (8 dihedral views)" if results.get("tta") else "no"],
    ]
    out += [_md_table(["", ""], rows), ""]
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
        out += [_metrics_table(r, threshold), ""]
        ece_raw = ""
        if df is not None:
            ok = scored_rows(df)
            if "raw_probability" in ok.columns and len(ok) and ok["raw_probability"].notna().all():
                from skinlesion.metrics.calibration import expected_calibration_error

                ece_raw = (f"; before calibration ECE "
                           f"{expected_calibration_error(ok['y_true'], ok['raw_probability']):.3f}")
        out += [f"Calibration (calibrated probabilities): ECE {_fmt(r.get('ece'))}, Brier {_fmt(r.get('brier'))}"
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
    n_resamples: int = REPORT_RESAMPLES,
    seed: int = 0,
) -> Path:
    """Write figures/*.png, report.md and (skin tone) ita.csv into ``out_dir``; return report.md.

    ``results``/``preds`` are ``evaluate.evaluate_bundle``'s output. ``metrics.json`` (from
    ``evaluate.save_results``) is rewritten with the skin-tone table of each set added. ``roots``
    maps a set name to the folder its prediction paths are relative to; the test sets default to
    the bundle's training data folder. Sets whose images cannot be found get a note instead of a
    skin-tone table.
    """
    from skinlesion.bundle.format import read_meta

    bundle_path = Path(bundle_path)
    meta = read_meta(bundle_path)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    results = copy.deepcopy(dict(results))
    s = bundle_summary(meta)
    threshold = _num(results.get("threshold", s["threshold"]))
    band = (s["band_low"], s["band_high"]) if s["band_low"] is not None else None
    all_roots = {**_default_roots(results, meta), **{k: Path(v) for k, v in (roots or {}).items()}}

    figures: dict[str, dict[str, str]] = {}
    notes: dict[str, list[str]] = {}
    ita_file = out / "ita.csv"
    previous_ita = pd.read_csv(ita_file, keep_default_na=True) if skin_tone and ita_file.is_file() else None
    ita_frames = []
    for name, r in results.get("sets", {}).items():
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
        pd.concat(ita_frames, ignore_index=True)[cols].to_csv(ita_file, index=False)

    history = read_history(bundle_path)
    has_curves = False
    if history is not None:
        save_figure(plot_training_curves(training_curves(history)), fig_dir / "training_curves.png")
        has_curves = True

    results["bundle_path"] = str(bundle_path.resolve())
    results["data_roots"] = {k: str(v) for k, v in all_roots.items()}
    results["figures"] = figures
    # Same serialisation as evaluate.save_results, so readers see one format.
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    text = report_markdown(results, preds, meta, bundle_path, figures, notes, has_curves)
    report = out / "report.md"
    report.write_text(text)
    return report


def load_evaluation(report_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """(results, predictions per set) read back from a report folder written by ``save_results``."""
    d = Path(report_dir)
    f = d / "metrics.json"
    if not f.is_file():
        raise ReportError(f"{d} is not an evaluation report (no metrics.json); run `skinlesion evaluate BUNDLE` first")
    try:
        results = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{f} is not valid JSON: {exc}") from exc
    preds = {}
    for name in results.get("sets", {}):
        p = d / f"predictions_{set_file_stem(name)}.csv"
        if p.is_file():
            preds[name] = pd.read_csv(p, keep_default_na=False, na_values={"probability": [""],
                                                                            "raw_probability": [""]})
    return results, preds


# ============================================================================================
# Comparison
# ============================================================================================
def resolve_report_dir(path: str | os.PathLike[str]) -> Path:
    """A report folder given itself or the bundle it evaluated (then ``reports/<run-id>``)."""
    p = Path(path)
    if (p / "metrics.json").is_file():
        return p
    if (p / "bundle.json").is_file():
        try:
            run_id = json.loads((p / "bundle.json").read_text()).get("run_id", p.name)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{p}/bundle.json is not valid JSON: {exc}") from exc
        candidate = config.reports_dir() / str(run_id)
        if (candidate / "metrics.json").is_file():
            return candidate
        raise ReportError(f"bundle {p} has no evaluation report at {candidate}; run `skinlesion evaluate {p}` first")
    raise ReportError(f"{p} is neither an evaluation report (metrics.json) nor a model bundle (bundle.json)")


def compare_runs(
    runs: Sequence[str | os.PathLike[str]],
    set_name: str = "test",
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Headline metrics of several evaluated runs on one set, plus a paired ROC AUC test per pair.

    ``runs`` are report folders or bundles (their default report is used). All runs must have
    scored exactly the same images (matched by path, with the same labels); otherwise a
    :class:`ReportError` says which differ. The pairwise test uses the images every run could read.
    """
    from skinlesion.metrics.classification import paired_auc_test

    if len(runs) < 2:
        raise ReportError("compare needs at least two evaluated runs (report folders or bundles)")
    loaded = []
    names: list[str] = []
    for run in runs:
        d = resolve_report_dir(run)
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
    for name, d, _, df in loaded[1:]:
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
            "name": name, "report_dir": str(d), "backbone": results.get("backbone"),
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
    if len(pairs) > 1:
        notes.append(f"{len(pairs)} pairwise tests: p-values are not corrected for multiple comparisons")
    return _jsonable({"set": set_name, "n_images": len(order), "runs": run_rows, "pairs": pairs, "notes": notes})


def comparison_markdown(data: Mapping[str, Any]) -> str:
    """The markdown page of a :func:`compare_runs` result."""
    out = [f"# Model comparison on `{data['set']}` ({data['n_images']} images)", "",
           f"> **Not a medical device.** {DISCLAIMER}", ""]
    keys = HEADLINE_METRICS + ("pr_auc",)
    out += ["## At each model's frozen threshold", ""]
    rows = [[r["name"], r.get("backbone") or "", _fmt(r.get("threshold")), r.get("n")]
            + [_fmt_ci(r["at_threshold"].get(k)) for k in keys] + [_fmt(r.get("ece")), _fmt(r.get("brier"))]
            for r in data["runs"]]
    header = ["Run", "Backbone", "Threshold", "n"] + [METRIC_LABELS[k].split(" (")[0] for k in keys] + ["ECE", "Brier"]
    out += [_md_table(header, rows), ""]
    out += ["## At threshold 0.5 (seed-comparable)", ""]
    keys05 = ("sensitivity", "specificity", "balanced_accuracy", "accuracy", "f1")
    rows = [[r["name"]] + [_fmt_ci(r["at_0.5"].get(k)) for k in keys05] for r in data["runs"]]
    out += [_md_table(["Run"] + [METRIC_LABELS[k].split(" (")[0] for k in keys05], rows), ""]
    out += ["## Paired ROC AUC tests (same images)", ""]
    rows = []
    for p in data["pairs"]:
        if "note" in p:
            rows.append([p["a"], p["b"], "n/a", "n/a", "n/a", "n/a", p["note"]])
            continue
        rows.append([p["a"], p["b"], _fmt(p["auc_a"]), _fmt(p["auc_b"]),
                     f"{p['diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]",
                     f"{p['p_value']:.3g}", ""])
    out += [_md_table(["A", "B", "AUC A", "AUC B", "A - B [95% CI]", "p (DeLong)", "note"], rows), ""]
    methods = {p["method"] for p in data["pairs"] if "method" in p}
    out += [f"Method: {m}." for m in methods] + ([""] if methods else [])
    if data.get("notes"):
        out += ["## Notes", ""] + [f"* {n}" for n in data["notes"]] + [""]
    return "\n".join(out).rstrip() + "\n"


def compare(
    runs: Sequence[str | os.PathLike[str]],
    set_name: str = "test",
    *,
    n_resamples: int = 2000,
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
    (out / "compare.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return out


# ============================================================================================
# Model card
# ============================================================================================
def _audit_summary() -> str | None:
    f = config.reports_dir() / "audit" / "duplicates.csv"
    if not f.is_file():
        return None
    try:
        dup = pd.read_csv(f)
        exact = dup.loc[dup["kind"] == "exact", "test_path"].nunique()
        near = dup.loc[dup["kind"] == "near", "test_path"].nunique()
    except (KeyError, ValueError, OSError):
        return None
    return (f"The duplicate audit (`{config.display_path(f)}`) found {exact} test images with an exact copy and {near} with a near "
            "copy in the training data.")


def model_card(bundle_path: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None) -> str:
    """Model card (markdown) of a bundle, with the evaluation from ``report_dir`` (default
    ``reports/<run-id>`` when it exists)."""
    from skinlesion.bundle.format import read_meta

    bundle_path = Path(bundle_path)
    meta = read_meta(bundle_path)
    s = bundle_summary(meta)
    if report_dir is not None:
        report = Path(report_dir)
        if not (report / "metrics.json").is_file():
            raise ReportError(f"{report} is not an evaluation report (no metrics.json); "
                              f"run `skinlesion evaluate {bundle_path}` first or leave --report out")
    else:
        candidate = default_report_dir(meta)
        report = candidate if (candidate / "metrics.json").is_file() else None
    results = load_evaluation(report)[0] if report else None

    out = [f"# Model card: {s['run_id']}", ""]
    if s["synthetic"]:
        out += ["> **SYNTHETIC MODEL.** Trained on generated images, only to exercise the software. It knows "
                "nothing about skin cancer.", ""]
    out += [f"> **NOT A MEDICAL DEVICE.** {DISCLAIMER}", ""]

    out += ["## Model details", ""]
    rows = [
        ["Run id", s["run_id"]], ["Created", s["created"] or "n/a"],
        ["Kind", s["kind"] + (f" (members: {', '.join(map(str, s['members']))})" if s["members"] else "")],
        ["Task", "binary classification of a dermoscopic image: benign vs malignant; output P(malignant)"],
        ["Architecture", f"{s['backbone']} backbone + dense head (hidden units: {s['head_units']})"],
        ["Pretrained weights", s["weights"] or "n/a"],
        ["Training stage", s["stage"] or "n/a"],
        ["Input", f"RGB {s['input_size']} x {s['input_size']} px, centre square crop, pixel values 0-255"],
        ["Seed / training views", f"{s['seed']} / {', '.join(s['views']) if s['views'] else 'n/a'}"],
    ]
    out += [_md_table(["", ""], rows), ""]

    out += ["## Intended use", "",
            "Research and education only: studying dermoscopic image classification, calibration, decision "
            "thresholds, explanations and their failure modes, on public data.", "",
            "### Out-of-scope uses", "", OUT_OF_SCOPE_USES, ""]

    out += ["## Training data", ""]
    if s["synthetic"]:
        out += [f"Generated (SYNTHETIC) images from `{s['data_dir']}`; nothing below about the Kaggle data "
                "applies to this run's numbers.", ""]
    out += [TRAINING_DATA_TEXT, ""]
    out += [f"This run: {s['n_train']} training, {s['n_val']} validation (held out from Kaggle `train/`) and "
            f"{s['n_test']} test images (Kaggle `test/`), from `{config.display_path(s['data_dir'])}`.", ""]

    out += ["## Evaluation", ""]
    if results:
        out += [f"From the report in `{report}`" + (" (with test-time augmentation)" if results.get("tta") else "")
                + ". 95 % CIs: stratified percentile bootstrap.", ""]
        thr = _num(results.get("threshold", s["threshold"]))
        for name, r in results.get("sets", {}).items():
            out += [f"### `{name}` (n = {r.get('n', 0)})", ""]
            if "at_threshold" not in r:
                out += ["No metrics: " + "; ".join(r.get("notes", ["no readable images"])), ""]
                continue
            out += [_metrics_table(r, thr), "", f"ECE {_fmt(r.get('ece'))}, Brier {_fmt(r.get('brier'))}.", ""]
            for n in r.get("notes", []):
                out.append(f"* note: {n}")
            if r.get("notes"):
                out.append("")
    else:
        out += ["No evaluation report found: run `skinlesion evaluate " + str(bundle_path) + "` and regenerate "
                "this card. Validation metrics (the data the threshold and temperature were fitted on, so "
                "optimistic):", ""]
        v = s["val_metrics"]
        rows = [[METRIC_LABELS[k], _fmt(v.get(k))] for k in METRIC_LABELS if k in v]
        out += [_md_table(["Metric (validation)", "value"], rows) if rows else "none recorded", ""]

    out += ["## Calibration", "", f"* {_calibration_text(s)}"]
    v = s["val_metrics"]
    if "ece_before" in v or "ece_after" in v:
        out.append(f"* validation ECE before {_fmt(v.get('ece_before'))}, after {_fmt(v.get('ece_after'))}")
    out += ["* reliability diagrams: `figures/reliability_<set>.png` in the report" if results else
            "* no reliability diagrams until the bundle is evaluated", ""]

    out += ["## Skin-tone subgroups", ""]
    tables = [(n, r["skin_tone"]) for n, r in (results or {}).get("sets", {}).items()
              if (r.get("skin_tone") or {}).get("rows")]
    if tables:
        for name, t in tables:
            out += [f"### `{name}`", "", skin_tone_markdown(t), ""]
    else:
        out += ["Not computed (evaluate the bundle with the skin-tone table on). Expect few or no images of "
                "darker skin: the training data are mostly light skin.", ""]

    out += ["## Decision policy", ""]
    out += [f"* {_policy_text(s)}",
            f"* uncertain band: {_band_text(s)}"]
    if s["band_sensitivity"] is not None:
        out.append(f"* band rule: below the band lie at most {1 - _num(s['band_sensitivity']):.0%} of validation "
                   f"malignant lesions; at or above it at most {1 - _num(s['band_specificity']):.0%} of validation "
                   "benign ones")
    pv = s["policy_val_metrics"]
    if "fraction_uncertain" in pv:
        out.append(f"* on validation: {_num(pv['fraction_uncertain']):.0%} referred as uncertain, "
                   f"{_num(pv.get('malignant_called_benign_appearing')):.1%} of malignant lesions called benign-appearing")
    out += ["* the threshold and band were frozen on validation data and never tuned on a test set", ""]

    out += ["## Out-of-distribution detector", ""]
    if s["ood"]:
        o = s["ood"]
        out += [f"Squared Mahalanobis distance of the image's pooled backbone features to the training features "
                f"(Ledoit-Wolf shrunk covariance); flagged when above the {_num(o.get('quantile')):.1%} quantile of "
                f"validation distances (threshold {_fmt(o.get('threshold'), 1)}). It is meant to catch images far "
                "from dermoscopy (objects, documents, animals), not every unusual lesion photo; a flag means the "
                "probability must be ignored, no flag does not mean the image is fit for the model.", ""]
    else:
        out += ["None in this bundle" + (" (ensembles average their members' flags)" if s["kind"] == "ensemble" else "")
                + ".", ""]

    out += ["## Limitations", "",
            "* One public dataset of uncertain provenance; no external clinical validation.",
            "* Reported test scores are optimistic because of train/test duplicates; prefer `test_dedup` numbers.",
            "* Balanced classes: PPV/NPV do not reflect real-world prevalence.",
            "* Skin-tone coverage is narrow; subgroups with few images cannot be judged.",
            "* Calibration was fitted on a validation split from the same source; it will drift on other cameras, "
            "clinics and populations.",
            "* Explanations (Grad-CAM and the like) show where the model looked, not why a lesion is malignant.",
            ""]

    out += ["## Leakage notes", "",
            "* The validation split is drawn from Kaggle `train/` without patient ids, so near-identical images "
            "of one lesion can fall into both training and validation: the threshold and temperature may be "
            "slightly optimistic.",
            "* Kaggle's `test/` shares exact and near-duplicate images with `train/`."]
    audit = _audit_summary()
    if audit:
        out.append(f"* {audit}")
    if results and "test_dedup" in results.get("sets", {}) and "test" in results.get("sets", {}):
        a = (results["sets"]["test"].get("at_threshold") or {}).get("roc_auc")
        b = (results["sets"]["test_dedup"].get("at_threshold") or {}).get("roc_auc")
        out.append(f"* ROC AUC on the full test split {_fmt_ci(a)} vs the de-duplicated subset {_fmt_ci(b)}.")
    out.append("")

    out += ["## Versions", ""]
    out += [_md_table(["Package", "Version"], [[k, v] for k, v in s["versions"].items()]) if s["versions"]
            else "not recorded", ""]
    return "\n".join(out).rstrip() + "\n"

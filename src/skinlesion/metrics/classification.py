"""Evaluation metrics for the binary benign/malignant task (point estimates).

Bootstrap confidence intervals, DeLong's test and ROC bands are in
:mod:`skinlesion.metrics.stats`.

Conventions used everywhere in this module:

* ``y_true``: int array of 0 (benign) / 1 (malignant); the positive class is *malignant*.
* ``y_prob``: P(malignant), floats in [0, 1]. A Keras ``(n, 1)`` sigmoid output is accepted too.
* Thresholded metrics call a case malignant when ``y_prob >= threshold``.
* A ratio whose denominator is zero (e.g. specificity with no benign cases) is ``nan``, not
  scikit-learn's ``zero_division=0``: a made-up 0 would read as "the model got them all wrong".
  :func:`undefined_metric_notes` says in words why a value is ``nan``.
* Ranking metrics (ROC AUC, PR AUC, sensitivity at specificity, ...) need both classes and are
  ``nan`` otherwise.

scikit-learn computes the confusion matrix, ROC AUC, average precision and ROC curve. The ratio
metrics are written once as formulas on (tn, fp, fn, tp) count arrays so the per-dataset values and
the vectorised bootstrap (:mod:`skinlesion.metrics.stats`) share one definition (the tests check
them against scikit-learn).

Only numpy, scipy and scikit-learn are imported, so this module loads fast (no TensorFlow).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics as skm

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
MetricFn = Callable[[IntArray, FloatArray], float]
MetricSpec = str | MetricFn

DEFAULT_THRESHOLD = 0.5
DEFAULT_TARGET_SPECIFICITY = 0.80
DEFAULT_TARGET_SENSITIVITY = 0.95

# Ratio metrics defined on confusion-matrix counts; "precision"/"recall" are accepted aliases.
COUNT_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
)
RANKING_METRICS: tuple[str, ...] = (
    "roc_auc",
    "pr_auc",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
)
METRIC_NAMES: tuple[str, ...] = COUNT_METRICS + RANKING_METRICS
METRIC_ALIASES: dict[str, str] = {"precision": "ppv", "recall": "sensitivity"}

# Slack for comparing rates with targets such as 0.95 (0.95 * 20 / 20 is not exactly 0.95).
_RATE_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def _as_1d(values: ArrayLike, name: str) -> NDArray[Any]:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:  # Keras sigmoid heads predict shape (n, 1)
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or shape (n, 1)); got shape {arr.shape}.")
    return arr


def validate_probabilities(y_prob: ArrayLike, name: str = "y_prob") -> FloatArray:
    """Return ``y_prob`` as a 1-D float64 array, or raise ValueError if it is not P(malignant)."""
    arr = _as_1d(y_prob, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one case.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric probabilities; got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} has {bad} NaN/inf values; check the model output.")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got range [{arr.min():.4g}, {arr.max():.4g}]. "
            "Pass P(malignant) (apply a sigmoid to logits first)."
        )
    return arr


def validate_labels(y_true: ArrayLike, name: str = "y_true") -> IntArray:
    """Return ``y_true`` as a 1-D int64 array of 0/1, or raise ValueError."""
    arr = _as_1d(y_true, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one case.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(
            f"{name} must be 0 (benign) / 1 (malignant) numbers; got dtype {arr.dtype}. "
            "Map class names to integers first (skinlesion.CLASS_NAMES gives the order)."
        )
    values = np.unique(arr)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(
            f"{name} must contain only 0 (benign) and 1 (malignant); got values {values[:10].tolist()}."
        )
    return arr.astype(np.int64)


def validate_binary_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[IntArray, FloatArray]:
    """Validate labels and probabilities together (same length, 0/1 labels, finite [0, 1] probs)."""
    labels = validate_labels(y_true)
    probs = validate_probabilities(y_prob)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"y_true and y_prob differ in length ({labels.shape[0]} vs {probs.shape[0]}); "
            "they must describe the same cases in the same order."
        )
    return labels, probs


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}.")
    return t


def _check_rate(value: float, name: str) -> float:
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1]; got {value!r}.")
    return v


def _canonical_name(name: str) -> str:
    canonical = METRIC_ALIASES.get(name, name)
    if canonical not in METRIC_NAMES:
        raise ValueError(
            f"Unknown metric {name!r}. Known: {', '.join(METRIC_NAMES)} "
            f"(aliases: {', '.join(METRIC_ALIASES)})."
        )
    return canonical


# --------------------------------------------------------------------------------------------
# Count-based metrics (shared by the scalar and the vectorised bootstrap code)
# --------------------------------------------------------------------------------------------
def _ratio(num: ArrayLike, den: ArrayLike) -> FloatArray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _count_metric(name: str, tn: ArrayLike, fp: ArrayLike, fn: ArrayLike, tp: ArrayLike) -> FloatArray:
    tn, fp, fn, tp = (np.asarray(a, dtype=np.float64) for a in (tn, fp, fn, tp))
    if name == "accuracy":
        return _ratio(tp + tn, tp + tn + fp + fn)
    if name == "sensitivity":
        return _ratio(tp, tp + fn)
    if name == "specificity":
        return _ratio(tn, tn + fp)
    if name == "ppv":
        return _ratio(tp, tp + fp)
    if name == "npv":
        return _ratio(tn, tn + fn)
    if name == "f1":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    if name == "balanced_accuracy":
        # NaN when a class is absent: the mean of one recall is not "balanced".
        return (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2.0
    raise ValueError(f"{name!r} is not a count metric; known: {', '.join(COUNT_METRICS)}.")


def confusion_matrix(
    y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, int]:
    """2x2 confusion matrix as ``{"tn", "fp", "fn", "tp"}`` (malignant = ``y_prob >= threshold``)."""
    labels, probs = validate_binary_inputs(y_true, y_prob)
    pred = (probs >= _check_threshold(threshold)).astype(np.int64)
    # labels=[0, 1] keeps the matrix 2x2 even when a class is missing.
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, pred, labels=[0, 1])
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def _scalar_count_metric(name: str, y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> float:
    cm = confusion_matrix(y_true, y_prob, threshold)
    return float(_count_metric(name, cm["tn"], cm["fp"], cm["fn"], cm["tp"]))


def accuracy(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of cases classified correctly."""
    return _scalar_count_metric("accuracy", y_true, y_prob, threshold)


def balanced_accuracy(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """(sensitivity + specificity) / 2; NaN unless both classes are present."""
    return _scalar_count_metric("balanced_accuracy", y_true, y_prob, threshold)


def sensitivity(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Sensitivity (recall, TPR): tp / (tp + fn); NaN without malignant cases."""
    return _scalar_count_metric("sensitivity", y_true, y_prob, threshold)


def specificity(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Specificity (TNR): tn / (tn + fp); NaN without benign cases."""
    return _scalar_count_metric("specificity", y_true, y_prob, threshold)


def precision(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Precision (PPV): tp / (tp + fp); NaN when nothing is called malignant."""
    return _scalar_count_metric("ppv", y_true, y_prob, threshold)


def npv(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Negative predictive value: tn / (tn + fn); NaN when nothing is called benign."""
    return _scalar_count_metric("npv", y_true, y_prob, threshold)


def f1(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> float:
    """F1 of the malignant class: 2tp / (2tp + fp + fn); NaN when tp + fp + fn == 0."""
    return _scalar_count_metric("f1", y_true, y_prob, threshold)


recall = sensitivity
ppv = precision


# --------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------
def _has_both_classes(labels: IntArray) -> bool:
    n_pos = int(labels.sum())
    return 0 < n_pos < labels.shape[0]


def roc_auc(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Area under the ROC curve; NaN (see :func:`undefined_metric_notes`) with one class only."""
    labels, probs = validate_binary_inputs(y_true, y_prob)
    if not _has_both_classes(labels):
        return float("nan")
    return float(skm.roc_auc_score(labels, probs))


def pr_auc(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision; NaN with one class only.

    With only malignant cases AP would be a trivial 1.0, so it is NaN there too.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    if not _has_both_classes(labels):
        return float("nan")
    return float(skm.average_precision_score(labels, probs))


def _roc_points(labels: IntArray, probs: FloatArray) -> tuple[FloatArray, FloatArray]:
    # drop_intermediate=False keeps every operating point, so no achievable threshold is lost.
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    return fpr, tpr


def sensitivity_at_specificity(
    y_true: ArrayLike, y_prob: ArrayLike, target_spec: float = DEFAULT_TARGET_SPECIFICITY
) -> float:
    """Highest sensitivity over thresholds whose specificity is >= ``target_spec``; NaN with one class."""
    target = _check_rate(target_spec, "target_spec")
    labels, probs = validate_binary_inputs(y_true, y_prob)
    if not _has_both_classes(labels):
        return float("nan")
    fpr, tpr = _roc_points(labels, probs)
    feasible = 1.0 - fpr >= target - _RATE_TOL  # the (0, 0) point is always feasible
    return float(tpr[feasible].max())


def specificity_at_sensitivity(
    y_true: ArrayLike, y_prob: ArrayLike, target_sens: float = DEFAULT_TARGET_SENSITIVITY
) -> float:
    """Highest specificity over thresholds whose sensitivity is >= ``target_sens``; NaN with one class."""
    target = _check_rate(target_sens, "target_sens")
    labels, probs = validate_binary_inputs(y_true, y_prob)
    if not _has_both_classes(labels):
        return float("nan")
    fpr, tpr = _roc_points(labels, probs)
    feasible = tpr >= target - _RATE_TOL  # the (1, 1) point is always feasible
    return float(1.0 - fpr[feasible].min())


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def undefined_metric_notes(
    y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD
) -> list[str]:
    """Plain-language reasons why some metrics are NaN on these data (empty list if none are)."""
    labels, probs = validate_binary_inputs(y_true, y_prob)
    cm = confusion_matrix(labels, probs, threshold)
    n_pos = int(labels.sum())
    n_neg = labels.shape[0] - n_pos
    notes: list[str] = []
    if n_pos == 0 or n_neg == 0:
        present = "benign" if n_pos == 0 else "malignant"
        notes.append(
            f"only one class present (all {labels.shape[0]} cases are {present}): ROC AUC, PR AUC, "
            "sensitivity at specificity, specificity at sensitivity and balanced accuracy are "
            "undefined (NaN)"
        )
    if n_pos == 0:
        notes.append("no malignant cases: sensitivity is undefined (NaN)")
    if n_neg == 0:
        notes.append("no benign cases: specificity is undefined (NaN)")
    if cm["tp"] + cm["fp"] == 0:
        notes.append(f"no case has P(malignant) >= {threshold:g}: PPV (precision) is undefined (NaN)")
    if cm["tn"] + cm["fn"] == 0:
        notes.append(f"no case has P(malignant) < {threshold:g}: NPV is undefined (NaN)")
    if cm["tp"] + cm["fp"] + cm["fn"] == 0:
        notes.append("no malignant cases and none predicted malignant: F1 is undefined (NaN)")
    return notes


def summarize(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    target_specificity: float = DEFAULT_TARGET_SPECIFICITY,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
) -> dict[str, Any]:
    """All metrics in one dict: counts, threshold metrics, ranking metrics and ``notes``.

    Keys: n, n_pos, n_neg, threshold, tn, fp, fn, tp, the names in :data:`METRIC_NAMES`,
    target_specificity, target_sensitivity and notes (list of str explaining any NaN).
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    threshold = _check_threshold(threshold)
    cm = confusion_matrix(labels, probs, threshold)
    out: dict[str, Any] = {
        "n": int(labels.shape[0]),
        "n_pos": int(labels.sum()),
        "n_neg": int(labels.shape[0] - labels.sum()),
        "threshold": threshold,
        **cm,
    }
    for name in COUNT_METRICS:
        out[name] = float(_count_metric(name, cm["tn"], cm["fp"], cm["fn"], cm["tp"]))
    out["roc_auc"] = roc_auc(labels, probs)
    out["pr_auc"] = pr_auc(labels, probs)
    out["sensitivity_at_specificity"] = sensitivity_at_specificity(labels, probs, target_specificity)
    out["target_specificity"] = float(target_specificity)
    out["specificity_at_sensitivity"] = specificity_at_sensitivity(labels, probs, target_sensitivity)
    out["target_sensitivity"] = float(target_sensitivity)
    out["notes"] = undefined_metric_notes(labels, probs, threshold)
    return out


def _scalar_metric(
    name: str, labels: IntArray, probs: FloatArray, threshold: float, target_spec: float, target_sens: float
) -> float:
    if name in COUNT_METRICS:
        return _scalar_count_metric(name, labels, probs, threshold)
    if name == "roc_auc":
        return roc_auc(labels, probs)
    if name == "pr_auc":
        return pr_auc(labels, probs)
    if name == "sensitivity_at_specificity":
        return sensitivity_at_specificity(labels, probs, target_spec)
    if name == "specificity_at_sensitivity":
        return specificity_at_sensitivity(labels, probs, target_sens)
    raise ValueError(f"Unknown metric {name!r}.")

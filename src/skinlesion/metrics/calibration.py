"""Probability calibration and the decision policy built on it.

* Calibration measures: :func:`expected_calibration_error`, :func:`brier_score`,
  :func:`reliability_curve`.
* Recalibration of the single sigmoid output: temperature scaling (:func:`fit_temperature`,
  :func:`apply_temperature`).
* Decision policy: a threshold chosen for a target sensitivity plus a "refer" band around it
  (:func:`choose_threshold_for_sensitivity`, :func:`uncertainty_band`, :class:`DecisionPolicy`,
  :func:`fit_decision_policy` on calibrated probabilities, :func:`build_decision_policy` on raw
  ones).

Conventions as in :mod:`skinlesion.metrics.classification`: ``y_true`` is 0 benign / 1 malignant, ``y_prob`` is
P(malignant), and ``y_prob >= threshold`` means "malignant". numpy/scipy/scikit-learn only.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from skinlesion.io import clean_json
from skinlesion.metrics.classification import summarize, validate_binary_inputs, validate_probabilities

FloatArray = NDArray[np.float64]

PROB_CLIP = 1e-7
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)

SUSPICIOUS = "suspicious"
BENIGN_APPEARING = "benign-appearing"
UNCERTAIN_REFER = "uncertain — refer"
DECISIONS: tuple[str, str, str] = (SUSPICIOUS, UNCERTAIN_REFER, BENIGN_APPEARING)

# Integer rounding slack: 0.95 * 20 evaluates to 19.000000000000004, which must still mean 19.
_COUNT_TOL = 1e-9


def _require_both_classes(labels: NDArray[np.int64], what: str) -> None:
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.shape[0]:
        raise ValueError(
            f"{what} needs both benign and malignant cases; got only "
            f"{'benign' if n_pos == 0 else 'malignant'} ({labels.shape[0]} cases). "
            "Use a validation split that contains both classes."
        )


def _check_target(value: float, name: str) -> float:
    v = float(value)
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be in (0, 1]; got {value!r}.")
    return v


# --------------------------------------------------------------------------------------------
# Calibration measures
# --------------------------------------------------------------------------------------------
def _bin_edges(probs: FloatArray, n_bins: int, strategy: str) -> FloatArray:
    # Same edges as sklearn.calibration.calibration_curve (which does not return them).
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(probs, np.linspace(0.0, 100.0, n_bins + 1))
    raise ValueError(f"strategy must be 'uniform' or 'quantile'; got {strategy!r}.")


def reliability_curve(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 15, strategy: str = "uniform"
) -> dict[str, FloatArray]:
    """Reliability diagram data: ``prob_pred`` (mean P(malignant) per bin), ``prob_true``
    (observed malignant fraction per bin), ``counts`` (cases per bin) and ``bin_edges``.

    Empty bins are dropped, as ``sklearn.calibration.calibration_curve`` does.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins!r}.")
    n_bins = int(n_bins)
    edges = _bin_edges(probs, n_bins, strategy)
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=n_bins, strategy=strategy, pos_label=1)
    # calibration_curve gives no counts; recount with its binning rule (searchsorted on the
    # inner edges) so counts line up with its non-empty bins.
    totals = np.bincount(np.searchsorted(edges[1:-1], probs), minlength=n_bins)
    counts = totals[totals > 0]
    if counts.shape != prob_true.shape:
        raise RuntimeError(
            "reliability_curve: bin counts do not match sklearn's calibration_curve bins; "
            "scikit-learn's binning rule has changed, update skinlesion.metrics.calibration._bin_edges."
        )
    return {
        "prob_pred": np.asarray(prob_pred, dtype=np.float64),
        "prob_true": np.asarray(prob_true, dtype=np.float64),
        "counts": counts.astype(np.int64),
        "bin_edges": edges,
    }


def expected_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """Binary ECE on P(malignant): sum over bins of (bin size / n) * |observed freq - mean prob|.

    Bins as in :func:`reliability_curve` ("uniform": equal-width on [0, 1]; "quantile":
    equal-count). 0 is perfect calibration.
    """
    curve = reliability_curve(y_true, y_prob, n_bins, strategy)
    weights = curve["counts"] / curve["counts"].sum()
    return float(np.sum(weights * np.abs(curve["prob_true"] - curve["prob_pred"])))


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared error of P(malignant) against the 0/1 label (lower is better)."""
    labels, probs = validate_binary_inputs(y_true, y_prob)
    # pos_label=1 keeps single-class sets working (sklearn cannot infer it from one label).
    return float(brier_score_loss(labels, probs, pos_label=1))


def negative_log_likelihood(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean binary cross-entropy of P(malignant) (probabilities clipped to [1e-7, 1 - 1e-7])."""
    labels, probs = validate_binary_inputs(y_true, y_prob)
    return _nll_from_logits(_logit(probs), labels)


# --------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------
def _logit(probs: FloatArray) -> FloatArray:
    return special.logit(np.clip(probs, PROB_CLIP, 1.0 - PROB_CLIP))


def _nll_from_logits(logits: FloatArray, labels: NDArray[np.int64]) -> float:
    # -log(sigmoid(s)) = logaddexp(0, -s): stable for large |s|, unlike log(expit(s)).
    return float(np.mean(np.where(labels == 1, np.logaddexp(0.0, -logits), np.logaddexp(0.0, logits))))


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}.")
    return t


def fit_temperature(
    y_true: ArrayLike, y_prob: ArrayLike, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """Temperature T > 0 minimising validation NLL of ``sigmoid(logit(p) / T)``.

    T > 1 softens over-confident probabilities, T < 1 sharpens them; the ranking (and so ROC
    AUC and every threshold's confusion matrix) is unchanged. The search runs on log T within
    ``bounds``: NLL is convex in 1/T, hence unimodal in log T, so bounded Brent finds the optimum.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    _require_both_classes(labels, "fit_temperature")
    lo, hi = (float(b) for b in bounds)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf; got {bounds!r}.")
    logits = _logit(probs)
    result = optimize.minimize_scalar(
        lambda log_t: _nll_from_logits(logits / math.exp(log_t), labels),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    if not result.success:
        raise RuntimeError(f"Temperature fit did not converge: {result.message}")
    return float(math.exp(result.x))


def apply_temperature(y_prob: ArrayLike, temperature: float) -> FloatArray:
    """``sigmoid(logit(p) / T)`` with p clipped to [1e-7, 1 - 1e-7] first; returns a 1-D array."""
    probs = validate_probabilities(y_prob)
    t = _check_temperature(temperature)
    return special.expit(_logit(probs) / t)


# --------------------------------------------------------------------------------------------
# Thresholds and the refer band
# --------------------------------------------------------------------------------------------
def choose_threshold_for_sensitivity(
    y_true: ArrayLike, y_prob: ArrayLike, target_sensitivity: float = 0.95
) -> float:
    """The highest threshold whose sensitivity on these data is >= ``target_sensitivity``.

    It is the k-th highest malignant score with k = ceil(target * n_malignant): calling
    ``y_prob >= threshold`` malignant catches at least k malignant cases, and any higher
    threshold catches fewer, so specificity is as high as the target allows.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    target = _check_target(target_sensitivity, "target_sensitivity")
    pos = np.sort(probs[labels == 1])[::-1]
    if pos.size == 0:
        raise ValueError("choose_threshold_for_sensitivity needs at least one malignant case.")
    k = max(1, math.ceil(target * pos.size - _COUNT_TOL))
    return float(pos[k - 1])


def choose_threshold_for_specificity(
    y_true: ArrayLike, y_prob: ArrayLike, target_specificity: float = 0.95
) -> float:
    """The lowest threshold whose specificity on these data is >= ``target_specificity``.

    With m = ceil(target * n_benign) and b the m-th lowest benign score, it is the smallest
    float above b (``np.nextafter``): at least m benign cases fall below it, and any lower
    threshold leaves fewer below. May exceed 1.0 when b == 1.0 (then nothing is called
    malignant at that specificity).
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    target = _check_target(target_specificity, "target_specificity")
    neg = np.sort(probs[labels == 0])
    if neg.size == 0:
        raise ValueError("choose_threshold_for_specificity needs at least one benign case.")
    m = max(1, math.ceil(target * neg.size - _COUNT_TOL))
    return float(np.nextafter(neg[m - 1], np.inf))


def uncertainty_band(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    band_sensitivity: float = 0.99,
    band_specificity: float = 0.95,
) -> tuple[float, float]:
    """The "uncertain — refer" band ``(low, high)`` around ``threshold``, fitted on validation data.

    Rule:

    * ``low = min(threshold, choose_threshold_for_sensitivity(..., band_sensitivity))``:
      below ``low`` lie at most (1 - band_sensitivity) of the validation malignant cases,
      so "benign-appearing" is said only where malignant lesions were rare.
    * ``high = max(threshold, choose_threshold_for_specificity(..., band_specificity))``:
      at or above ``high`` lie at most (1 - band_specificity) of the validation benign
      cases, so "suspicious" is said only where benign lesions were rare.

    The min/max guarantee ``low <= threshold <= high`` whatever threshold is passed.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    _require_both_classes(labels, "uncertainty_band")
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite; got {threshold!r}.")
    low = min(t, choose_threshold_for_sensitivity(labels, probs, band_sensitivity))
    high = max(t, choose_threshold_for_specificity(labels, probs, band_specificity))
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# Decision policy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecisionPolicy:
    """Threshold, refer band and calibration fitted on validation data.

    Thresholds are on the *calibrated* probability scale: feed :meth:`decide` the output of
    :meth:`calibrate`.

    Decision rule for a calibrated P(malignant) ``p``:

    * ``p >= band_high``           -> ``"suspicious"``
    * ``band_low <= p < band_high`` -> ``"uncertain — refer"``
    * ``p < band_low``             -> ``"benign-appearing"``

    ``threshold`` (the operating point for ``target_sensitivity``) lies inside
    ``[band_low, band_high]``; see :func:`uncertainty_band` for how the band is set.
    """

    threshold: float
    band_low: float
    band_high: float
    target_sensitivity: float
    temperature: float = 1.0
    band_sensitivity: float = 0.99
    band_specificity: float = 0.95
    validation_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("threshold", "band_low", "band_high"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"DecisionPolicy.{name} must be finite; got {getattr(self, name)!r}.")
        if not (self.band_low <= self.threshold <= self.band_high):
            raise ValueError(
                "DecisionPolicy needs band_low <= threshold <= band_high; got "
                f"{self.band_low!r} <= {self.threshold!r} <= {self.band_high!r}."
            )
        _check_temperature(self.temperature)
        for name in ("target_sensitivity", "band_sensitivity", "band_specificity"):
            _check_target(getattr(self, name), f"DecisionPolicy.{name}")

    def calibrate(self, raw_prob: float | ArrayLike) -> float | FloatArray:
        """Apply the policy's temperature to raw P(malignant) (scalar in, scalar out)."""
        if np.ndim(raw_prob) == 0:
            return float(apply_temperature([float(np.asarray(raw_prob))], self.temperature)[0])
        return apply_temperature(raw_prob, self.temperature)

    def decide(self, p: float) -> str:
        """One of :data:`DECISIONS` for a calibrated P(malignant) ``p`` (rule in the class doc)."""
        value = float(p)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"p must be a probability in [0, 1]; got {p!r}.")
        if value >= self.band_high:
            return SUSPICIOUS
        if value >= self.band_low:
            return UNCERTAIN_REFER
        return BENIGN_APPEARING

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN metrics become None)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["validation_metrics"] = clean_json(dict(self.validation_metrics))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionPolicy:
        """Inverse of :meth:`to_dict` (None metrics become NaN)."""
        known = {f.name for f in fields(cls)}
        required = {"threshold", "band_low", "band_high", "target_sensitivity"}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - known)
        if missing or unknown:
            raise ValueError(
                f"Not a DecisionPolicy dict: missing keys {missing}, unknown keys {unknown}. "
                f"Expected keys: {sorted(known)}."
            )
        kwargs = dict(data)
        metrics = kwargs.get("validation_metrics") or {}
        kwargs["validation_metrics"] = {
            str(k): float("nan") if v is None else v for k, v in dict(metrics).items()
        }
        for name in known - {"validation_metrics"}:
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        return cls(**kwargs)


def fit_decision_policy(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    target_sensitivity: float = 0.95,
    *,
    temperature: float = 1.0,
    band_sensitivity: float = 0.99,
    band_specificity: float = 0.95,
    n_bins: int = 15,
) -> DecisionPolicy:
    """Fit a :class:`DecisionPolicy` on validation labels and *already calibrated* probabilities.

    ``temperature`` is only recorded (it must be the one that produced ``y_prob``); use
    :func:`build_decision_policy` to fit it too. Chooses the highest threshold with validation
    sensitivity >= ``target_sensitivity``, sets the refer band with :func:`uncertainty_band`,
    and records validation metrics at the threshold (:func:`skinlesion.metrics.classification.summarize`),
    ECE and Brier score, and the fraction of validation cases given each decision.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    _require_both_classes(labels, "fit_decision_policy")
    target = _check_target(target_sensitivity, "target_sensitivity")
    threshold = choose_threshold_for_sensitivity(labels, probs, target)
    low, high = uncertainty_band(labels, probs, threshold, band_sensitivity, band_specificity)

    summary = summarize(labels, probs, threshold, target_sensitivity=target)
    metrics: dict[str, float] = {
        k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and k != "threshold"
    }
    metrics["ece"] = expected_calibration_error(labels, probs, n_bins)
    metrics["brier"] = brier_score(labels, probs)
    suspicious = probs >= high
    benign = probs < low
    metrics["fraction_suspicious"] = float(np.mean(suspicious))
    metrics["fraction_uncertain"] = float(np.mean(~suspicious & ~benign))
    metrics["fraction_benign_appearing"] = float(np.mean(benign))
    metrics["malignant_called_benign_appearing"] = float(np.mean(benign[labels == 1]))
    metrics["benign_called_suspicious"] = float(np.mean(suspicious[labels == 0]))
    return DecisionPolicy(
        threshold=threshold,
        band_low=low,
        band_high=high,
        target_sensitivity=target,
        temperature=_check_temperature(temperature),
        band_sensitivity=float(band_sensitivity),
        band_specificity=float(band_specificity),
        validation_metrics=metrics,
    )


def build_decision_policy(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    target_sensitivity: float = 0.95,
    *,
    band_sensitivity: float = 0.99,
    band_specificity: float = 0.95,
    calibrate: bool = True,
    n_bins: int = 15,
) -> DecisionPolicy:
    """Fit temperature (if ``calibrate``) and then :func:`fit_decision_policy`, from *raw* probabilities.

    Adds ``ece_raw`` and ``brier_raw`` (before calibration) to the validation metrics.
    """
    labels, raw = validate_binary_inputs(y_true, y_prob)
    _require_both_classes(labels, "build_decision_policy")
    temperature = fit_temperature(labels, raw) if calibrate else 1.0
    probs = apply_temperature(raw, temperature) if calibrate else raw
    policy = fit_decision_policy(
        labels, probs, target_sensitivity, temperature=temperature,
        band_sensitivity=band_sensitivity, band_specificity=band_specificity, n_bins=n_bins,
    )
    extra = {
        "ece_raw": expected_calibration_error(labels, raw, n_bins),
        "brier_raw": brier_score(labels, raw),
    }
    return replace(policy, validation_metrics={**policy.validation_metrics, **extra})

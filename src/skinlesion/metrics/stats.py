"""Uncertainty for the metrics of :mod:`skinlesion.metrics.classification`.

Seeded (stratified) percentile bootstrap confidence intervals computed for all resamples at
once with array operations, DeLong's test for two correlated ROC AUCs with a paired bootstrap
CI of the difference, Holm's correction for several such tests, and an ROC curve with a
bootstrap band (for plotting).

:data:`N_BOOTSTRAP` is the project's one bootstrap resample count: the default of every function
here, of every ``--resamples`` CLI option, of the reports and of the notebooks.

Only numpy, scipy and scikit-learn are imported (no TensorFlow).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from skinlesion.metrics.classification import (
    _RATE_TOL,
    COUNT_METRICS,
    DEFAULT_TARGET_SENSITIVITY,
    DEFAULT_TARGET_SPECIFICITY,
    DEFAULT_THRESHOLD,
    METRIC_NAMES,
    FloatArray,
    IntArray,
    MetricSpec,
    _canonical_name,
    _check_rate,
    _check_threshold,
    _count_metric,
    _has_both_classes,
    _ratio,
    _scalar_metric,
    roc_auc,
    validate_binary_inputs,
    validate_labels,
    validate_probabilities,
)

# Resamples behind every bootstrap CI the project reports (README "Results"). 2,000 keeps the
# Monte-Carlo error of a 95 % percentile bound well under the third decimal printed, and the
# vectorised bootstrap below makes it cost well under a second per metric set.
N_BOOTSTRAP = 2000

# Keep each bootstrap work array at about this many elements (x 8 bytes) whatever n is.
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# Vectorised metrics on resampled matrices: row r of (labels, probs) is one bootstrap sample.
# --------------------------------------------------------------------------------------------
def _batch_counts(labels: NDArray[Any], probs: FloatArray, threshold: float) -> tuple[FloatArray, ...]:
    pred = probs >= threshold
    pos = labels.astype(bool)
    tp = np.count_nonzero(pred & pos, axis=1)
    fp = np.count_nonzero(pred & ~pos, axis=1)
    fn = np.count_nonzero(~pred & pos, axis=1)
    tn = labels.shape[1] - tp - fp - fn
    return tn, fp, fn, tp


def _batch_auc(labels: NDArray[Any], probs: FloatArray) -> FloatArray:
    """Mann-Whitney AUC per row: (rank sum of positives - n_pos(n_pos+1)/2) / (n_pos n_neg).

    Midranks from ``rankdata(axis=1)`` count ties as 1/2, exactly like ``roc_auc_score``.
    """
    ranks = stats.rankdata(probs, axis=1)
    n_pos = labels.sum(axis=1).astype(np.float64)
    n_neg = labels.shape[1] - n_pos
    rank_sum = np.einsum("ij,ij->i", ranks, labels.astype(np.float64))
    return _ratio(rank_sum - n_pos * (n_pos + 1) / 2.0, n_pos * n_neg)


_RocSteps = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]


def _batch_roc_steps(labels: NDArray[Any], probs: FloatArray) -> _RocSteps:
    """Per-row cumulative (tp, fp) counts at every distinct threshold, high to low.

    Returns ``(tp, fp, y_sorted, n_pos, n_neg)`` where ``tp``/``fp`` have shape (m, n + 1):
    column 0 is the "call nothing malignant" point and column i + 1 holds the counts after the
    tie group containing sorted position i (values are repeated within a tie group, so each
    row is a non-decreasing list of the ROC curve's vertices, some repeated).
    """
    m, n = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    s = np.take_along_axis(probs, order, axis=1)
    y = np.take_along_axis(labels, order, axis=1).astype(np.float64)
    tp = np.cumsum(y, axis=1)
    fp = np.arange(1, n + 1, dtype=np.float64) - tp
    is_end = np.ones((m, n), dtype=bool)
    is_end[:, :-1] = s[:, 1:] != s[:, :-1]
    end_pos = np.where(is_end, np.arange(n), n)
    group_end = np.minimum.accumulate(end_pos[:, ::-1], axis=1)[:, ::-1]
    zeros = np.zeros((m, 1))
    tp_steps = np.hstack([zeros, np.take_along_axis(tp, group_end, axis=1)])
    fp_steps = np.hstack([zeros, np.take_along_axis(fp, group_end, axis=1)])
    n_pos = tp[:, -1]
    return tp_steps, fp_steps, y, n_pos, n - n_pos


def _batch_pr_auc(steps: _RocSteps) -> FloatArray:
    # Average precision: each malignant case contributes the precision at its tie group's end.
    tp, fp, y, n_pos, n_neg = steps
    prec = tp[:, 1:] / (tp[:, 1:] + fp[:, 1:])
    ap = _ratio(np.einsum("ij,ij->i", y, prec), n_pos)
    return np.where(n_neg > 0, ap, np.nan)


def _batch_rates(steps: _RocSteps) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    tp, fp, _, n_pos, n_neg = steps
    both = (n_pos > 0) & (n_neg > 0)
    return _ratio(fp, n_neg[:, None]), _ratio(tp, n_pos[:, None]), both


def _batch_sens_at_spec(steps: _RocSteps, target: float) -> FloatArray:
    fpr, tpr, both = _batch_rates(steps)
    feasible = 1.0 - fpr >= target - _RATE_TOL
    return np.where(both, np.where(feasible, tpr, -np.inf).max(axis=1), np.nan)


def _batch_spec_at_sens(steps: _RocSteps, target: float) -> FloatArray:
    fpr, tpr, both = _batch_rates(steps)
    feasible = tpr >= target - _RATE_TOL
    return np.where(both, 1.0 - np.where(feasible, fpr, np.inf).min(axis=1), np.nan)


def _batch_tpr_at_fpr(steps: _RocSteps, fpr_grid: FloatArray) -> FloatArray:
    """Vertical averaging support: TPR of each row's ROC curve at every FPR in ``fpr_grid``.

    Linear interpolation between ROC vertices (tie groups give diagonal segments, as in
    ``roc_curve``); at a vertical jump the upper TPR is used. Shape (m, len(fpr_grid)).
    """
    tp, fp, _, n_pos, n_neg = steps
    m, width = fp.shape
    # One global searchsorted instead of a Python loop over rows: offsetting row r's
    # (non-decreasing) fp counts by r * width makes the flattened array sorted.
    offsets = (np.arange(m) * width)[:, None]
    allowed_fp = fpr_grid[None, :] * n_neg[:, None]
    queries = (allowed_fp + offsets + 1e-9).ravel()
    k = np.searchsorted((fp + offsets).ravel(), queries, side="right").reshape(allowed_fp.shape) - 1
    k = k - offsets
    k1 = np.minimum(k + 1, width - 1)
    fp_k = np.take_along_axis(fp, k, axis=1)
    tp_k = np.take_along_axis(tp, k, axis=1)
    step = np.take_along_axis(fp, k1, axis=1) - fp_k
    rise = np.take_along_axis(tp, k1, axis=1) - tp_k
    frac = np.clip(_ratio(allowed_fp - fp_k, step), 0.0, 1.0)
    tp_interp = tp_k + np.where(step > 0, frac, 0.0) * rise
    tpr = _ratio(tp_interp, n_pos[:, None])
    return np.where(((n_pos > 0) & (n_neg > 0))[:, None], tpr, np.nan)


class _Batch:
    """Resampled (labels, probs) matrices with the sorted ROC steps computed once, on demand."""

    def __init__(self, labels: NDArray[Any], probs: FloatArray) -> None:
        self.labels = labels
        self.probs = probs
        self._steps: _RocSteps | None = None

    @property
    def steps(self) -> _RocSteps:
        if self._steps is None:
            self._steps = _batch_roc_steps(self.labels, self.probs)
        return self._steps

    def metric(self, name: str, threshold: float, target_spec: float, target_sens: float) -> FloatArray:
        if name in COUNT_METRICS:
            return _count_metric(name, *_batch_counts(self.labels, self.probs, threshold))
        if name == "roc_auc":
            return _batch_auc(self.labels, self.probs)
        if name == "pr_auc":
            return _batch_pr_auc(self.steps)
        if name == "sensitivity_at_specificity":
            return _batch_sens_at_spec(self.steps, target_spec)
        if name == "specificity_at_sensitivity":
            return _batch_spec_at_sens(self.steps, target_sens)
        raise ValueError(f"Unknown metric {name!r}.")


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------
def bootstrap_indices(
    y_true: ArrayLike, n_resamples: int = N_BOOTSTRAP, seed: int = 0, stratified: bool = True
) -> NDArray[np.intp]:
    """All resample index arrays at once, shape (n_resamples, n).

    Stratified: each row draws n_pos malignant and n_neg benign cases with replacement from
    their own class (malignant first), so every resample keeps the original class balance and
    ranking metrics are always defined.
    """
    labels = validate_labels(y_true)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples!r}.")
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    if not stratified:
        return rng.integers(0, n, size=(int(n_resamples), n))
    parts = []
    for cls in (1, 0):
        members = np.flatnonzero(labels == cls)
        if members.size:
            parts.append(members[rng.integers(0, members.size, size=(int(n_resamples), members.size))])
    return np.hstack(parts)


def _row_chunks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _metric_label(spec: MetricSpec, taken: set[str]) -> str:
    base = spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)
    label, i = base, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    return label


def _bootstrap_distributions(
    labels: IntArray,
    probs: FloatArray,
    specs: Sequence[MetricSpec],
    idx: NDArray[np.intp],
    threshold: float,
    target_spec: float,
    target_sens: float,
) -> dict[str, FloatArray]:
    resolved: list[tuple[str, MetricSpec]] = []
    for spec in specs:
        label = _metric_label(spec, {r[0] for r in resolved})
        resolved.append((label, _canonical_name(spec) if isinstance(spec, str) else spec))
    dists = {label: np.empty(idx.shape[0]) for label, _ in resolved}
    for rows in _row_chunks(idx.shape[0], idx.shape[1]):
        batch = _Batch(labels[idx[rows]], probs[idx[rows]])
        for label, spec in resolved:
            if isinstance(spec, str):
                dists[label][rows] = batch.metric(spec, threshold, target_spec, target_sens)
            else:
                # An arbitrary callable cannot be vectorised: one call per resample.
                dists[label][rows] = [
                    float(spec(batch.labels[r], batch.probs[r])) for r in range(batch.labels.shape[0])
                ]
    return dists


def _percentile_interval(dist: FloatArray, confidence: float) -> tuple[float, float]:
    finite = dist[np.isfinite(dist)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not (0.0 < c < 1.0):
        raise ValueError(f"confidence must be strictly between 0 and 1 (e.g. 0.95); got {confidence!r}.")
    return c


def bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    metrics: MetricSpec | Sequence[MetricSpec] = METRIC_NAMES,
    n_resamples: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    target_specificity: float = DEFAULT_TARGET_SPECIFICITY,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
) -> dict[str, tuple[float, float, float]]:
    """Seeded bootstrap confidence intervals: ``{name: (point, low, high)}``.

    ``metrics`` is a metric name (see :data:`METRIC_NAMES`; "precision"/"recall" work too), a
    callable ``fn(y_true, y_prob) -> float``, or a list of them. Intervals are *percentile*
    intervals of the resampled values; the point estimate is the metric on the full data.
    BCa (``scipy.stats.bootstrap``) is not used because it cannot resample within classes.

    Named metrics are computed for all resamples at once with array operations (rank-based
    Mann-Whitney AUC, confusion counts by boolean sums, ROC steps by sorted cumulative counts);
    callables are called once per resample. Resamples where a metric is undefined (NaN, e.g.
    a non-stratified resample without malignant cases) are left out of the percentiles.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    confidence = _check_confidence(confidence)
    threshold = _check_threshold(threshold)
    target_specificity = _check_rate(target_specificity, "target_specificity")
    target_sensitivity = _check_rate(target_sensitivity, "target_sensitivity")
    specs: list[MetricSpec] = [metrics] if isinstance(metrics, str) or callable(metrics) else list(metrics)
    if not specs:
        raise ValueError("metrics is empty; name at least one metric.")
    idx = bootstrap_indices(labels, n_resamples, seed, stratified)
    dists = _bootstrap_distributions(
        labels, probs, specs, idx, threshold, target_specificity, target_sensitivity
    )
    out: dict[str, tuple[float, float, float]] = {}
    for (label, dist), spec in zip(dists.items(), specs):
        if isinstance(spec, str):
            point = _scalar_metric(
                _canonical_name(spec), labels, probs, threshold, target_specificity, target_sensitivity
            )
        else:
            point = float(spec(labels, probs))
        low, high = _percentile_interval(dist, confidence) if math.isfinite(point) else (float("nan"),) * 2
        out[label] = (point, low, high)
    return out


def summarize_with_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    stratified: bool = True,
    target_specificity: float = DEFAULT_TARGET_SPECIFICITY,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
) -> dict[str, dict[str, float]]:
    """Every metric in :data:`METRIC_NAMES` as ``{name: {"value", "low", "high"}}`` (percentile CI)."""
    cis = bootstrap_ci(
        y_true, y_prob, METRIC_NAMES, n_resamples, confidence, seed, stratified,
        threshold=threshold, target_specificity=target_specificity, target_sensitivity=target_sensitivity,
    )
    return {name: {"value": v, "low": lo, "high": hi} for name, (v, lo, hi) in cis.items()}


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------
def _delong_structural(labels: IntArray, probs_k: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """AUCs and DeLong structural components for k score rows (Sun & Xu 2014 midrank algorithm).

    Returns ``(aucs (k,), v10 (k, n_pos), v01 (k, n_neg))``: v10 is each malignant case's
    fraction of benign cases scored below it, v01 each benign case's fraction of malignant
    cases scored above it (ties count 1/2).
    """
    pos = probs_k[:, labels == 1]
    neg = probs_k[:, labels == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.hstack([pos, neg]), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def _delong_covariance(labels: IntArray, probs_k: FloatArray) -> tuple[FloatArray, FloatArray]:
    labels = np.asarray(labels)
    m = int(labels.sum())
    n = labels.shape[0] - m
    if m < 2 or n < 2:
        raise ValueError(
            f"DeLong's method needs at least 2 malignant and 2 benign cases; got {m} and {n}."
        )
    aucs, v10, v01 = _delong_structural(labels, probs_k)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_roc_variance(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[float, float]:
    """``(auc, variance)`` of one ROC AUC by DeLong's method (fast midrank algorithm)."""
    labels, probs = validate_binary_inputs(y_true, y_prob)
    aucs, cov = _delong_covariance(labels, probs[None, :])
    return float(aucs[0]), float(cov[0, 0])


def paired_auc_test(
    y_true: ArrayLike,
    prob_a: ArrayLike,
    prob_b: ArrayLike,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    *,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare two models' ROC AUCs on the same cases.

    Returns auc_a, auc_b, diff (= auc_a - auc_b), ci_low/ci_high (paired stratified percentile
    bootstrap CI of diff: both models are scored on the same resamples), p_value (two-sided,
    DeLong's test), z and se (DeLong), delong_ci_low/delong_ci_high (normal-approximation CI)
    and method (a sentence naming both procedures). When DeLong's variance of the difference is
    0 (e.g. identical predictions) p_value is 1.0 if diff == 0, else 0.0.
    """
    # scikit-learn and scipy do not implement DeLong's test, so it is written out here
    # following Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing
    # the areas under correlated receiver operating characteristic curves", IEEE SPL 21(11).
    labels, pa = validate_binary_inputs(y_true, prob_a)
    pb = validate_probabilities(prob_b, "prob_b")
    if pb.shape[0] != labels.shape[0]:
        raise ValueError(
            f"prob_b has {pb.shape[0]} values but y_true has {labels.shape[0]}; score the same cases."
        )
    confidence = _check_confidence(confidence)
    aucs, cov = _delong_covariance(labels, np.vstack([pa, pb]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    z_crit = float(stats.norm.ppf(0.5 + confidence / 2.0))
    if var > 0 and math.isfinite(var):
        se = math.sqrt(var)
        z = diff / se
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    else:
        se = 0.0
        same = math.isclose(diff, 0.0, abs_tol=1e-12)
        z = 0.0 if same else math.copysign(math.inf, diff)
        p_value = 1.0 if same else 0.0

    idx = bootstrap_indices(labels, n_resamples, seed, stratified=True)
    boot_diff = np.empty(idx.shape[0])
    for rows in _row_chunks(idx.shape[0], idx.shape[1]):
        lab = labels[idx[rows]]
        boot_diff[rows] = _batch_auc(lab, pa[idx[rows]]) - _batch_auc(lab, pb[idx[rows]])
    ci_low, ci_high = _percentile_interval(boot_diff, confidence)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": p_value,
        "z": z,
        "se": se,
        "delong_ci_low": diff - z_crit * se,
        "delong_ci_high": diff + z_crit * se,
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "method": (
            "p-value: DeLong's test for two correlated ROC AUCs (Sun & Xu 2014 fast midrank "
            f"algorithm); CI: paired stratified percentile bootstrap of the AUC difference "
            f"({int(n_resamples)} resamples, seed {seed})"
        ),
    }


def mean_ci(values: Sequence[float] | np.ndarray, *, n_resamples: int = N_BOOTSTRAP, seed: int = 0,
            confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean", "low", "high", "n"}``: the mean of the finite values with a percentile bootstrap CI."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if v.size == 1 or np.ptp(v) == 0.0:
        return {"mean": float(v.mean()), "low": float(v.mean()), "high": float(v.mean()), "n": int(v.size)}
    res = stats.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                          rng=np.random.default_rng(seed))
    return {"mean": float(v.mean()), "low": float(res.confidence_interval.low),
            "high": float(res.confidence_interval.high), "n": int(v.size)}


def holm_adjust(p_values: ArrayLike) -> FloatArray:
    """Holm's (1979) step-down adjusted p-values, in the order given.

    Controls the family-wise error rate over all the tests passed, under any dependence between
    them (the pairwise AUC tests of several models on the same images are correlated). The
    p-value ranked k-th smallest of m becomes ``max_{j <= k} min(1, (m - j + 1) p_(j))``. NaN
    entries (a test that could not be run) stay NaN and do not count in m.

    Written out because it is four lines of arithmetic and the project does not otherwise need
    statsmodels (``multipletests(p, method="holm")`` gives the same numbers).
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    ok = np.flatnonzero(np.isfinite(p))
    if np.any((p[ok] < 0.0) | (p[ok] > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1]; got {p[ok][(p[ok] < 0.0) | (p[ok] > 1.0)].tolist()}")
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(stepped, 1.0)
    return out


# --------------------------------------------------------------------------------------------
# ROC curve with a bootstrap band
# --------------------------------------------------------------------------------------------
def roc_curve_with_band(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    n_grid: int = 101,
    stratified: bool = True,
) -> dict[str, Any]:
    """ROC curve on a fixed FPR grid with a vertical-averaging bootstrap band (for plotting).

    Returns fpr_grid, tpr (the full-data curve, linearly interpolated between ROC vertices),
    tpr_low/tpr_high (pointwise percentile band of the resampled curves' TPR at each grid FPR),
    auc, auc_low, auc_high. Needs both classes.
    """
    labels, probs = validate_binary_inputs(y_true, y_prob)
    if not _has_both_classes(labels):
        raise ValueError(
            "roc_curve_with_band needs both benign and malignant cases; only one class present "
            "(the ROC curve is undefined)."
        )
    confidence = _check_confidence(confidence)
    if int(n_grid) < 2:
        raise ValueError(f"n_grid must be >= 2; got {n_grid!r}.")
    grid = np.linspace(0.0, 1.0, int(n_grid))
    tpr = _batch_tpr_at_fpr(_batch_roc_steps(labels[None, :], probs[None, :]), grid)[0]
    idx = bootstrap_indices(labels, n_resamples, seed, stratified)
    curves = np.empty((idx.shape[0], grid.size))
    aucs = np.empty(idx.shape[0])
    for rows in _row_chunks(idx.shape[0], idx.shape[1]):
        lab, pro = labels[idx[rows]], probs[idx[rows]]
        curves[rows] = _batch_tpr_at_fpr(_batch_roc_steps(lab, pro), grid)
        aucs[rows] = _batch_auc(lab, pro)
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (non-stratified only)
        low, high = np.nanpercentile(curves, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)
    auc_low, auc_high = _percentile_interval(aucs, confidence)
    return {
        "fpr_grid": grid,
        "tpr": tpr,
        "tpr_low": low,
        "tpr_high": high,
        "auc": roc_auc(labels, probs),
        "auc_low": auc_low,
        "auc_high": auc_high,
        "confidence": confidence,
    }

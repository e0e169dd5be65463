"""Tests for skinlesion.metrics.classification: hand-computed cases, agreement with scikit-learn, single-class
behaviour, the vectorised bootstrap, DeLong's test and the ROC band."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics as skm

from skinlesion.io import clean_json
from skinlesion.metrics import classification as M
from skinlesion.metrics import stats as S

# Hand-worked example (threshold 0.5): predictions [0,0,1,1,1,1,0] -> tn=2, fp=2, fn=1, tp=2.
Y_HAND = np.array([0, 0, 0, 0, 1, 1, 1])
P_HAND = np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.55, 0.3])


def _simulate(n: int, rng: np.random.Generator, prevalence: float = 0.3, shift: float = 1.0,
              decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Binormal scores (benign N(0,1), malignant N(shift,1)) mapped to probabilities."""
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]  # both classes always present
    p = special.expit(rng.normal(size=n) + shift * y)
    if decimals is not None:
        p = np.round(p, decimals)  # creates ties
    return y, p


# --------------------------------------------------------------------------------------------
# Hand-computed values
# --------------------------------------------------------------------------------------------
def test_confusion_matrix_by_hand() -> None:
    assert M.confusion_matrix(Y_HAND, P_HAND) == {"tn": 2, "fp": 2, "fn": 1, "tp": 2}


def test_threshold_metrics_by_hand() -> None:
    assert M.accuracy(Y_HAND, P_HAND) == pytest.approx(4 / 7)
    assert M.sensitivity(Y_HAND, P_HAND) == pytest.approx(2 / 3)
    assert M.recall(Y_HAND, P_HAND) == pytest.approx(2 / 3)
    assert M.specificity(Y_HAND, P_HAND) == pytest.approx(0.5)
    assert M.precision(Y_HAND, P_HAND) == pytest.approx(0.5)
    assert M.ppv(Y_HAND, P_HAND) == pytest.approx(0.5)
    assert M.npv(Y_HAND, P_HAND) == pytest.approx(2 / 3)
    assert M.f1(Y_HAND, P_HAND) == pytest.approx(4 / 7)
    assert M.balanced_accuracy(Y_HAND, P_HAND) == pytest.approx(7 / 12)


def test_ranking_metrics_by_hand() -> None:
    # Malignant 0.8 beats 4 benign, 0.55 beats 2, 0.3 beats 2: 8 of 12 pairs.
    assert M.roc_auc(Y_HAND, P_HAND) == pytest.approx(8 / 12)
    # Ranked: 0.8 M, 0.7 B, 0.6 B, 0.55 M, 0.3 M -> precisions 1, 2/4, 3/5 at the malignant ones.
    assert M.pr_auc(Y_HAND, P_HAND) == pytest.approx((1 + 0.5 + 0.6) / 3)
    # Specificity >= 0.75 allows one false positive: best is 1 of 3 malignant caught.
    assert M.sensitivity_at_specificity(Y_HAND, P_HAND, 0.75) == pytest.approx(1 / 3)
    # Sensitivity >= 0.6 needs 2 malignant caught: first reached at 0.55 with 2 false positives.
    assert M.specificity_at_sensitivity(Y_HAND, P_HAND, 0.6) == pytest.approx(0.5)


def test_threshold_is_inclusive() -> None:
    assert M.confusion_matrix([1, 0], [0.5, 0.49], threshold=0.5) == {"tn": 1, "fp": 0, "fn": 0, "tp": 1}


# --------------------------------------------------------------------------------------------
# Agreement with scikit-learn
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_threshold_metrics_match_sklearn(threshold: float) -> None:
    y, p = _simulate(300, np.random.default_rng(1), decimals=2)
    pred = (p >= threshold).astype(int)
    assert M.accuracy(y, p, threshold) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.balanced_accuracy(y, p, threshold) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert M.precision(y, p, threshold) == pytest.approx(skm.precision_score(y, pred))
    assert M.sensitivity(y, p, threshold) == pytest.approx(skm.recall_score(y, pred))
    assert M.specificity(y, p, threshold) == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert M.npv(y, p, threshold) == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert M.f1(y, p, threshold) == pytest.approx(skm.f1_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert M.confusion_matrix(y, p, threshold) == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def test_ranking_metrics_match_sklearn() -> None:
    y, p = _simulate(400, np.random.default_rng(2), decimals=2)
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert M.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p))


def test_sens_at_spec_matches_brute_force() -> None:
    y, p = _simulate(200, np.random.default_rng(3), decimals=2)
    thresholds = np.append(np.unique(p), np.inf)
    sens = np.array([M.sensitivity(y, p, t) if np.isfinite(t) else 0.0 for t in thresholds])
    spec = np.array([M.specificity(y, p, t) if np.isfinite(t) else 1.0 for t in thresholds])
    for target in (0.5, 0.8, 0.9, 0.95):
        assert M.sensitivity_at_specificity(y, p, target) == pytest.approx(sens[spec >= target].max())
        assert M.specificity_at_sensitivity(y, p, target) == pytest.approx(spec[sens >= target].max())


def test_summarize_keys_and_values() -> None:
    y, p = _simulate(200, np.random.default_rng(4))
    s = M.summarize(y, p, 0.4)
    assert s["n"] == 200 and s["n_pos"] + s["n_neg"] == 200 and s["n_pos"] == int(y.sum())
    assert s["threshold"] == 0.4
    for name in M.METRIC_NAMES:
        assert math.isfinite(s[name]), name
    assert s["sensitivity"] == M.sensitivity(y, p, 0.4)
    assert s["roc_auc"] == M.roc_auc(y, p)
    assert s["notes"] == []
    json.dumps(clean_json(s), allow_nan=False)


# --------------------------------------------------------------------------------------------
# Single class and invalid input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_and_notes(label: int) -> None:
    y = np.full(6, label)
    p = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
    for fn in (M.roc_auc, M.pr_auc, M.sensitivity_at_specificity, M.specificity_at_sensitivity):
        assert math.isnan(fn(y, p))
    s = M.summarize(y, p)
    assert s["accuracy"] == pytest.approx(0.5)  # threshold metrics are still reported
    assert math.isnan(s["roc_auc"]) and math.isnan(s["balanced_accuracy"])
    assert math.isnan(s["sensitivity"] if label == 0 else s["specificity"])
    assert any("only one class present" in n and "ROC AUC" in n for n in s["notes"])
    cis = S.summarize_with_ci(y, p, n_resamples=50)
    assert math.isnan(cis["roc_auc"]["value"]) and math.isnan(cis["roc_auc"]["low"])
    assert cis["accuracy"]["low"] <= cis["accuracy"]["value"] <= cis["accuracy"]["high"]
    json.dumps(clean_json(s), allow_nan=False)


def test_undefined_ppv_is_explained() -> None:
    s = M.summarize([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)
    assert math.isnan(s["ppv"])
    assert any("PPV" in n for n in s["notes"])


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 1], [0.5], "differ in length"),
        ([], [], "empty"),
        ([0, 2], [0.1, 0.2], "only 0"),
        (["benign", "malignant"], [0.1, 0.2], "numbers"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([0, 1], [[0.1, 0.2], [0.3, 0.4]], "1-D"),
    ],
)
def test_invalid_inputs_raise(y: list, p: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.summarize(y, p)


def test_keras_column_output_is_accepted() -> None:
    assert M.roc_auc(Y_HAND, P_HAND[:, None]) == M.roc_auc(Y_HAND, P_HAND)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="Unknown metric"):
        S.bootstrap_ci(Y_HAND, P_HAND, "auroc")
    with pytest.raises(ValueError, match="confidence"):
        S.bootstrap_ci(Y_HAND, P_HAND, "roc_auc", confidence=95)
    with pytest.raises(ValueError, match="target_spec"):
        M.sensitivity_at_specificity(Y_HAND, P_HAND, 80)


# --------------------------------------------------------------------------------------------
# Vectorised bootstrap
# --------------------------------------------------------------------------------------------
def test_vectorised_metrics_match_scalar_row_by_row() -> None:
    rng = np.random.default_rng(5)
    y, p = _simulate(120, rng, decimals=1)  # heavy ties
    for stratified in (True, False):
        idx = S.bootstrap_indices(y, 15, seed=1, stratified=stratified)
        batch = S._Batch(y[idx], p[idx])
        for name in M.METRIC_NAMES:
            got = batch.metric(name, 0.5, 0.8, 0.9)
            want = [M._scalar_metric(name, y[r], p[r], 0.5, 0.8, 0.9) for r in idx]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_stratified_indices_keep_class_counts() -> None:
    y, _ = _simulate(100, np.random.default_rng(6))
    idx = S.bootstrap_indices(y, 300, seed=0, stratified=True)
    assert idx.shape == (300, 100)
    assert np.all(y[idx].sum(axis=1) == y.sum())


def test_bootstrap_is_seeded() -> None:
    y, p = _simulate(150, np.random.default_rng(7))
    a = S.bootstrap_ci(y, p, ["roc_auc", "f1"], n_resamples=200, seed=3)
    b = S.bootstrap_ci(y, p, ["roc_auc", "f1"], n_resamples=200, seed=3)
    c = S.bootstrap_ci(y, p, ["roc_auc", "f1"], n_resamples=200, seed=4)
    assert a == b and a != c
    point, low, high = a["roc_auc"]
    assert point == M.roc_auc(y, p) and low < point < high


def test_callable_metric_matches_named_metric() -> None:
    y, p = _simulate(150, np.random.default_rng(8))

    def sk_auc(yy: np.ndarray, pp: np.ndarray) -> float:
        return float(skm.roc_auc_score(yy, pp))

    res = S.bootstrap_ci(y, p, ["roc_auc", sk_auc, "recall"], n_resamples=100, seed=0)
    assert set(res) == {"roc_auc", "sk_auc", "recall"}
    assert res["sk_auc"] == pytest.approx(res["roc_auc"], rel=1e-12)
    assert res["recall"][0] == M.sensitivity(y, p)


def test_non_stratified_small_sample_drops_undefined_resamples() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    p = np.linspace(0.1, 0.9, 8)
    point, low, high = S.bootstrap_ci(y, p, "roc_auc", 300, stratified=False)["roc_auc"]
    assert point == 1.0 and low == high == 1.0


def test_bootstrap_ci_coverage_binormal() -> None:
    # True AUC of the binormal model with unit variances and shift d is Phi(d / sqrt(2)).
    shift = 1.0
    true_auc = stats.norm.cdf(shift / math.sqrt(2))
    rng = np.random.default_rng(123)
    covered = 0
    for i in range(50):
        y, p = _simulate(200, rng, shift=shift)
        _, low, high = S.bootstrap_ci(y, p, "roc_auc", n_resamples=400, seed=i)["roc_auc"]
        covered += low <= true_auc <= high
    assert covered >= 43, f"95% CI covered the true AUC in only {covered}/50 datasets"


def test_bootstrap_is_fast() -> None:
    y, p = _simulate(1000, np.random.default_rng(9), decimals=3)
    start = time.perf_counter()
    res = S.bootstrap_ci(y, p, ["roc_auc", "accuracy", "sensitivity", "specificity", "ppv", "f1"], 2000)
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0, f"2000 resamples of n=1000 took {elapsed:.2f} s; the bootstrap is not vectorised"
    assert all(lo <= v <= hi for v, lo, hi in res.values())


def test_summarize_with_ci_structure() -> None:
    y, p = _simulate(150, np.random.default_rng(10))
    res = S.summarize_with_ci(y, p, threshold=0.5, n_resamples=200, seed=0)
    assert set(res) == set(M.METRIC_NAMES)
    for name, d in res.items():
        assert set(d) == {"value", "low", "high"}
        assert d["low"] <= d["high"], name
    assert res["accuracy"]["value"] == M.accuracy(y, p)


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------
def _slow_delong_cov(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """DeLong et al. (1988) by explicit pairwise comparisons, O(n_pos * n_neg)."""
    pos, neg = probs[:, y == 1], probs[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10 = psi.mean(axis=2)
    v01 = psi.mean(axis=1)
    return np.atleast_2d(np.cov(v10)) / pos.shape[1] + np.atleast_2d(np.cov(v01)) / neg.shape[1]


def test_fast_delong_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(11)
    y, p = _simulate(150, rng, decimals=2)
    q = np.clip(p + rng.normal(0, 0.1, size=p.size), 0, 1).round(2)
    aucs, cov = S._delong_covariance(y, np.vstack([p, q]))
    np.testing.assert_allclose(cov, _slow_delong_cov(y, np.vstack([p, q])), rtol=1e-10)
    np.testing.assert_allclose(aucs, [skm.roc_auc_score(y, p), skm.roc_auc_score(y, q)])


def test_delong_identical_predictions() -> None:
    y, p = _simulate(200, np.random.default_rng(12))
    res = S.paired_auc_test(y, p, p, n_resamples=200)
    assert res["p_value"] == 1.0 and res["diff"] == 0.0
    assert res["ci_low"] == res["ci_high"] == 0.0
    assert res["auc_a"] == res["auc_b"] == pytest.approx(M.roc_auc(y, p))
    assert "DeLong" in res["method"] and "bootstrap" in res["method"]


def test_delong_variance_agrees_with_bootstrap() -> None:
    y, p = _simulate(500, np.random.default_rng(13), shift=1.2)
    auc, var = S.delong_roc_variance(y, p)
    idx = S.bootstrap_indices(y, 2000, seed=0)
    boot = S._batch_auc(y[idx], p[idx])
    assert auc == pytest.approx(M.roc_auc(y, p))
    assert var == pytest.approx(boot.var(ddof=1), rel=0.2)


def test_paired_test_detects_a_better_model() -> None:
    rng = np.random.default_rng(14)
    y = (rng.random(400) < 0.4).astype(int)
    latent = rng.normal(size=400) + 1.5 * y
    good = special.expit(latent)
    bad = special.expit(latent + rng.normal(0, 1.5, size=400))
    res = S.paired_auc_test(y, good, bad, n_resamples=500, seed=1)
    assert res["diff"] == pytest.approx(res["auc_a"] - res["auc_b"])
    assert res["diff"] > 0 and res["p_value"] < 0.01
    assert 0 < res["ci_low"] < res["diff"] < res["ci_high"]
    assert res["delong_ci_low"] < res["diff"] < res["delong_ci_high"]


def test_paired_test_needs_two_per_class() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        S.paired_auc_test([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


# --------------------------------------------------------------------------------------------
# ROC band
# --------------------------------------------------------------------------------------------
def test_roc_curve_with_band() -> None:
    y, p = _simulate(300, np.random.default_rng(15))
    res = S.roc_curve_with_band(y, p, n_resamples=300, seed=0, n_grid=51)
    grid = res["fpr_grid"]
    assert grid.shape == res["tpr"].shape == res["tpr_low"].shape == res["tpr_high"].shape == (51,)
    fpr, tpr, _ = skm.roc_curve(y, p)
    np.testing.assert_allclose(res["tpr"], np.interp(grid, fpr, tpr), atol=1e-12)
    assert np.all(np.diff(res["tpr"]) >= 0) and res["tpr"][-1] == 1.0
    assert np.all(res["tpr_low"] <= res["tpr_high"])
    inside = (res["tpr_low"] - 1e-12 <= res["tpr"]) & (res["tpr"] <= res["tpr_high"] + 1e-12)
    assert inside.mean() > 0.9
    assert res["auc_low"] < res["auc"] < res["auc_high"]


def test_roc_band_with_ties_matches_roc_curve_vertices() -> None:
    y, p = _simulate(200, np.random.default_rng(16), decimals=1)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    grid = np.linspace(0, 1, 201)
    got = S._batch_tpr_at_fpr(S._batch_roc_steps(y[None, :], p[None, :]), grid)[0]
    np.testing.assert_allclose(got, np.interp(grid, fpr, tpr), atol=1e-12)


def test_roc_band_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        S.roc_curve_with_band([1, 1, 1], [0.2, 0.5, 0.9], n_resamples=10)


def test_mean_ci_brackets_the_mean_and_skips_nan():
    r = S.mean_ci([0.0, 1.0, 1.0, 1.0, float("nan")], n_resamples=200)
    assert r["n"] == 4 and r["mean"] == 0.75 and r["low"] <= 0.75 <= r["high"]
    assert S.mean_ci([])["mean"] is None
    assert S.mean_ci([0.0, 0.0, 0.0]) == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 3}

"""Tests for skinlesion.metrics.calibration: ECE/Brier/reliability, temperature scaling,
threshold selection, the refer band and DecisionPolicy."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from skinlesion.metrics import calibration as C
from skinlesion.metrics import classification as M


def _calibrated_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from their own probabilities: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=n)
    y = (rng.random(n) < special.expit(logits)).astype(int)
    return y, logits


def _scored_data(n: int, seed: int, prevalence: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    return y, special.expit(rng.normal(size=n) + 1.3 * y)


# --------------------------------------------------------------------------------------------
# Calibration measures
# --------------------------------------------------------------------------------------------
def test_ece_by_hand() -> None:
    # Bin [0, 0.5]: mean prob 0.2, observed 0; bin (0.5, 1]: mean 0.85, observed 1.
    y = [0, 1, 1, 0]
    p = [0.1, 0.9, 0.8, 0.3]
    assert C.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.15)


def test_ece_small_for_calibrated_large_for_overconfident() -> None:
    y, logits = _calibrated_data(5000, seed=0)
    assert C.expected_calibration_error(y, special.expit(logits)) < 0.03
    assert C.expected_calibration_error(y, special.expit(logits / 0.3)) > 0.08
    assert C.expected_calibration_error(y, special.expit(logits), strategy="quantile") < 0.03


def test_reliability_curve_matches_sklearn_and_counts() -> None:
    y, logits = _calibrated_data(800, seed=1)
    p = np.round(special.expit(logits), 2)
    for strategy in ("uniform", "quantile"):
        curve = C.reliability_curve(y, p, n_bins=10, strategy=strategy)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
        np.testing.assert_allclose(curve["prob_true"], prob_true)
        np.testing.assert_allclose(curve["prob_pred"], prob_pred)
        assert curve["counts"].sum() == len(y) and np.all(curve["counts"] > 0)
    with pytest.raises(ValueError, match="strategy"):
        C.reliability_curve(y, p, strategy="equal")


def test_brier_score() -> None:
    assert C.brier_score([0, 1, 1], [0.2, 0.6, 1.0]) == pytest.approx((0.04 + 0.16 + 0.0) / 3)
    y, logits = _calibrated_data(300, seed=2)
    p = special.expit(logits)
    assert C.brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    assert C.brier_score([0, 0], [0.1, 0.3]) == pytest.approx(0.05)  # single class is fine


# --------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------
def test_temperature_scaling_fixes_overconfidence() -> None:
    y, logits = _calibrated_data(5000, seed=3)
    sharpened = special.expit(logits / 0.3)  # deliberately over-confident
    temperature = C.fit_temperature(y, sharpened)
    assert temperature == pytest.approx(1 / 0.3, rel=0.15)
    fixed = C.apply_temperature(sharpened, temperature)
    assert C.expected_calibration_error(y, fixed) < 0.5 * C.expected_calibration_error(y, sharpened)
    assert C.negative_log_likelihood(y, fixed) < C.negative_log_likelihood(y, sharpened)
    assert M.roc_auc(y, fixed) == pytest.approx(M.roc_auc(y, sharpened))  # ranking unchanged


def test_temperature_near_one_for_calibrated_data() -> None:
    y, logits = _calibrated_data(5000, seed=4)
    assert C.fit_temperature(y, special.expit(logits)) == pytest.approx(1.0, abs=0.1)


def test_apply_temperature_basics() -> None:
    p = np.array([0.05, 0.3, 0.5, 0.9])
    np.testing.assert_allclose(C.apply_temperature(p, 1.0), p)
    softened = C.apply_temperature(p, 2.0)
    assert np.all(np.abs(softened - 0.5) <= np.abs(p - 0.5))
    assert np.all(np.isfinite(C.apply_temperature([0.0, 1.0], 0.5)))  # clipped, no inf/NaN
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            C.apply_temperature(p, bad)


def test_fit_temperature_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both benign and malignant"):
        C.fit_temperature([1, 1, 1], [0.2, 0.6, 0.9])


# --------------------------------------------------------------------------------------------
# Thresholds and band
# --------------------------------------------------------------------------------------------
def test_threshold_for_sensitivity_by_hand() -> None:
    y = [1, 1, 1, 1, 1, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.2, 0.65, 0.1]
    assert C.choose_threshold_for_sensitivity(y, p, 0.8) == 0.6  # 4 of 5 malignant needed
    assert C.choose_threshold_for_sensitivity(y, p, 1.0) == 0.2
    assert C.choose_threshold_for_sensitivity([1, 1, 1, 1, 0], [0.5, 0.5, 0.5, 0.1, 0.4], 0.5) == 0.5


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0])
def test_threshold_hits_target_sensitivity_and_is_highest(target: float) -> None:
    for seed in range(5):
        y, p = _scored_data(200 + 37 * seed, seed)
        p = np.round(p, 2) if seed % 2 else p  # with and without ties
        t = C.choose_threshold_for_sensitivity(y, p, target)
        assert M.sensitivity(y, p, t) >= target
        assert M.sensitivity(y, p, np.nextafter(t, 2.0)) < target


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_threshold_for_specificity_is_lowest(target: float) -> None:
    for seed in range(5):
        y, p = _scored_data(150 + 41 * seed, seed + 10)
        p = np.round(p, 2) if seed % 2 else p
        t = C.choose_threshold_for_specificity(y, p, target)
        assert M.specificity(y, p, t) >= target
        assert M.specificity(y, p, np.nextafter(t, -1.0)) < target


def test_threshold_targets_validated() -> None:
    with pytest.raises(ValueError, match="target_sensitivity"):
        C.choose_threshold_for_sensitivity([0, 1], [0.1, 0.9], 95)
    with pytest.raises(ValueError, match="malignant"):
        C.choose_threshold_for_sensitivity([0, 0], [0.1, 0.9], 0.9)


def test_band_always_contains_threshold() -> None:
    for seed in range(8):
        y, p = _scored_data(120, seed + 20)
        for threshold in (0.0, 0.01, C.choose_threshold_for_sensitivity(y, p, 0.95), 0.5, 0.99, 1.0):
            low, high = C.uncertainty_band(y, p, threshold)
            assert low <= threshold <= high


def test_band_rule_on_validation_data() -> None:
    y, p = _scored_data(1000, 30)
    t = C.choose_threshold_for_sensitivity(y, p, 0.95)
    low, high = C.uncertainty_band(y, p, t, band_sensitivity=0.99, band_specificity=0.95)
    assert np.mean(p[y == 1] < low) <= 0.01  # few malignant called benign-appearing
    assert np.mean(p[y == 0] >= high) <= 0.05  # few benign called suspicious


# --------------------------------------------------------------------------------------------
# DecisionPolicy
# --------------------------------------------------------------------------------------------
def test_decide_gives_the_three_strings() -> None:
    policy = C.DecisionPolicy(threshold=0.3, band_low=0.2, band_high=0.6, target_sensitivity=0.95)
    assert policy.decide(0.9) == "suspicious"
    assert policy.decide(0.6) == "suspicious"
    assert policy.decide(0.59) == "uncertain — refer"
    assert policy.decide(0.2) == "uncertain — refer"
    assert policy.decide(0.19) == "benign-appearing"
    assert policy.decide(0.0) == "benign-appearing"
    assert set(C.DECISIONS) == {"suspicious", "uncertain — refer", "benign-appearing"}
    with pytest.raises(ValueError, match="probability"):
        policy.decide(1.5)


def test_policy_round_trips_through_json() -> None:
    policy = C.DecisionPolicy(
        threshold=0.3, band_low=0.2, band_high=0.6, target_sensitivity=0.95, temperature=1.7,
        validation_metrics={"sensitivity": 0.96, "ppv": math.nan},
    )
    data = json.loads(json.dumps(policy.to_dict(), allow_nan=False))
    restored = C.DecisionPolicy.from_dict(data)
    assert restored.threshold == policy.threshold and restored.temperature == policy.temperature
    assert restored.validation_metrics["sensitivity"] == 0.96
    assert math.isnan(restored.validation_metrics["ppv"])
    plain = C.DecisionPolicy(0.5, 0.5, 0.5, 0.9)
    assert C.DecisionPolicy.from_dict(plain.to_dict()) == plain


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="band_low <= threshold <= band_high"):
        C.DecisionPolicy(threshold=0.7, band_low=0.2, band_high=0.6, target_sensitivity=0.95)
    with pytest.raises(ValueError, match="temperature"):
        C.DecisionPolicy(threshold=0.3, band_low=0.2, band_high=0.6, target_sensitivity=0.95, temperature=0)
    with pytest.raises(ValueError, match="missing keys"):
        C.DecisionPolicy.from_dict({"threshold": 0.5})
    with pytest.raises(ValueError, match="unknown keys"):
        C.DecisionPolicy.from_dict({**C.DecisionPolicy(0.5, 0.5, 0.5, 0.9).to_dict(), "thresh": 1})


def test_build_decision_policy() -> None:
    y, logits = _calibrated_data(3000, seed=40)
    raw = special.expit(logits / 0.4)  # over-confident model
    policy = C.build_decision_policy(y, raw, target_sensitivity=0.95)
    assert policy.temperature == pytest.approx(2.5, rel=0.2)
    calibrated = policy.calibrate(raw)
    assert M.sensitivity(y, calibrated, policy.threshold) >= 0.95
    assert policy.band_low <= policy.threshold <= policy.band_high
    vm = policy.validation_metrics
    assert vm["sensitivity"] >= 0.95 and vm["ece"] < vm["ece_raw"]
    fractions = ("fraction_suspicious", "fraction_uncertain", "fraction_benign_appearing")
    assert sum(vm[k] for k in fractions) == pytest.approx(1.0)
    decisions = [policy.decide(float(p)) for p in calibrated]
    assert np.mean([d == "suspicious" for d in decisions]) == pytest.approx(vm["fraction_suspicious"])
    assert policy.decide(float(policy.calibrate(float(raw[0])))) == decisions[0]
    assert isinstance(policy.calibrate(0.5), float)
    json.dumps(policy.to_dict(), allow_nan=False)


def test_fit_decision_policy_on_calibrated_probabilities() -> None:
    # The call pattern train.py uses: calibrate first, then fit the policy with that temperature.
    y, logits = _calibrated_data(2000, seed=41)
    raw = special.expit(logits / 0.5)
    temperature = C.fit_temperature(y, raw)
    calibrated = C.apply_temperature(raw, temperature)
    policy = C.fit_decision_policy(y, calibrated, target_sensitivity=0.9, temperature=temperature)
    assert policy.temperature == temperature and policy.target_sensitivity == 0.9
    assert policy.threshold == C.choose_threshold_for_sensitivity(y, calibrated, 0.9)
    assert policy.validation_metrics["sensitivity"] >= 0.9
    assert C.DecisionPolicy.from_dict(policy.to_dict()).threshold == policy.threshold

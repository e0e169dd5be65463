"""The helpers notebooks 01–03 draw their conclusions from (``skinlesion.notebooks``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion import notebooks as nb

ROOT = Path(__file__).resolve().parents[1]


def test_mistakes_are_ranked_by_the_probability_given_to_the_wrong_class() -> None:
    # Threshold 0.2: a melanoma at 0.01 is 0.19 from it, a benign lesion at 0.5 is 0.3 from it;
    # the melanoma is the worse (more confident) mistake and must not be ranked below.
    preds = pd.DataFrame({"path": list("abcdef"), "y_true": [1, 1, 0, 0, 1, 0],
                          "probability": [0.01, 0.15, 0.5, 0.99, 0.9, 0.1], "error": ""})
    m = nb.most_confident_mistakes(preds, threshold=0.2, k=5)
    assert list(m["path"]) == ["a", "b", "d", "c"]
    assert list(m["mistake"]) == ["missed malignant"] * 2 + ["false alarm"] * 2
    np.testing.assert_allclose(m["wrong_class_probability"], [0.99, 0.85, 0.99, 0.5])
    assert list(nb.most_confident_mistakes(preds, threshold=0.2, k=1)["path"]) == ["a", "d"]


def test_sensitivity_against_target_says_whether_the_ci_excludes_it() -> None:
    def res(low: float, high: float) -> dict:
        return {"sets": {"test": {"at_threshold": {"sensitivity": {"value": (low + high) / 2, "low": low, "high": high}}}}}

    t = nb.sensitivity_against_target({"below": res(0.89, 0.94), "around": res(0.93, 0.97), "above": res(0.96, 0.99)})
    assert dict(t["verdict"]) == {"below": "CI below the target", "around": "CI includes the target",
                                  "above": "CI above the target"}
    assert set(t["target"]) == {0.95}


def test_calibration_effect_compares_raw_and_scaled_ece() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.7 + 0.15 + rng.normal(0, 0.05, 400), 0.01, 0.99)
    preds = pd.DataFrame({"y_true": y, "raw_probability": np.clip(good ** 3, 0.001, 0.999), "probability": good, "error": ""})
    t = nb.calibration_effect({"m": ({}, {"test": preds})}, "test")
    assert t.loc["m", "ECE scaled"] < t.loc["m", "ECE raw"] and bool(t.loc["m", "scaling lowered ECE"])
    assert nb.calibration_effect({"m": ({}, {"test": preds.drop(columns="raw_probability")})}).empty


def test_validation_table_lists_skipped_backbones_and_recorded_references() -> None:
    recorded = nb.recorded_validation(["ens-ft", "lite0-ft60"])
    assert list(recorded.index) == ["ens-ft", "lite0-ft60"] and recorded.loc["ens-ft", "input"] == "224/260"
    t = nb.validation_table({}, skipped={"resnet50": "ImageNet weights for resnet50 could not be downloaded (...)"},
                            recorded=recorded)
    assert list(t.index) == ["ens-ft", "lite0-ft60", "nb-resnet50"]
    assert t.loc["nb-resnet50", "stage"] == "skipped: ImageNet weights unavailable offline"
    assert pd.isna(t.loc["nb-resnet50", "val AUC"]) and t.loc["nb-resnet50", "input"] == "224"
    assert t.loc["ens-ft", "from"].startswith("recorded (reports/kaggle-only/validation.csv")


def test_copies_by_diagnosis_counts_images_with_a_copy_and_their_label_there() -> None:
    records = pd.DataFrame({"source": ["kaggle"] * 3 + ["ham10000"] * 3,
                            "image_id": ["k1", "k2", "k3", "h1", "h2", "h3"],
                            "diagnosis": ["malignant", "benign", "malignant", "mel", "mel", "nv"]})
    pairs = pd.DataFrame({"source_a": ["kaggle", "ham10000", "kaggle"], "image_a": ["k1", "h2", "k2"],
                          "label_a": [1, 1, 0], "source_b": ["ham10000", "kaggle", "ham10000"],
                          "image_b": ["h1", "k3", "h3"], "label_b": [1, 1, 0], "kind": ["near", "exact", "similar"]})
    t = nb.copies_by_diagnosis(pairs, records)
    assert t.loc[("ham10000", "mel")].to_dict() == {"in source": 2, "with a copy": 2, "copies labelled malignant there": 2}
    assert ("ham10000", "nv") not in t.index  # a look-alike ("similar") is not a copy


def test_loso_recipes_match_the_published_summary() -> None:
    t = nb.loso_recipes()
    published = json.loads((ROOT / "reports" / "generalisation" / "summary.json").read_text())
    row = t.loc[published["recipe"]]
    aucs = {s: v["roc_auc"] for s, v in published["held_out"].items()}
    assert row["mean"] == pytest.approx(np.mean(list(aucs.values())))
    assert row["worst"] == pytest.approx(min(aucs.values())) and row["worst source"] == min(aucs, key=aucs.get)
    assert t["mean"].is_monotonic_decreasing
    # Each recipe in words: an ensemble by its members, a fine-tuned one by its depth.
    for recipe, words in t["recipe"].dropna().items():
        assert "None" not in words and "views ," not in words, (recipe, words)
    if "ens-lite0-s1-ft60-idfhzio-linear-tta" in t.index:
        assert t.loc["ens-lite0-s1-ft60-idfhzio-linear-tta", "recipe"] == (
            "the ensemble of `lite0-s1-idfhzio-linear-tta` and `lite0-ft60-idfhzio-linear-tta`")
        assert "top 60 layers fine-tuned" in t.loc["lite0-ft60-idfhzio-linear-tta", "recipe"]
    if "lite0-s1-idfhzio-linear-tta-seed7" in t.index:  # a training-noise row names its seed
        assert t.loc["lite0-s1-idfhzio-linear-tta-seed7", "recipe"].endswith(", seed 7")

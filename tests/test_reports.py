"""Evaluation reports, comparisons and model cards, on hand-made predictions (no TensorFlow)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.evaluation import common, compare, figures, model_card, report, skintone
from skinlesion.evaluation.evaluate import save_results, score_predictions
from skinlesion.io import sha256_file

THRESHOLD = 0.4
BAND = (0.2, 0.6)


def _lesion_image(rng: np.random.Generator, tone: float) -> Image.Image:
    """A 64 px skin-coloured square with a dark central blob; ``tone`` 1 = very light, 0 = dark."""
    light = np.array([235, 200, 180]) * tone + np.array([95, 60, 40]) * (1 - tone)
    img = np.tile(light, (64, 64, 1)) + rng.normal(0, 3, (64, 64, 3))
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 12 ** 2] *= 0.4
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 test images (half light, half dark skin) under test/<class>/."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(40):
        label = i % 2
        rel = f"test/{'malignant' if label else 'benign'}/img_{i:02d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _lesion_image(rng, 1.0 if i < 30 else 0.0).save(root / rel, quality=90)
        paths.append(rel)
        labels.append(label)
    return root, paths, np.array(labels)


def _bundle(folder, run_id, data_dir, *, calibrated=True, history=True, synthetic=False):
    """A bundle folder that read_meta accepts, written by hand so no Keras is needed."""
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"not a real model; only checksummed")
    files = ["model.keras"]
    if history:
        pd.DataFrame({
            "stage": ["head"] * 3 + ["fine_tune"] * 2, "epoch": [1, 2, 3, 1, 2],
            "loss": [0.6, 0.5, 0.45, 0.4, 0.38], "auc": [0.7, 0.8, 0.85, 0.88, 0.9],
            "val_loss": [0.62, 0.55, 0.5, 0.48, 0.47], "val_auc": [0.68, 0.78, 0.82, 0.84, 0.85],
        }).to_csv(folder / "history.csv", index=False)
        files.append("history.csv")
    meta = {
        "schema_version": 1, "kind": "single", "run_id": run_id, "created": "2026-01-01T00:00:00+00:00",
        "class_names": ["benign", "malignant"], "positive_class": "malignant",
        "versions": {"python": "3.11", "skinlesion": "0.1.0"},
        "backbone": "efficientnet_lite0", "weights": "imagenet-test", "input_size": 96, "stage": "head",
        "synthetic": synthetic,
        "decision": {"threshold": THRESHOLD, "band_low": BAND[0], "band_high": BAND[1], "target_sensitivity": 0.95,
                     "temperature": 1.3, "band_sensitivity": 0.99, "band_specificity": 0.95,
                     "validation_metrics": {"fraction_uncertain": 0.2, "malignant_called_benign_appearing": 0.01}},
        "ood": {"file": "ood.npz", "threshold": 123.0, "quantile": 0.995, "metric": "mahalanobis"},
        "training": {"data_dir": str(data_dir), "splits_file": "splits.csv", "n_train": 100, "n_val": 20,
                     "n_test": 40, "config": {"seed": 42, "views": ["id"], "head_units": 0}},
        "metrics": {"val": {"roc_auc": 0.9, "ece_before": 0.05, "ece_after": 0.02}},
        "files": {name: sha256_file(folder / name) for name in files},
    }
    if calibrated:
        meta["calibration"] = {"method": "temperature", "temperature": 1.3}
    (folder / "bundle.json").write_text(json.dumps(meta))
    return folder


def _evaluation(paths, labels, seed, *, name="b", threshold=THRESHOLD, unreadable=0):
    """(results, preds) shaped like evaluate.evaluate_bundle's, from noisy but informative scores."""
    rng = np.random.default_rng(seed)
    raw = np.clip(0.5 * labels + 0.5 * rng.random(len(labels)), 0.001, 0.999)
    prob = 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / 1.3))
    df = pd.DataFrame({
        "path": paths, "probability": prob, "raw_probability": raw,
        "decision": np.where(prob >= BAND[1], "suspicious", np.where(prob >= BAND[0], "uncertain — refer", "benign-appearing")),
        "label": np.where(prob >= threshold, "malignant", "benign"), "out_of_distribution": False, "error": "",
        "y_true": labels,
    })
    if unreadable:  # as predict_batch writes them: empty prediction columns and an error message
        df = df.astype({"probability": float, "raw_probability": float, "decision": object, "label": object,
                        "out_of_distribution": object})
        df.loc[: unreadable - 1, ["probability", "raw_probability", "decision", "label", "out_of_distribution"]] = None
        df.loc[: unreadable - 1, "error"] = "not a supported image type"
    results = {"bundle": name, "backbone": "efficientnet_lite0", "synthetic": False, "tta": False,
               "threshold": threshold, "sets": {"test": score_predictions(df, threshold, n_resamples=100)}}
    return results, {"test": df}


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory):
    """One bundle with a written report: (bundle, report dir, report.md path)."""
    root, paths, labels = dataset
    base = tmp_path_factory.mktemp("run")
    bundle = _bundle(base / "models" / "a", "a", root)
    results, preds = _evaluation(paths, labels, seed=1, name="a", unreadable=1)
    out = save_results(results, preds, base / "reports" / "a")
    report_md = report.write_report(results, preds, bundle, out, n_resamples=100)
    return bundle, out, report_md


def test_report_files_written_and_parse(evaluated):
    _, out, report_md = evaluated
    text = report_md.read_text()
    assert "Not a medical device" in text and "SYNTHETIC" not in text
    assert "| Metric | at frozen threshold 0.400 | at 0.5 (seed-comparable) |" in text
    assert "Sensitivity (recall)" in text and "temperature scaling on validation, T = 1.300" in text
    assert "1 unreadable" in text
    metrics = json.loads((out / "metrics.json").read_text())
    st = metrics["sets"]["test"]["skin_tone"]
    assert st["n_images"] == 39 and st["min_n"] == 30
    by_cat = {r["category"]: r for r in st["rows"]}
    assert sum(r["n"] for r in st["rows"]) == 39 and by_cat["dark"]["n"] == 10
    assert by_cat["tan"]["n"] == 0 and by_cat["tan"]["note"] == "no images in this group"  # every category shows
    assert any("too few images to judge" in n for n in st["notes"])
    assert "| Skin tone (ITA) |" in text and "too small to judge" in text
    ita = pd.read_csv(out / "ita.csv")
    assert len(ita) == 39 and set(ita["category"]) <= {"very light", "light", "intermediate", "tan", "brown", "dark", "unknown"}
    for name in ("confusion_test", "roc_test", "pr_test", "reliability_test", "threshold_test", "training_curves"):
        png = out / "figures" / f"{name}.png"
        assert f"figures/{name}.png" in text
        with Image.open(png) as im:
            assert im.format == "PNG" and max(im.size) < 1000
        assert png.stat().st_size < 150_000


def test_ita_is_reused_from_the_report_folder(evaluated, dataset, monkeypatch):
    bundle, out, _ = evaluated
    root, paths, labels = dataset
    results, preds = _evaluation(paths, labels, seed=1, name="a", unreadable=1)
    monkeypatch.setattr(skintone, "_ita_one", lambda *a: pytest.fail("ITA recomputed despite ita.csv"))
    report.write_report(results, preds, bundle, out, n_resamples=50)


def test_single_class_set_and_uncalibrated_bundle_without_history(dataset, tmp_path):
    root, paths, labels = dataset
    benign = [p for p, y in zip(paths, labels) if y == 0]
    bundle = _bundle(tmp_path / "m", "one", root, calibrated=False, history=False, synthetic=True)
    results, preds = _evaluation(benign, np.zeros(len(benign), int), seed=2, name="one")
    results["synthetic"] = True
    out = save_results(results, preds, tmp_path / "rep")
    text = report.write_report(results, preds, bundle, out, skin_tone=False, n_resamples=50).read_text()
    assert "SYNTHETIC" in text and "not calibrated" in text and "No `history.csv`" in text
    assert "only one class present" in text and "figures are skipped" in text
    assert "roc_test.png" not in text and (out / "figures" / "confusion_test.png").is_file()
    assert "ROC AUC (threshold-free) | n/a | n/a" in text
    assert "Specificity | " in text and "Specificity | n/a" not in text  # other metrics still reported
    card = model_card.model_card(bundle, out)
    assert "not calibrated" in card and "SYNTHETIC" in card


def test_compare_two_runs_and_refuse_different_images(dataset, evaluated, tmp_path):
    root, paths, labels = dataset
    _, out_a, _ = evaluated
    results, preds = _evaluation(paths, labels, seed=5, name="b")
    out_b = save_results(results, preds, tmp_path / "b")
    markdown, data = compare.compare([out_a, out_b], "test", n_resamples=200)
    assert [r["name"] for r in data["runs"]] == ["a", "b"]
    pair = data["pairs"][0]
    assert 0.0 <= pair["p_value"] <= 1.0 and pair["ci_low"] <= pair["diff"] <= pair["ci_high"]
    assert pair["n"] == 39  # the image unreadable in run a is left out of the paired test
    assert "Paired ROC AUC tests" in markdown and "DeLong" in markdown
    json.dumps(data, allow_nan=False)  # strict JSON

    results_c, preds_c = _evaluation(paths[:-2], labels[:-2], seed=6, name="c")
    out_c = save_results(results_c, preds_c, tmp_path / "c")
    with pytest.raises(common.ReportError, match="different images"):
        compare.compare([out_a, out_c])
    with pytest.raises(common.ReportError, match="no evaluation set 'external:x'"):
        compare.compare([out_a, out_b], "external:x")
    with pytest.raises(common.ReportError, match="more than once"):
        compare.compare([out_a, out_b, out_a / ".." / out_a.name])


def test_model_card_sections(evaluated):
    bundle, out, _ = evaluated
    card = model_card.model_card(bundle, out)
    assert "NOT A MEDICAL DEVICE" in card and "not a medical device" in card.lower()
    for heading in ("## Model details", "## Intended use", "### Out-of-scope uses", "## Training data",
                    "## Evaluation", "## Calibration", "## Skin-tone subgroups", "## Decision policy",
                    "## Out-of-distribution detector", "## Limitations", "## Leakage notes", "## Versions"):
        assert heading in card, heading
    assert "Duplicates across splits" in card and "No patient or lesion identifiers" in card
    assert "at frozen threshold 0.400" in card and "| Skin tone (ITA) |" in card
    assert "sensitivity >= 0.95" in card


def test_cli_compare_and_model_card(evaluated, dataset, tmp_path, monkeypatch):
    from skinlesion.cli import main

    bundle, out_a, _ = evaluated
    root, paths, labels = dataset
    out_b = save_results(*_evaluation(paths, labels, seed=7, name="b"), tmp_path / "b")
    runner = CliRunner()
    r = runner.invoke(main, ["compare", str(out_a), str(out_b), "--out", str(tmp_path / "cmp"), "--resamples", "100"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["pairs"][0]["a"] == "a"
    r = runner.invoke(main, ["compare", str(out_a), str(tmp_path)])
    assert r.exit_code == 1 and "neither an evaluation report" in r.output and "Traceback" not in r.output

    r = runner.invoke(main, ["model-card", str(bundle), "--report", str(out_a), "--out", str(tmp_path / "card.md")])
    assert r.exit_code == 0, r.output
    assert "## Intended use" in (tmp_path / "card.md").read_text()
    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path / "no-reports"))
    r = runner.invoke(main, ["model-card", str(bundle)])  # no report anywhere: printed
    assert r.exit_code == 0 and "No evaluation report found" in r.output


def test_threshold_sweep_matches_confusion_counts():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.45, 0.5, 0.9, 0.3, 0.7])
    sweep = figures.threshold_sweep(y, p, n_points=11)
    row = sweep[np.isclose(sweep["threshold"], 0.5)].iloc[0]
    (tn, fp), (fn, tp) = figures.confusion_counts(y, p, 0.5)
    assert math.isclose(row["sensitivity"], tp / (tp + fn)) and math.isclose(row["specificity"], tn / (tn + fp))
    assert np.isnan(figures.threshold_sweep(np.zeros(3, int), p[:3])["sensitivity"]).all()


def test_model_card_audit_note_names_the_rule_it_was_made_with(tmp_path, monkeypatch):
    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path))
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "duplicates.csv").write_text(
        "test_path,kind\ntest/benign/a.jpg,exact\ntest/benign/b.jpg,near\ntest/benign/b.jpg,near\n")
    assert "found 1 test images with an exact copy and 1 with a near copy in the" in model_card._audit_summary()
    (tmp_path / "audit" / "audit.json").write_text(
        json.dumps({"rule": {"max_phash_distance": 8, "min_thumb_correlation": 0.95}}))
    assert "near copy (near: pHash distance ≤ 8 and thumbnail correlation ≥ 0.95) in" in model_card._audit_summary()
    (tmp_path / "audit" / "audit.json").write_text("{damaged")  # the note stays, without the rule
    assert "1 with a near copy in the training data" in model_card._audit_summary()

"""Several photos of one lesion: the combining rule, the --group-by table and CLI, the HAM10000 measurement."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.special import expit, logit

from skinlesion.cli import main
from skinlesion.data.datasets import DataError
from skinlesion.metrics.calibration import DecisionPolicy, apply_temperature
from skinlesion.serving.combine import (
    CLIP,
    combine_predictions,
    combine_probabilities,
    read_group_csv,
)
from skinlesion.serving.inference import NOT_ASSESSED, Prediction

POLICY = DecisionPolicy(threshold=0.3, band_low=0.1, band_high=0.6, target_sensitivity=0.95)


# --------------------------------------------------------------------------- the rule
def test_one_photo_gives_its_own_probability():
    for p in (0.0123, 0.5, 0.97):
        assert combine_probabilities([p]) == pytest.approx(p, abs=1e-12)


def test_rule_is_sigmoid_of_mean_logit():
    probs = [0.99, 0.5, 0.2]
    assert combine_probabilities(probs) == pytest.approx(float(expit(np.mean(logit(probs)))), abs=1e-12)
    # One confident photo counts for more than under a plain mean (documented example).
    assert combine_probabilities([0.99, 0.5]) == pytest.approx(0.9087, abs=1e-4)


def test_rule_is_symmetric_and_order_free():
    assert combine_probabilities([0.2, 0.8]) == pytest.approx(0.5, abs=1e-12)
    assert combine_probabilities([0.1, 0.7, 0.4]) == pytest.approx(combine_probabilities([0.4, 0.1, 0.7]), abs=1e-15)
    assert combine_probabilities(np.array([0.3, 0.6])) == combine_probabilities((0.3, 0.6))


def test_rule_commutes_with_temperature_scaling():
    raw, t = np.array([0.05, 0.6, 0.93]), 0.77
    calibrated_then_combined = combine_probabilities(apply_temperature(raw, t))
    combined_then_calibrated = float(apply_temperature([combine_probabilities(raw)], t)[0])
    assert calibrated_then_combined == pytest.approx(combined_then_calibrated, abs=1e-9)


def test_zero_and_one_are_clipped_not_infinite():
    assert combine_probabilities([0.0, 1.0]) == pytest.approx(0.5, abs=1e-9)
    low = combine_probabilities([0.0])
    assert math.isfinite(low) and low == pytest.approx(CLIP, rel=1e-6)
    assert 0.0 < combine_probabilities([0.0, 0.0, 0.9]) < 0.9


@pytest.mark.parametrize("bad", [[], [float("nan")], [1.5], [-0.1], [0.5, float("inf")]])
def test_bad_probabilities_are_rejected(bad):
    with pytest.raises(ValueError):
        combine_probabilities(bad)


# --------------------------------------------------------------------------- predictions
def _pred(p: float, decision: str | None = None, ood: bool = False) -> Prediction:
    return Prediction(probability=p, raw_probability=p, decision=decision or POLICY.decide(p),
                      threshold=POLICY.threshold, band=(POLICY.band_low, POLICY.band_high),
                      out_of_distribution=ood, ood_distance=0.5, ood_threshold=1.0, model="m", synthetic=False)


def test_combine_predictions_skips_photos_not_assessed():
    preds = [_pred(0.9), _pred(0.7), _pred(0.01, decision=NOT_ASSESSED)]
    out = combine_predictions(preds, POLICY)
    assert out["n_images"] == 3 and out["n_used"] == 2 and out["n_skipped"] == 1
    assert out["probability"] == pytest.approx(combine_probabilities([0.9, 0.7]))
    assert out["decision"] == POLICY.decide(out["probability"]) == "suspicious"
    assert out["threshold"] == POLICY.threshold and out["out_of_distribution"] is False


def test_combine_predictions_decision_comes_from_the_policy():
    out = combine_predictions([_pred(0.05), _pred(0.2, ood=True)], POLICY)
    assert out["decision"] == "uncertain — refer" and out["out_of_distribution"] is True
    strict = DecisionPolicy(threshold=0.01, band_low=0.005, band_high=0.02, target_sensitivity=0.99)
    assert combine_predictions([_pred(0.05), _pred(0.2)], strict)["decision"] == "suspicious"


def test_combine_predictions_with_nothing_assessed():
    out = combine_predictions([_pred(0.8, decision=NOT_ASSESSED)], POLICY)
    assert out["probability"] is None and out["decision"] == NOT_ASSESSED
    assert out["n_used"] == 0 and out["n_skipped"] == 1
    empty = combine_predictions([], POLICY)
    assert empty["n_images"] == 0 and empty["decision"] == NOT_ASSESSED


# --------------------------------------------------------------------------- the --group-by table
def _photos(folder, n: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_read_group_csv_resolves_relative_paths(tmp_path):
    photos = _photos(tmp_path / "imgs", 3)
    csv = tmp_path / "groups.csv"
    csv.write_text(f"path,lesion_id,note\nimgs/p0.jpg,A,x\n{photos[1]},A,\n imgs/p2.jpg , B ,\n")
    table = read_group_csv(csv)
    assert list(table.columns) == ["path", "lesion_id"]
    assert table["lesion_id"].tolist() == ["A", "A", "B"]
    assert list(table["path"]) == [str(p.resolve()) if i != 1 else str(p) for i, p in enumerate(photos)]


@pytest.mark.parametrize("text, message", [
    ("file,lesion\na.jpg,A\n", "needs the columns path, lesion_id"),
    ("path,lesion_id\n", "lists no photos"),
    ("path,lesion_id\nimgs/p0.jpg,\n", "empty path or lesion_id on line(s) [2]"),
    ("path,lesion_id\nimgs/p0.jpg,A\nimgs/p0.jpg,B\n", "listed more than once"),
    ("path,lesion_id\nimgs/p0.jpg,A\nimgs/nope.jpg,A\n", "do not exist, e.g. line 3"),
    ("", "not a readable CSV"),
])
def test_read_group_csv_errors_are_clear(tmp_path, text, message):
    _photos(tmp_path / "imgs", 1)
    csv = tmp_path / "groups.csv"
    csv.write_text(text)
    with pytest.raises(DataError) as err:
        read_group_csv(csv)
    assert message in str(err.value)


def test_read_group_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_group_csv(tmp_path / "none.csv")


def test_cli_group_by_bad_csv_is_one_clear_line(tmp_path):
    csv = tmp_path / "g.csv"
    csv.write_text("image,lesion\nx.jpg,A\n")
    r = CliRunner().invoke(main, ["predict", "--group-by", str(csv)])
    assert r.exit_code == 1 and "needs the columns path, lesion_id" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["predict", "--group-by", str(csv), str(tmp_path)])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(main, ["predict"])
    assert r.exit_code == 2 and "--group-by" in r.output


def test_cli_group_by_combines_each_lesion(tiny_bundle, tmp_path, dermoscopic_jpeg):
    from skinlesion.serving.inference import Predictor

    photos = _photos(tmp_path / "imgs", 2)
    real = tmp_path / "imgs" / "real.jpg"
    real.write_bytes(dermoscopic_jpeg)
    broken = tmp_path / "imgs" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    csv = tmp_path / "groups.csv"
    csv.write_text("path,lesion_id\nimgs/real.jpg,L1\nimgs/p0.jpg,L1\nimgs/broken.jpg,L1\nimgs/p1.jpg,L2\n")
    r = CliRunner().invoke(main, ["predict", "--group-by", str(csv), "--model", str(tiny_bundle), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["lesion_id"] for row in rows] == ["L1", "L2"]
    l1, l2 = rows
    assert (l1["n_images"], l1["n_unreadable"], l1["n_used"], l1["n_skipped"]) == (3, 1, 2, 0)
    assert "broken.jpg" in l1["error"]
    predictor = Predictor.from_bundle(tiny_bundle)
    expected = combine_probabilities([predictor.predict(real.read_bytes()).probability,
                                      predictor.predict(photos[0].read_bytes()).probability])
    assert l1["probability"] == pytest.approx(expected, abs=1e-6)
    assert l1["decision"] == predictor.policy.decide(expected)
    assert l2["probability"] == pytest.approx(predictor.predict(photos[1].read_bytes()).probability, abs=1e-6)
    # CSV output has the same columns.
    r = CliRunner().invoke(main, ["predict", "--group-by", str(csv), "--model", str(tiny_bundle)])
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("lesion_id,n_images,n_unreadable,n_used")


# --------------------------------------------------------------------------- the measurement
def test_lesion_table_and_scores_on_a_made_up_source():
    from skinlesion.evaluation.lesion_groups import _scores, lesion_table

    rng = np.random.default_rng(0)
    lesions = np.repeat(np.arange(60), rng.integers(1, 4, 60))
    label = (np.arange(60) % 3 == 0).astype(int)[lesions]
    # Each photo is a noisy view of its lesion's score, so combining photos must help.
    lesion_score = rng.normal(size=60) + 1.5 * (np.arange(60) % 3 == 0)
    prob = expit(lesion_score[lesions] + rng.normal(scale=1.5, size=len(lesions)))
    paths = [f"images/{i}.jpg" for i in range(len(lesions))]
    preds = pd.DataFrame({"path": paths, "probability": prob, "y_true": label, "error": ""})
    records = pd.DataFrame({"path": paths, "label": label, "group": [f"ham10000:L{x}" for x in lesions]})
    table = lesion_table(preds, records)
    assert len(table) == len(lesions) and table["lesion"].nunique() == 60
    out = _scores(table, threshold=0.5, n_resamples=50, seed=0)
    assert out["n_lesions"] == 60 and out["n_images"] == len(lesions)
    assert sum(out["photos_per_lesion"].values()) == 60
    for rule in ("per_image", "single_photo", "per_lesion"):
        lo, hi = out[rule]["roc_auc_ci"]
        assert 0.0 <= lo <= hi <= 1.0
    json.dumps(out, allow_nan=False)
    with pytest.raises(DataError, match="disagree"):
        lesion_table(preds.assign(y_true=1 - preds["y_true"]), records)
    with pytest.raises(DataError, match="not in the source"):
        lesion_table(preds.assign(path=[p + "x" for p in paths]), records)


@pytest.mark.realdata
def test_ham10000_lesion_groups_from_the_committed_predictions(tmp_path):
    from skinlesion import config
    from skinlesion.evaluation.lesion_groups import write_lesion_group_benefit

    predictions = config.reports_dir() / "generalisation" / config.DEFAULT_MODEL / "predictions.csv"
    if not predictions.is_file() or not (config.source_root("ham10000") / "HAM10000_metadata.csv").is_file():
        pytest.skip("needs the LOSO predictions and the HAM10000 metadata")
    path = write_lesion_group_benefit(tmp_path / "ham.json", n_resamples=20)
    result = json.loads(path.read_text())
    several = result["lesions_with_several_photos"]
    assert result["all_lesions"]["n_images"] == 10015 and result["all_lesions"]["n_lesions"] == 7470
    assert several["n_lesions"] == 1956 and several["photos_per_lesion"].get("1") is None
    assert 0.5 < several["per_lesion"]["roc_auc"] < 1.0


def test_summary_names_the_band_only_for_an_uncertain_decision():
    low, high = POLICY.band_low, POLICY.band_high
    middle = _pred((low + high) / 2)
    assert middle.decision == "uncertain — refer"
    assert (f"lies in the uncertainty band {100 * low:.1f}% to {100 * high:.1f}%; threshold "
            f"{100 * POLICY.threshold:.1f}%") in middle.summary
    for p in (_pred(0.99), _pred(0.0)):
        assert p.decision != "uncertain — refer" and "uncertainty band" not in p.summary


def test_an_uncertain_combined_result_names_the_band_as_a_single_photo_does():
    from skinlesion.serving.dashboard import GroupResult, UploadResult, render_group_html

    low, high = POLICY.band_low, POLICY.band_high
    preds = [_pred((low + high) / 2), _pred((low + high) / 2 + 0.001)]
    combined = combine_predictions(preds, POLICY)
    assert combined["decision"] == "uncertain — refer" and (combined["band_low"], combined["band_high"]) == (low, high)
    page = render_group_html(GroupResult([UploadResult(prediction=p) for p in preds], combined))
    assert f"lies in the uncertainty band {100 * low:.1f}% to {100 * high:.1f}%; threshold" in page
    sure = combine_predictions([_pred(0.99)], POLICY)
    assert "uncertainty band" not in render_group_html(GroupResult([UploadResult(prediction=_pred(0.99))], sure))

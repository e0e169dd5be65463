"""The notebook helpers (``skinlesion.notebooks``) on missing, empty or malformed input: one clear
exception that names what is missing, the file and what writes it; good input still works."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from skinlesion import notebooks as nb


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``SKINLESION_REPORTS_DIR`` for the test."""
    folder = tmp_path / "reports"
    folder.mkdir()
    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(folder))
    return folder


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def preds(**columns: Any) -> pd.DataFrame:
    base = {"path": ["a", "b", "c", "d"], "y_true": [1, 1, 0, 0], "probability": [0.1, 0.9, 0.8, 0.2]}
    return pd.DataFrame({**base, **columns})


# ---------------------------------------------------------------------------- parameters and 01


def test_env_param_names_the_variable_holding_a_bad_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKINLESION_NB_SAMPLE", "forty")
    with pytest.raises(ValueError, match=r"SKINLESION_NB_SAMPLE='forty' is not an integer"):
        nb.env_param("sample", 0)
    monkeypatch.setenv("SKINLESION_NB_LR", "fast")
    with pytest.raises(ValueError, match=r"SKINLESION_NB_LR='fast' is not a number"):
        nb.env_param("lr", 1e-4)
    monkeypatch.setenv("SKINLESION_NB_SAMPLE", "40")
    assert nb.env_param("sample", 0) == 40


def test_stratified_sample_of_an_empty_table_is_empty_and_a_missing_column_is_named() -> None:
    empty = pd.DataFrame(columns=["path", "split", "label"])
    assert nb.stratified_sample(empty, 3).empty
    with pytest.raises(ValueError, match=r"lacks the column\(s\) 'label'.*file_table"):
        nb.stratified_sample(pd.DataFrame({"path": ["a"], "split": ["test"]}), 3)
    files = pd.DataFrame({"path": list("abcdef"), "split": ["test"] * 6, "label": [0, 0, 0, 1, 1, 1]})
    assert list(nb.stratified_sample(files, 2, seed=0)["label"]) == [0, 0, 1, 1]


def test_table_helpers_name_the_column_they_lack(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"files table lacks the column\(s\) 'path'"):
        nb.image_statistics(tmp_path, pd.DataFrame({"file": ["x.jpg"]}))
    with pytest.raises(ValueError, match=r"files table lacks the column\(s\) 'path'"):
        nb.ita_for_files(tmp_path, pd.DataFrame({"file": ["x.jpg"]}))
    with pytest.raises(ValueError, match=r"splits table lacks the column\(s\) 'split'"):
        nb.split_summary(pd.DataFrame({"label": [0, 1]}))
    t = nb.split_summary(pd.DataFrame({"split": ["train", "val", "test", "train"], "label": [0, 1, 1, 1]}))
    assert t.loc["train", "total"] == 2 and t.loc["val", "malignant"] == 1


def test_duplicate_summary_needs_the_audit_columns_only_when_there_are_pairs() -> None:
    with pytest.raises(ValueError, match=r"lacks the column\(s\) 'test_label', 'train_label', 'kind'.*skinlesion data audit"):
        nb.duplicate_summary(pd.DataFrame({"test_path": ["t/a.jpg"]}), n_test=3, n_dedup=2)
    none = nb.duplicate_summary(pd.DataFrame(), n_test=3, n_dedup=3)["value"]
    assert none["with an exact duplicate in train"] == 0 and none["de-duplicated test images"] == 3


def test_load_or_run_audit_names_the_malformed_committed_file(reports: Path, tmp_path: Path) -> None:
    audit = reports / "audit"
    audit.mkdir()
    (audit / "duplicates.csv").write_text("test_path,test_label,train_label\nt/a.jpg,0,0\n")
    (audit / "dedup_test.csv").write_text("path,label\nt/b.jpg,0\n")
    with pytest.raises(ValueError, match=r"audit/duplicates\.csv lacks the column\(s\) 'kind'.*`skinlesion data audit`"):
        nb.load_or_run_audit(tmp_path)
    (audit / "duplicates.csv").write_text("test_path,test_label,train_label,kind\n")
    (audit / "dedup_test.csv").write_text("")
    with pytest.raises(ValueError, match=r"audit/dedup_test\.csv is empty.*`skinlesion data audit`"):
        nb.load_or_run_audit(tmp_path)


def test_load_or_run_audit_reuses_only_the_audit_of_these_test_images(reports: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Like ``skinlesion evaluate``: the committed audit is reused when its audit.json records these
    test images (same md5), and computed afresh (nothing written) for another dataset."""
    import shutil

    from skinlesion.data.audit import audit, write_audit
    from skinlesion.data.synth import generate_dataset

    monkeypatch.setenv("SKINLESION_CACHE_DIR", str(tmp_path / "cache"))
    root = generate_dataset(tmp_path / "ds", n_train_per_class=4, n_test_per_class=3, size=48, seed=0)
    pairs, test = audit(root, nb.file_table(root), progress=False)
    write_audit(pairs, test)
    assert "from `skinlesion data audit`" in nb.load_or_run_audit(root)[2]

    other = tmp_path / "other"
    shutil.copytree(root, other)
    shutil.copy(other / "train" / "benign" / "synth_train_benign_0.jpg", other / "test" / "benign" / "synth_test_benign_0.jpg")
    before = (reports / "audit" / "dedup_test.csv").read_text()
    _pairs, dedup, origin = nb.load_or_run_audit(other)
    assert origin == "computed now" and len(dedup) == 5  # the copied training image is found
    assert (reports / "audit" / "dedup_test.csv").read_text() == before


def test_load_or_run_source_audit_names_the_malformed_pairs_file(reports: Path) -> None:
    (reports / "audit" / "sources").mkdir(parents=True)
    (reports / "audit" / "sources" / "pairs.csv").write_text("source_a,image_a,source_b,image_b\nk,1,k,2\n")
    found = {"kaggle": SimpleNamespace(records=pd.DataFrame({"source": ["kaggle"], "image_id": ["1"]}))}
    with pytest.raises(ValueError, match=r"pairs\.csv lacks the column\(s\) 'label_a', 'label_b', 'kind'"
                                         r".*`skinlesion data audit --sources kaggle`"):
        nb.load_or_run_source_audit(found)


def test_copies_by_diagnosis_names_missing_columns_and_unknown_images() -> None:
    records = pd.DataFrame({"source": ["kaggle", "ham10000"], "image_id": ["k1", "h1"], "diagnosis": ["malignant", "mel"]})
    columns = list(nb.SOURCE_PAIR_COLUMNS)
    with pytest.raises(ValueError, match=r"source pairs lack.*'kind'.*skinlesion data audit --sources"):
        nb.copies_by_diagnosis(pd.DataFrame(), records)
    with pytest.raises(ValueError, match=r"records lack.*'diagnosis'"):
        nb.copies_by_diagnosis(pd.DataFrame(columns=columns), records.drop(columns="diagnosis"))
    stranger = pd.DataFrame([["kaggle", "k1", 1, "ham10000", "h9", 1, "exact"]], columns=columns)
    with pytest.raises(ValueError, match=r"1 image\(s\) of the source pairs are not in the records.*'h9'"):
        nb.copies_by_diagnosis(stranger, records)
    assert nb.copies_by_diagnosis(pd.DataFrame(columns=columns), records).empty  # no copies: an empty table


# ---------------------------------------------------------------------------- 02


def test_validation_table_with_nothing_to_show_says_so() -> None:
    with pytest.raises(ValueError, match=r"no bundle, no skipped backbone and no recorded row.*`skinlesion train`"):
        nb.validation_table({})
    with pytest.raises(ValueError, match=r"no bundle.*kaggle-only/validation\.csv"):
        nb.validation_table({}, skipped={}, recorded=pd.DataFrame())
    t = nb.validation_table({}, skipped={"efficientnet_lite0": "ImageNet weights could not be downloaded"})
    assert list(t.index) == ["nb-efficientnet_lite0"] and t.loc["nb-efficientnet_lite0", "from"] == "not trained"


def test_validation_table_names_columns_the_recorded_rows_lack() -> None:
    recorded = pd.DataFrame({"backbone": ["efficientnet_lite0"]}, index=pd.Index(["lite0"], name="model"))
    with pytest.raises(ValueError, match=r"recorded validation rows lack.*'val AUC'.*validation\.csv"):
        nb.validation_table({}, recorded=recorded)


def test_recorded_validation_names_the_malformed_file(reports: Path) -> None:
    assert nb.recorded_validation(["ens-ft"]).empty  # no file: no recorded rows
    path = reports / nb.RECORDED_VALIDATION
    path.parent.mkdir(parents=True)
    path.write_text("name,backbone\nens-ft,ensemble\n")
    with pytest.raises(ValueError, match=r"kaggle-only/validation\.csv lacks the column\(s\) 'model', 'stage'.*"
                                         r"no skinlesion command writes it"):
        nb.recorded_validation(["ens-ft"])
    row = {"model": "ens-ft", **dict.fromkeys(nb.RECORDED_COLUMNS, "x"), "input": "224/260", "val AUC": 0.98}
    pd.DataFrame([row]).to_csv(path, index=False)
    got = nb.recorded_validation(["ens-ft", "other"])
    assert list(got.index) == ["ens-ft"] and got.loc["ens-ft", "input"] == "224/260"


# ---------------------------------------------------------------------------- 03 and 04


def test_prediction_helpers_name_the_column_they_lack() -> None:
    with pytest.raises(ValueError, match=r"predictions table lacks the column\(s\) 'probability'.*skinlesion evaluate"):
        nb.most_confident_mistakes(preds().drop(columns="probability"), 0.5)
    with pytest.raises(ValueError, match=r"predictions table lacks the column\(s\) 'y_true'"):
        nb.pick_examples(preds().drop(columns="y_true"), 0.5)
    bad = preds(raw_probability=[0.1, 0.9, 0.8, 0.2]).drop(columns="y_true")
    with pytest.raises(ValueError, match=r"predictions table lacks the column\(s\) 'y_true'"):
        nb.calibration_effect({"m": ({}, {"test": bad})})


def test_most_confident_mistakes_takes_the_error_column_as_optional() -> None:
    # Like pick_examples: a table without ``error`` has no failed images; rows with an error are left out.
    no_error = nb.most_confident_mistakes(preds(), 0.5)
    assert list(no_error["path"]) == ["a", "c"] and list(no_error["mistake"]) == ["missed malignant", "false alarm"]
    with_error = nb.most_confident_mistakes(preds(error=["unreadable", "", "", ""]), 0.5)
    assert list(with_error["path"]) == ["c"]
    assert nb.most_confident_mistakes(preds().iloc[:0], 0.5).empty


def test_sanity_table_needs_a_randomisation_step() -> None:
    with pytest.raises(ValueError, match=r"no randomisation step \(it has nothing\).*sanity_check"):
        nb.sanity_table({})
    with pytest.raises(ValueError, match=r"no randomisation step \(it has 'original'\)"):
        nb.sanity_table({"original": {"spearman": 1.0, "ssim": 1.0, "layers": []}})
    with pytest.raises(ValueError, match=r"sanity-check step 'head' lacks 'ssim'"):
        nb.sanity_table({"head": {"spearman": 0.1, "layers": ["dense"]}})
    t = nb.sanity_table({"original": {"spearman": 1.0, "ssim": 1.0}, "head": {"spearman": 0.1, "ssim": 0.2, "layers": ["d"]}})
    assert list(t.index) == ["head"] and t.loc["head", "randomised layers"] == 1


# ---------------------------------------------------------------------------- generalisation reports

SOURCE_ROW = {"n": 100, "n_malignant": 20, "roc_auc": 0.8, "roc_auc_ci": [0.75, 0.85],
              "sensitivity": 0.9, "specificity": 0.5, "threshold": 0.3}


def test_published_recipe_names_what_summary_json_lacks(tmp_path: Path) -> None:
    assert nb.published_recipe(tmp_path) == ""  # nothing published yet
    write_json(tmp_path / "summary.json", {"held_out": {}})
    with pytest.raises(ValueError, match=r"summary\.json lacks 'recipe'.*`skinlesion generalise --recipe NAME --publish`"):
        nb.published_recipe(tmp_path)
    write_json(tmp_path / "summary.json", {"recipe": ""})
    with pytest.raises(ValueError, match=r"summary\.json names no recipe"):
        nb.published_recipe(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"summary\.json is not valid JSON"):
        nb.published_recipe(tmp_path)
    write_json(tmp_path / "summary.json", {"recipe": "r1"})
    assert nb.published_recipe(tmp_path) == "r1"


def test_generalisation_tables_name_the_missing_details(tmp_path: Path) -> None:
    held, reference, text = nb.generalisation_tables(tmp_path)  # nothing published: empty
    assert held.empty and reference.empty and text == ""
    write_json(tmp_path / "summary.json", {"recipe": "r1"})
    with pytest.raises(FileNotFoundError, match=r"r1/details\.json not found.*`skinlesion generalise --recipe r1`"):
        nb.generalisation_tables(tmp_path)
    write_json(tmp_path / "r1" / "details.json", {"reference": {}})
    with pytest.raises(ValueError, match=r"r1/details\.json lacks 'held_out'"):
        nb.generalisation_tables(tmp_path)
    write_json(tmp_path / "r1" / "details.json", {"held_out": {"kaggle": {"n": 100, "roc_auc": 0.8}}})
    with pytest.raises(ValueError, match=r"details\.json held_out\['kaggle'\] lacks 'n_malignant', 'roc_auc_ci'"):
        nb.generalisation_tables(tmp_path)
    write_json(tmp_path / "r1" / "details.json", {"held_out": {"kaggle": {**SOURCE_ROW, "roc_auc_ci": [0.75]}}})
    with pytest.raises(ValueError, match=r"held_out\['kaggle'\] roc_auc_ci is not a \[low, high\] pair"):
        nb.generalisation_tables(tmp_path)


def test_generalisation_tables_on_good_input(tmp_path: Path) -> None:
    write_json(tmp_path / "summary.json", {"recipe": "r1"})
    write_json(tmp_path / "r1" / "details.json", {
        "held_out": {"kaggle": {**SOURCE_ROW, "trained_on": ["ham10000", "isic2017"]}},
        "reference": {"kaggle": SOURCE_ROW}})
    (tmp_path / "experiments.md").write_text("# experiments\n")
    held, reference, text = nb.generalisation_tables(tmp_path)
    assert held.loc["kaggle", "AUC 95% CI"] == "[0.750, 0.850]" and held.loc["kaggle", "trained on"] == "ham10000, isic2017"
    assert list(reference.index) == ["kaggle"] and "trained on" not in reference.columns
    assert text == "# experiments\n"


def test_loso_recipes_name_the_malformed_summary(tmp_path: Path) -> None:
    assert nb.loso_recipes(tmp_path).empty
    write_json(tmp_path / "r1" / "summary.json", {"held_out": {"kaggle": {"roc_auc": 0.8}}})
    with pytest.raises(ValueError, match=r"r1/summary\.json held_out\['kaggle'\] lacks 'roc_auc_ci'"
                                         r".*`skinlesion generalise --recipe r1`"):
        nb.loso_recipes(tmp_path)
    (tmp_path / "r1" / "summary.json").write_text("")
    with pytest.raises(ValueError, match=r"r1/summary\.json is not valid JSON"):
        nb.loso_recipes(tmp_path)
    write_json(tmp_path / "r1" / "summary.json", {"held_out": {"kaggle": SOURCE_ROW, "ham10000": {**SOURCE_ROW, "roc_auc": 0.7}}})
    write_json(tmp_path / "r1" / "details.json", {"reference": {"kaggle": {}}})
    with pytest.raises(ValueError, match=r"r1/details\.json reference\['kaggle'\] lacks 'roc_auc'"):
        nb.loso_recipes(tmp_path)
    write_json(tmp_path / "r1" / "details.json", {"reference": {"kaggle": {"roc_auc": 0.95}},
                                                  "config": {"ensemble_of": ["a", "b"]}})
    t = nb.loso_recipes(tmp_path)
    assert t.loc["r1", "worst source"] == "ham10000" and t.loc["r1", "kaggle CI"] == (0.75, 0.85)
    assert t.loc["r1", "kaggle in-source"] == 0.95 and t.loc["r1", "recipe"] == "the ensemble of `a` and `b`"


def test_robustness_table_names_what_robustness_json_lacks(reports: Path) -> None:
    assert nb.robustness_table("m").empty  # not measured
    path = reports / "robustness" / "m" / "robustness.json"
    write_json(path, {"bundle": "m"})
    with pytest.raises(ValueError, match=r"robustness/m/robustness\.json lacks 'transforms'.*`skinlesion robustness models/m`"):
        nb.robustness_table("m")
    row = {"decision_flip_rate": 0.01, "mean_abs_dp": 0.002, "p95_abs_dp": 0.01, "n": 300}
    write_json(path, {"transforms": {"rot90": {k: v for k, v in row.items() if k != "n"}}})
    with pytest.raises(ValueError, match=r"transforms\['rot90'\] lacks 'n'"):
        nb.robustness_table("m")
    write_json(path, {"transforms": {"rot90": row}})
    table = nb.robustness_table("m")
    assert table.loc["rot90", "n"] == 300 and "mean Δp" not in table.columns  # an older report: no signed shift
    write_json(path, {"transforms": {"rot90": {**row, "mean_dp": 0.05}}})
    with pytest.raises(ValueError, match=r"transforms\['rot90'\] lacks 'mean_dp_ci', 'threshold_cross_rate'"):
        nb.robustness_table("m")
    write_json(path, {"transforms": {"rot90": {**row, "mean_dp": 0.05, "mean_dp_ci": [0.04, 0.06],
                                               "threshold_cross_rate": 0.09}}})
    table = nb.robustness_table("m")
    assert table.loc["rot90", "mean Δp"] == 0.05 and table.loc["rot90", "mean Δp 95 % CI"] == "[+0.040, +0.060]"
    assert table.loc["rot90", "threshold crossed"] == 0.09
    assert nb.robustness_table("other", path=path).loc["rot90", "n"] == 300


def test_site_curves_name_what_curve_json_lacks(reports: Path) -> None:
    assert nb.site_curves("r1").empty
    point = {"n": 25, "repeats": 20, "sensitivity_mean": 0.8, "specificity_mean": 0.5,
             "specificity_p10": 0.1, "specificity_p90": 0.9}
    path = reports / "site" / "loso-r1-kaggle-test" / "curve.json"
    curve = {"site": {"name": "kaggle"}, "frozen": {"sensitivity": 0.9, "specificity": 0.4}, "curve": [point]}
    write_json(path, {**curve, "curve": [{k: v for k, v in point.items() if k != "repeats"}]})
    with pytest.raises(ValueError, match=r"loso-r1-kaggle-test/curve\.json curve\[0\] lacks 'repeats'"
                                         r".*`skinlesion calibrate models/loso/loso-r1-<source> --site <site> --curve`"):
        nb.site_curves("r1")
    write_json(path, {k: v for k, v in curve.items() if k != "frozen"})
    with pytest.raises(ValueError, match=r"curve\.json lacks 'frozen'"):
        nb.site_curves("r1")
    write_json(path, curve)
    t = nb.site_curves("r1")
    assert list(t["N"]) == [0, 25] and t.loc[1, "note"] == "mean of 20 draws; spec 10-90 %: 0.10-0.90"

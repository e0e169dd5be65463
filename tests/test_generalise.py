"""Leave-one-source-out end to end on three tiny fake sources (slow: trains four small models)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from test_sources import make_ham, make_isic, make_kaggle

from skinlesion import config
from skinlesion.evaluation.generalise import SUMMARY_KEYS, held_out_frame, report_markdown


@pytest.fixture()
def fake_sources(tmp_path, monkeypatch):
    ham_rows = [(f"HAM_{i // 2}", f"ISIC_9{i:03d}", "mel" if i % 3 == 0 else "nv") for i in range(24)]
    monkeypatch.setenv("SKINLESION_HAM10000_DIR", str(make_ham(tmp_path / "ham", ham_rows)))
    isic = {s: [(f"ISIC_{k}{i:03d}", float(i % 3 == 0), float(i % 3 == 1)) for i in range(n)]
            for k, (s, n) in enumerate({"train": 18, "val": 6, "test": 9}.items())}
    monkeypatch.setenv("SKINLESION_ISIC2017_DIR", str(make_isic(tmp_path / "isic", isic)))
    monkeypatch.setenv("SKINLESION_DATA_DIR", str(make_kaggle(tmp_path / "kg", n=8)))
    monkeypatch.setenv("SKINLESION_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
def test_loso_writes_the_published_summary_shape(fake_sources, tmp_path):
    from click.testing import CliRunner

    from skinlesion.cli import main

    out = tmp_path / "reports"
    r = CliRunner().invoke(main, [
        "generalise", "--recipe", "tiny", "--publish", "--report-dir", str(out), "--resamples", "50",
        "--input-size", "64", "--head-units", "0", "--out-dir", str(tmp_path / "models"), "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"recipe", "held_out"} and summary["recipe"] == "tiny"
    assert set(summary["held_out"]) == {"kaggle", "ham10000", "isic2017"}
    for entry in summary["held_out"].values():
        assert set(entry) == set(SUMMARY_KEYS)
        assert 0 <= entry["roc_auc"] <= 1 and entry["roc_auc_ci"][0] <= entry["roc_auc_ci"][1]
    # Official test splits where a set has one, all of it otherwise.
    assert summary["held_out"]["kaggle"]["n"] == 16 and summary["held_out"]["isic2017"]["n"] == 9
    assert summary["held_out"]["ham10000"]["n"] == 24
    details = json.loads((out / "tiny" / "details.json").read_text())
    assert details["held_out"]["kaggle"]["trained_on"] == ["ham10000", "isic2017"]
    assert "kaggle" in details["reference"]
    rows = (out / "experiments.md").read_text().splitlines()
    assert sum(r.startswith("| `tiny` |") for r in rows) == 1
    # The held-out source never reaches training in its fold.
    splits = pd.read_csv(tmp_path / "models" / "loso-tiny-kaggle" / "splits.csv")
    assert set(splits.loc[splits["source"] == "kaggle", "split"]) == {"test", "unused"}
    assert set(splits.loc[(splits["source"] == "kaggle") & (splits["split"] == "test"), "path"].str[:5]) == {"test/"}


def test_held_out_frame_is_the_scored_part_of_the_source():
    t = pd.DataFrame({"source": ["a"] * 4 + ["b"] * 2, "split": ["test", "unused"] * 2 + ["test", "test"]})
    assert len(held_out_frame(t, "a")) == 2 and len(held_out_frame(t, "b")) == 2


def test_report_markdown_lists_every_source():
    e = {"n": 10, "n_malignant": 4, "roc_auc": 0.8, "roc_auc_ci": [0.7, 0.9], "sensitivity": 0.9,
         "specificity": 0.5, "threshold": 0.3, "trained_on": ["x"], "excluded_as_duplicates": 0}
    md = report_markdown({"recipe": "r", "held_out": {"a": e, "b": e}, "reference": {}, "mean_roc_auc": 0.8,
                          "worst_roc_auc": 0.8, "wall_seconds": 60, "command": "skinlesion generalise"})
    assert "| a |" in md and "| b |" in md and "Mean LOSO AUC 0.800" in md


@pytest.mark.slow
def test_stage1_fast_path_equals_the_predictor(tiny_bundle, training_data_dir):
    """Scoring from cached features gives the Predictor's calibrated probabilities."""
    import numpy as np

    from skinlesion.evaluation.generalise import stage1_probabilities
    from skinlesion.serving.inference import Predictor

    splits = pd.read_csv(tiny_bundle / "splits.csv")
    rows = splits[splits["split"] == "test"].head(12)
    files = [training_data_dir / p for p in rows["path"]]
    fast = stage1_probabilities(tiny_bundle, files)
    assert fast is not None
    slow = Predictor.from_bundle(tiny_bundle).predict_batch(files)
    assert np.allclose(fast["probability"], slow["probability"], atol=1e-4)


@pytest.mark.slow
def test_multi_source_bundle_with_tta_is_served_and_evaluated_per_source(fake_sources, tmp_path):
    """A bundle trained on several sources with TTA: the Predictor serves TTA by default, the
    stage-1 fast path agrees with it, and `evaluate` scores each source's test split."""
    import numpy as np

    from skinlesion.evaluation.evaluate import evaluate_bundle
    from skinlesion.evaluation.generalise import stage1_probabilities
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.train import TrainConfig, train

    bundle = train(TrainConfig(sources=("kaggle", "ham10000", "isic2017"), input_size=64, head_units=0, tta=True,
                               views=("id", "r90", "zo"), out_dir=str(tmp_path / "m"), run_id="ms", progress=False))
    predictor = Predictor.from_bundle(bundle)
    assert predictor.default_tta and predictor.meta.training.sources.keys() == {"kaggle", "ham10000", "isic2017"}
    splits = pd.read_csv(bundle / "splits.csv")
    assert {"source", "group", "reason"} <= set(splits.columns)
    rows = splits[splits["split"] == "test"].head(6)
    from skinlesion import config

    files = [config.source_root(s) / p for s, p in zip(rows["source"], rows["path"])]
    served = predictor.predict_batch(files)
    fast = stage1_probabilities(bundle, files)
    assert fast is not None and np.allclose(fast["probability"], served["probability"], atol=1e-4)
    assert not np.allclose(served["probability"], predictor.predict_batch(files, tta=False)["probability"])
    results, _ = evaluate_bundle(bundle, n_resamples=50, progress=False)
    assert {"test:kaggle", "test:isic2017"} <= set(results["sets"]) and results["tta"] is True


@pytest.mark.slow
def test_model_card_shows_the_recipes_loso_results(tiny_bundle, tmp_path, monkeypatch):
    from skinlesion.bundle.format import load_meta
    from skinlesion.evaluation.model_card import model_card
    from skinlesion.io import write_json

    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path / "reports"))
    cfg = load_meta(tiny_bundle).training.config
    entry = {"n": 100, "roc_auc": 0.81, "roc_auc_ci": [0.75, 0.86], "sensitivity": 0.9, "specificity": 0.5}
    write_json(tmp_path / "reports" / "generalisation" / "r1" / "details.json",
               {"recipe": "r1", "config": {**cfg, "sources": ["x"], "run_id": "other"}, "held_out": {"x": entry}})
    card = model_card(tiny_bundle)
    assert "Leave-one-source-out (recipe `r1`)" in card and "0.810 [0.750, 0.860]" in card


def test_a_loso_run_older_than_an_option_matches_while_the_bundle_keeps_its_default():
    """An option added to TrainConfig after a LOSO run is absent from that run's config: it matches the
    default, not a changed value."""
    from skinlesion.evaluation.model_card import _same_recipe
    from skinlesion.training.train import TrainConfig

    bundle = json.loads(json.dumps(TrainConfig(head_units=0, run_id="a").to_dict()))
    loso = {k: v for k, v in bundle.items() if k not in {"colour_constancy", "run_id"}}
    assert _same_recipe(loso, bundle)
    assert not _same_recipe(loso, {**bundle, "colour_constancy": True})
    assert not _same_recipe({**loso, "head_units": 256}, bundle)


@pytest.mark.slow
def test_run_trains_the_default_recipe_on_all_sources(fake_sources, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.train import DEFAULT_MEMBERS, TrainConfig

    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path / "reports"))
    r = CliRunner().invoke(main, ["run", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "data: kaggle" in r.output and "test:isic2017" in r.output and "Research tool" in r.output
    card = (tmp_path / "reports" / config.DEFAULT_MODEL / "MODEL_CARD.md").read_text()  # written with the report
    assert f"| Run id | {config.DEFAULT_MODEL} |" in card and "Benign keratoses" in card
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([config.DEFAULT_MODEL, *DEFAULT_MEMBERS])
    for name, recipe in DEFAULT_MEMBERS.items():
        cfg = json.loads((tmp_path / "models" / name / "bundle.json").read_text())["training"]["config"]
        assert cfg["sources"] == ["kaggle", "ham10000", "isic2017"]
        # As TrainConfig records it (lesion_crop=True is written as the crop rule's number).
        recorded = json.loads(json.dumps(TrainConfig(**recipe).to_dict()))
        assert all(cfg[k] == recorded[k] for k in recipe)
    # The bundle the web app, dashboard and CLI serve: the members' ensemble, with their TTA.
    served = Predictor.from_bundle(tmp_path / "models" / config.DEFAULT_MODEL)
    assert served.bundle.kind == "ensemble" and served.member_run_ids == tuple(DEFAULT_MEMBERS) and served.default_tta


@pytest.mark.slow
def test_loso_of_an_ensemble_scores_each_folds_ensemble_as_served(fake_sources, tmp_path, monkeypatch):
    """`generalise --ensemble-of A,B` trains nothing: each fold's model is the ensemble of A's and B's
    bundles for that fold, scored as the Predictor serves it, and gets its own experiments row; the
    model card of an ensemble shows the ensemble's LOSO run, not its first member's."""
    import numpy as np
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.evaluation.model_card import model_card
    from skinlesion.serving.inference import Predictor

    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path / "reports"))
    out, models = tmp_path / "reports" / "generalisation", tmp_path / "models"
    common = ["--report-dir", str(out), "--resamples", "50", "--out-dir", str(models), "--sources", "kaggle,isic2017",
              "--quiet"]
    runner = CliRunner()
    missing = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin,mlp", *common])
    assert missing.exit_code != 0 and "loso-lin-kaggle" in missing.output
    for recipe, units in (("lin", "0"), ("mlp", "8")):
        r = runner.invoke(main, ["generalise", "--recipe", recipe, "--input-size", "64", "--tta", "--head-units", units,
                                 *common])
        assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin,mlp", *common])
    assert r.exit_code == 0, r.output
    details = json.loads((out / "ens" / "details.json").read_text())
    assert details["config"] == {"ensemble_of": ["lin", "mlp"], "sources": ["kaggle", "isic2017"]}
    assert set(details["held_out"]) == {"kaggle", "isic2017"} and set(details["reference"]) == {"kaggle", "isic2017"}
    fold = models / "loso-ens-isic2017"
    assert json.loads((fold / "bundle.json").read_text())["kind"] == "ensemble"
    preds = pd.read_csv(out / "ens" / "predictions.csv")
    held = preds[preds["held_out"] == "isic2017"]
    files = [config.source_root("isic2017") / p for p in held["path"]]
    served = Predictor.from_bundle(fold).predict_batch(files)
    assert np.allclose(held["probability"], served["probability"], atol=1e-4)
    assert sum(row.startswith("| `ens` |") for row in (out / "experiments.md").read_text().splitlines()) == 1
    card = model_card(models / "loso-ens-all")
    assert "Leave-one-source-out (recipe `ens`)" in card
    training = card[card.index("## Training data"):card.index("## Evaluation")]
    assert "Their licences (" in training and "isic2017: CC-0 or CC BY-NC per image" in training, training
    assert "Leave-one-source-out (recipe `mlp`)" in model_card(models / "loso-mlp-all")
    # A re-run reuses the fold ensembles; a training option or a single member is refused.
    assert runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin,mlp", *common]).exit_code == 0
    bad = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin,mlp", "--views", "id", *common])
    assert bad.exit_code == 2 and "--views" in bad.output
    one = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin", *common])
    assert one.exit_code == 2 and "at least two" in one.output
    again = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin,mlp", "--retrain", *common])
    assert again.exit_code == 2 and "retrain its member recipes" in again.output
    # A trained recipe's folds are reused on a re-run, and trained again (replaced) with --retrain.
    lin = ["generalise", "--recipe", "lin", "--input-size", "64", "--tta", "--head-units", "0", *common]
    inode = (models / "loso-lin-kaggle" / "bundle.json").stat().st_ino
    assert runner.invoke(main, lin).exit_code == 0
    assert (models / "loso-lin-kaggle" / "bundle.json").stat().st_ino == inode
    r = runner.invoke(main, [*lin, "--retrain"])
    assert r.exit_code == 0, r.output
    assert (models / "loso-lin-kaggle" / "bundle.json").stat().st_ino != inode
    assert not any(p.name.startswith((".previous-", ".tmp-")) for p in models.iterdir())
    # The ensemble of a retrained member is built again from the new member (not refused, not reused);
    # an ensemble of other members under the same name is refused.
    old_ens = json.loads((models / "loso-ens-kaggle" / "bundle.json").read_text())["member_bundle_sha256"]
    r = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "lin,mlp", *common])
    assert r.exit_code == 0, r.output
    new_ens = json.loads((models / "loso-ens-kaggle" / "bundle.json").read_text())["member_bundle_sha256"]
    assert new_ens[0] != old_ens[0] and new_ens[1] == old_ens[1]
    assert not any(p.name.startswith((".previous-", ".tmp-")) for p in models.iterdir())
    other = runner.invoke(main, ["generalise", "--recipe", "ens", "--ensemble-of", "mlp,lin", *common])
    assert other.exit_code != 0 and "exists with other members" in other.output

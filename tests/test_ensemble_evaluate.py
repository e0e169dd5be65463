"""Ensembles and evaluation on the session's two synthetic bundles (one shared split, conftest.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from skinlesion.bundle.format import BundleError
from skinlesion.training.train import train

from conftest import synth_train_config


@pytest.fixture(scope="module")
def two_bundles(synth_root, synth_bundles):
    a, b = synth_bundles
    return synth_root, a.parent, a, b


def test_ensemble_bundle_loads_in_predictor(two_bundles):
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.ensemble import make_ensemble

    root, out, a, b = two_bundles
    ens = make_ensemble([a, b], run_id="ens")
    meta = json.loads((ens / "bundle.json").read_text())
    assert meta["kind"] == "ensemble" and meta["members"] == ["../a", "../b"]
    pred = Predictor.from_bundle(ens)
    img = next((root / "test" / "malignant").glob("*.jpg"))
    pa, pb = Predictor.from_bundle(a).predict(img), Predictor.from_bundle(b).predict(img)
    pe = pred.predict(img)
    assert 0.0 <= pe.probability <= 1.0 and pe.synthetic
    # the ensemble sits between its (re-calibrated) members' opinions, up to its own temperature
    lo, hi = sorted([pa.probability, pb.probability])
    assert lo - 0.25 <= pe.probability <= hi + 0.25


def test_ensemble_refuses_different_splits(two_bundles, tmp_path):
    from skinlesion.training.ensemble import make_ensemble

    root, out, a, _ = two_bundles
    c = train(synth_train_config(root, tmp_path, head_epochs=3, splits_file=str(tmp_path / "other.csv"),
                                 val_fraction=0.3))
    with pytest.raises(BundleError, match="different"):
        make_ensemble([a, c], out_dir=tmp_path)
    with pytest.raises(BundleError, match="at least two"):
        make_ensemble([a])


def test_ensemble_is_served_with_its_members_tta_and_refuses_a_mix(two_bundles, tmp_path):
    """Members fitted with dihedral TTA make an ensemble served with TTA (its threshold was fitted on
    TTA probabilities); a mix is refused. The cached-feature scorer of LOSO equals the served ensemble."""
    from skinlesion.evaluation.generalise import cached_probabilities
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.ensemble import make_ensemble

    root, out, a, _ = two_bundles
    shared = dict(splits_file=str(out / "splits.csv"), tta=True, head_epochs=3)
    t1 = train(synth_train_config(root, tmp_path, run_id="t1", head_units=0, **shared))
    t2 = train(synth_train_config(root, tmp_path, run_id="t2", **shared))
    with pytest.raises(BundleError, match="TTA"):
        make_ensemble([a, t1], out_dir=tmp_path)
    ens = make_ensemble([t1, t2], out_dir=tmp_path, run_id="ens-tta")
    served = Predictor.from_bundle(ens)
    assert served.default_tta
    files = sorted((root / "test").rglob("*.jpg"))[:6] + [tmp_path / "missing.jpg"]
    slow = served.predict_batch(files)
    fast = cached_probabilities(ens, files)
    assert fast is not None and fast["error"].iloc[-1] and np.isnan(fast["probability"].iloc[-1])
    assert np.allclose(fast["probability"][:-1], slow["probability"][:-1], atol=1e-4)


def test_evaluate_official_external_and_single_class(two_bundles, tmp_path):
    import shutil

    from skinlesion.evaluation.evaluate import evaluate_bundle, format_results, save_results

    root, _, a, _ = two_bundles
    ext = tmp_path / "ext"
    shutil.copytree(root / "test" / "benign", ext / "benign")  # one class only: AUC undefined
    (ext / "benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    results, preds = evaluate_bundle(a, external=(str(ext),), n_resamples=200, progress=False)
    assert set(results["sets"]) == {"test", "external:ext"}
    t = results["sets"]["test"]
    assert t["n"] == len(list((root / "test").rglob("*.jpg"))) and 0.0 <= t["at_threshold"]["roc_auc"]["value"] <= 1.0
    e = results["sets"]["external:ext"]
    assert e["n_unreadable"] == 1
    assert np.isnan(e["at_threshold"]["roc_auc"]["value"])
    assert e["at_threshold"]["specificity"]["value"] >= 0.0
    assert any("one class" in n for n in e["notes"])
    text = format_results(results)
    assert "SYNTHETIC" in text and "roc_auc n/a" in text
    out = save_results(results, preds, tmp_path / "rep")
    assert json.loads((out / "metrics.json").read_text())["bundle"] == "a"
    assert (out / "predictions_external_ext.csv").is_file()
    # Evaluated again into the same folder without that set: its old predictions go with it.
    save_results(results, {"test": preds["test"]}, out)
    assert sorted(p.name for p in out.glob("predictions_*.csv")) == ["predictions_test.csv"]


def test_an_ensemble_of_one_bundle_twice_is_refused(two_bundles):
    from skinlesion.training.ensemble import make_ensemble

    _, _, a, _ = two_bundles
    with pytest.raises(BundleError, match="more than once"):
        make_ensemble([a, a.parent / ".." / a.parent.name / a.name], run_id="twice")


def test_two_external_folders_of_one_name_are_refused(two_bundles, tmp_path):
    import shutil

    from skinlesion.data.datasets import DataError
    from skinlesion.evaluation.evaluate import evaluate_bundle

    root, _, a, _ = two_bundles
    for parent in ("site1", "site2"):
        shutil.copytree(root / "test", tmp_path / parent / "x")
    with pytest.raises(DataError, match="both be called 'external:x'"):
        evaluate_bundle(a, external=(str(tmp_path / "site1" / "x"), str(tmp_path / "site2" / "x")), progress=False)


def test_a_model_card_refuses_another_models_report(two_bundles, tmp_path):
    from skinlesion.evaluation.common import ReportError
    from skinlesion.evaluation.evaluate import evaluate_bundle, save_results
    from skinlesion.evaluation.model_card import model_card

    _, _, a, b = two_bundles
    report = save_results(*evaluate_bundle(a, n_resamples=50, progress=False), tmp_path / "rep-a")
    assert "a" in model_card(a, report)
    with pytest.raises(ReportError, match="evaluation of 'a', not of 'b'"):
        model_card(b, report)
    (report / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="not a JSON object"):
        model_card(a, report)


def test_tta_changes_little_and_stays_valid(two_bundles):
    from skinlesion.serving.inference import Predictor

    root, _, a, _ = two_bundles
    pred = Predictor.from_bundle(a)
    img = next((root / "test" / "benign").glob("*.jpg"))
    p1, p8 = pred.predict(img).probability, pred.predict(img, tta=True).probability
    assert 0.0 <= p8 <= 1.0 and abs(p1 - p8) < 0.5

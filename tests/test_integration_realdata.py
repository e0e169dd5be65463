"""Real-data integration: efficientnet_lite0 stage 1 on a seeded subset of the Kaggle dataset.

Skips when the dataset is absent; with CI=true a missing dataset is a failure instead.
"""
from __future__ import annotations

import os

import pytest

from skinlesion import config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _real_root():
    root = config.resolve_data_dir(None) if os.environ.get("SKINLESION_DATA_DIR") else config.shared_dataset()
    if (root / "train" / "benign").is_dir():
        return root
    msg = f"real dataset not found at {root} (set SKINLESION_DATA_DIR or place ../shared/data/melanoma_cancer_dataset)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must run the real-data tests: " + msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from skinlesion.evaluation.evaluate import evaluate_bundle
    from skinlesion.training.train import TrainConfig, train

    root = _real_root()
    out = tmp_path_factory.mktemp("real_models")
    path = train(TrainConfig(backbone="efficientnet_lite0", data_dir=str(root), max_train_per_class=500,
                             max_eval_per_class=200, out_dir=str(out), progress=False,
                             splits_file=str(out / "splits.csv")))
    results, preds = evaluate_bundle(path, n_resamples=500, progress=False)
    return path, results, preds


def test_subset_sizes(real_run):
    path, results, _ = real_run
    import json

    meta = json.loads((path / "bundle.json").read_text())
    assert meta["training"]["n_train"] >= 1000
    assert results["sets"]["test"]["n"] >= 400
    assert meta["synthetic"] is False


def test_test_roc_auc_at_least_090(real_run):
    _, results, _ = real_run
    auc = results["sets"]["test"]["at_threshold"]["roc_auc"]["value"]
    assert auc >= 0.90, f"test ROC AUC {auc:.3f} < 0.90"


def test_real_dermoscopic_images_mostly_in_distribution(real_run):
    _, _, preds = real_run
    ood_rate = preds["test"]["out_of_distribution"].mean()
    assert ood_rate <= 0.05, f"{ood_rate:.1%} of real test images flagged out-of-distribution"


def test_everyday_photos_flagged_out_of_distribution(real_run):
    import skimage.data

    from skinlesion.serving.inference import Predictor

    path, _, _ = real_run
    predictor = Predictor.from_bundle(path)
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        r = predictor.predict(getattr(skimage.data, name)())
        assert r.out_of_distribution, f"skimage.data.{name} was not flagged (distance ratio {r.ood_distance:.2f})"

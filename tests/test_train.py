"""Training end to end on tiny synthetic data, and the bad-input cases of training.

The trained bundle is the session's shared ``synth_bundles`` "a" (conftest.py).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from skinlesion.data.datasets import DataError
from skinlesion.training.train import train

from conftest import synth_train_config


def _cfg(root, out, **kw):
    return synth_train_config(root, out, **kw)


@pytest.fixture(scope="module")
def trained(synth_bundles):
    return synth_bundles[0]


def test_bundle_contents(trained):
    meta = json.loads((trained / "bundle.json").read_text())
    assert meta["synthetic"] is True, "training on synthetic data must be labelled SYNTHETIC"
    assert meta["backbone"] == "efficientnet_lite0" and meta["input_size"] == 64
    assert meta["last_conv_layer"] == "lite_top_activation"
    assert 0.0 <= meta["decision"]["band_low"] <= meta["decision"]["threshold"] <= meta["decision"]["band_high"] <= 1.0
    assert meta["calibration"]["temperature"] > 0
    for f in ("model.keras", "history.csv", "splits.csv", "val_predictions.csv", "ood.npz", "train.log"):
        assert (trained / f).is_file(), f
    hist = pd.read_csv(trained / "history.csv")
    assert {"val_auc", "loss"} <= set(hist.columns)
    assert "SYNTHETIC" in (trained / "train.log").read_text()


def test_saved_model_reproduces_validation_predictions(trained):
    from skinlesion.bundle.format import load
    from skinlesion.data.intake import load_for_model

    b = load(trained)
    val = pd.read_csv(trained / "val_predictions.csv")
    root = b.meta.training.data_dir
    x = np.stack([load_for_model(f"{root}/{p}", 64) for p in val["path"][:8]])
    p = b.model.predict(x, verbose=0).ravel()
    np.testing.assert_allclose(p, val["prob"][:8], atol=1e-4)


def test_predictor_on_bundle(trained):
    from skinlesion.serving.inference import Predictor

    pred = Predictor.from_bundle(trained)
    root = pred.meta.training.data_dir
    r = pred.predict(f"{root}/test/malignant/" + sorted(__import__("os").listdir(f"{root}/test/malignant"))[0])
    assert 0.0 <= r.probability <= 1.0
    assert r.decision in {"suspicious", "benign-appearing", "uncertain — refer"}
    assert "SYNTHETIC" in r.summary and "not a medical device" in r.summary


@pytest.mark.slow
def test_fine_tune_smoke(synth_root, tmp_path):
    path = train(_cfg(synth_root, tmp_path, fine_tune=10, fine_tune_epochs=1, batch_size=16))
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["stage"].startswith("fine-tuned")
    assert "fine_tune" in set(pd.read_csv(path / "history.csv")["stage"])


@pytest.mark.slow
def test_a_training_does_not_depend_on_what_ran_before_it(synth_root, tmp_path):
    """`skinlesion run` trains two models in one process and `generalise` one per fold: each must be
    the model the same configuration gives alone in a fresh process (every stochastic stage is
    re-seeded; augmentation draws are taken in a fixed order)."""
    cfg = _cfg(synth_root, tmp_path / "fresh", run_id="b", head_units=0, fine_tune=10, fine_tune_epochs=1,
               batch_size=16, augment=("dihedral", "colour", "scale", "blur"))
    code = ("import json, sys; from skinlesion.training.train import TrainConfig, train; "
            "train(TrainConfig(**json.loads(sys.argv[1])))")
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict())], check=True, capture_output=True)
    out = tmp_path / "after"
    train(_cfg(synth_root, out, run_id="a", views=("id", "fh")))
    again = train(dataclasses.replace(cfg, out_dir=str(out), splits_file=str(out / "splits.csv")))
    fresh = pd.read_csv(tmp_path / "fresh" / "b" / "val_predictions.csv")
    assert np.allclose(pd.read_csv(again / "val_predictions.csv")["prob"], fresh["prob"], atol=1e-6)


@pytest.mark.slow
def test_unreadable_images_are_skipped_not_fatal(synth_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synth_root, root)
    bad = root / "train" / "benign" / "zz_truncated.jpg"
    bad.write_bytes((root / "train" / "benign").glob("*.jpg").__next__().read_bytes()[:300])
    (root / "train" / "malignant" / "readme.txt").write_text("not an image")
    with pytest.warns(UserWarning):
        path = train(_cfg(root, tmp_path))
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["training"]["skipped_unreadable"] == 1
    assert "zz_truncated.jpg" in (path / "train.log").read_text()


def test_one_class_dataset_refused(tmp_path, synth_root):
    root = tmp_path / "one"
    shutil.copytree(synth_root / "train" / "benign", root / "train" / "benign")
    with pytest.raises(DataError, match="missing the class folder"):
        train(_cfg(root, tmp_path))


def test_too_few_training_images_refused_before_training(tmp_path, synth_root):
    """A 4-per-class folder trains a head but cannot give out-of-distribution statistics: say so first."""
    root = tmp_path / "tiny"
    for split in ("train", "test"):
        for cls in ("benign", "malignant"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((synth_root / split / cls).iterdir())[:5]:
                shutil.copy(f, root / split / cls / f.name)
    with pytest.raises(DataError, match="need at least 10"):
        train(_cfg(root, tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*/bundle.json"))


def test_empty_data_dir_refused(tmp_path):
    with pytest.raises(DataError, match="no dataset at"):
        train(_cfg(tmp_path / "missing", tmp_path))


def test_unknown_backbone_refused(tmp_path, synth_root):
    from skinlesion.models.backbones import BackboneError

    with pytest.raises(BackboneError, match="unknown backbone"):
        train(_cfg(synth_root, tmp_path, backbone="alexnet"))
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())

"""Backbone builders: flat graphs, preprocessing inside the model, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from skinlesion.models import backbones
from skinlesion.models.backbones import BackboneError


def test_unknown_backbone():
    with pytest.raises(BackboneError, match="unknown backbone 'vgg99'; choose one of efficientnet_lite0"):
        backbones.get_spec("vgg99")


@pytest.mark.parametrize("mode,app", [("caffe", "resnet"), ("torch", "densenet"), ("tf", "inception_v3")])
def test_preprocess_layer_matches_keras_applications(mode, app):
    import importlib

    from skinlesion.models.layers import ImagePreprocess

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ref = importlib.import_module(f"keras.applications.{app}").preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(ImagePreprocess(mode)(x)), ref, rtol=1e-5, atol=1e-4)


def test_classifier_is_flat_and_loads_in_safe_mode(tmp_path):
    import keras

    full, head = backbones.build_classifier("efficientnet_lite0", weights=None, input_size=64, head_units=8)
    assert not any(isinstance(l, keras.Model) for l in full.layers), "backbone must not be a nested model"
    names = [l.name for l in full.layers]
    assert "lite_top_activation" in names and "features" in names and names[-1] == "malignant_probability"
    # head layers are shared: the head model and the full model hold the same weights
    assert head.get_layer("malignant_probability") is full.get_layer("malignant_probability")
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    full.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(full.predict(x, verbose=0), again.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_head_on_features_equals_full_model():
    import keras

    full, head = backbones.build_classifier("efficientnet_lite0", weights="imagenet", input_size=64, head_units=0)
    feat = keras.Model(full.input, full.get_layer("features").output)
    x = np.random.default_rng(2).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(head.predict(feat.predict(x, verbose=0), verbose=0), full.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_keras_app_local_weights_file(tmp_path):
    """ResNet50 with a local no-top weights file (the offline path for Keras backbones)."""
    import keras

    stock = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    stock.layers[2].set_weights([w + 1.0 for w in stock.layers[2].get_weights()])  # recognisable
    wfile = tmp_path / "resnet50_notop.weights.h5"
    stock.save_weights(wfile)
    model = backbones.build_feature_extractor("resnet50", weights=wfile, input_size=64)
    name = stock.layers[2].name
    np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], stock.layers[2].get_weights()[0])


def test_imagenet_download_failure_is_clear(monkeypatch):
    real = backbones._keras_app(backbones.get_spec("densenet121"))

    def offline(*a, weights=None, **k):
        if weights == "imagenet":
            raise OSError("URL fetch failure: no network")
        return real(*a, weights=weights, **k)

    monkeypatch.setattr(backbones, "_keras_app", lambda spec: offline)
    with pytest.raises(BackboneError, match="could not be downloaded .*--weights PATH"):
        backbones.build_feature_extractor("densenet121", weights="imagenet", input_size=64)


def test_missing_weights_file():
    with pytest.raises(BackboneError, match="weights file not found"):
        backbones.build_feature_extractor("resnet50", weights="/nonexistent.h5", input_size=64)


def test_freeze_keeps_batchnorm_frozen():
    import keras

    full, _ = backbones.build_classifier("efficientnet_lite0", weights=None, input_size=64)
    backbones.freeze_for_fine_tuning(full, 20)
    bns = [l for l in full.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    assert full.get_layer("malignant_probability").trainable
    assert not full.get_layer("lite_stem_conv").trainable

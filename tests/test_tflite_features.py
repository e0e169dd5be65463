"""Bulk feature extraction through a TFLite twin of the Keras extractor: same features, or Keras."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skinlesion import config
from skinlesion.models.features import TFLITE_MIN_PASSES, _runner, extract_features


@pytest.fixture(scope="module")
def extractor():
    from skinlesion.models.backbones import build_feature_extractor

    return build_feature_extractor("efficientnet_lite0", weights=None, input_size=64, harmonise=48)


def _images(tmp_path, n=6, side=80):
    files = []
    for i in range(n):
        f = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(f)
        files.append(f)
    return files


def test_twin_computes_the_keras_features(extractor):
    from skinlesion.models.tflite_features import tflite_features

    twin = tflite_features(extractor)
    assert twin.input_shape == extractor.input_shape and twin.output_shape == extractor.output_shape
    rng = np.random.default_rng(0)
    for n in (3, 5, 3):  # the interpreter is re-sized between batch sizes
        x = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        want = np.asarray(extractor.predict_on_batch(x.astype("float32")))
        got = twin.predict_on_batch(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert twin.predict_on_batch(x[:0]).shape == (0, extractor.output_shape[-1])


def test_twin_is_converted_once_per_model_and_weights(extractor):
    from skinlesion.models.backbones import build_feature_extractor
    from skinlesion.models.tflite_features import tflite_features

    model = build_feature_extractor("efficientnet_lite0", weights=None, input_size=32)
    first = tflite_features(model)
    assert tflite_features(model) is first
    layer = next(lyr for lyr in model.layers if lyr.weights)
    layer.set_weights([w + 0.1 for w in layer.get_weights()])
    assert tflite_features(model) is not first  # stale weights are never served


def test_backend_choice(monkeypatch, extractor):
    from skinlesion.models.tflite_features import TFLiteFeatureModel

    monkeypatch.delenv("SKINLESION_FEATURE_BACKEND", raising=False)
    assert _runner(extractor, TFLITE_MIN_PASSES - 1) is extractor  # small job: not worth converting
    assert isinstance(_runner(extractor, TFLITE_MIN_PASSES), TFLiteFeatureModel)
    monkeypatch.setenv("SKINLESION_FEATURE_BACKEND", "keras")
    assert _runner(extractor, 10**6) is extractor
    monkeypatch.setenv("SKINLESION_FEATURE_BACKEND", "tflite")
    assert isinstance(_runner(extractor, 1), TFLiteFeatureModel)
    monkeypatch.setenv("SKINLESION_FEATURE_BACKEND", "gpu")
    with pytest.raises(ValueError, match="SKINLESION_FEATURE_BACKEND must be one of auto, keras, tflite"):
        config.feature_backend()


def test_extract_features_agree_across_backends(tmp_path, monkeypatch, extractor):
    files = _images(tmp_path)
    out = {}
    for backend in ("keras", "tflite"):
        monkeypatch.setenv("SKINLESION_FEATURE_BACKEND", backend)
        feats, ok, errors = extract_features(extractor, files, backbone="b", weights_tag=None,
                                             views=("id", "r90", "zo"), batch_size=4, progress=False)
        assert ok.all() and not errors
        out[backend] = feats
    np.testing.assert_allclose(out["tflite"], out["keras"], rtol=1e-4, atol=1e-4 * np.abs(out["keras"]).max())


def test_a_model_that_cannot_be_converted_falls_back_to_keras(tmp_path, monkeypatch):
    class NotKeras:
        name = "plain"
        input_shape = (None, 32, 32, 3)
        output_shape = (None, 3)
        weights: list = []

        def predict_on_batch(self, x):
            return x.mean(axis=(1, 2)).astype(np.float32)

    monkeypatch.setenv("SKINLESION_FEATURE_BACKEND", "tflite")
    with pytest.warns(UserWarning, match="TFLite conversion of plain failed, features come from Keras"):
        feats, ok, _ = extract_features(NotKeras(), _images(tmp_path, n=2), backbone="x", weights_tag=None,
                                        progress=False)
    assert ok.all() and feats.shape == (2, 1, 3)


def test_the_conversion_does_not_log_its_temporary_folder():
    # TensorFlow's logger announces the SavedModel it writes to /tmp during conversion; in a notebook
    # that line (a path of this machine) would land in the committed outputs.
    import logging

    import tensorflow as tf

    from skinlesion.models.tflite_features import TFLiteFeatureModel

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = tf.get_logger()
    level, keep = log.level, Keep()
    log.setLevel(logging.INFO)
    log.addHandler(keep)
    try:
        model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.GlobalAveragePooling2D()])
        TFLiteFeatureModel(model)
        assert log.level == logging.INFO  # restored
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    assert not [r for r in records if "Assets written" in r], records


def test_quiet_tensorflow_restores_the_level_when_the_block_raises():
    import logging

    import tensorflow as tf

    from skinlesion.models.quiet import quiet_tensorflow

    log = tf.get_logger()
    before = log.level
    with pytest.raises(RuntimeError), quiet_tensorflow(logging.ERROR):
        assert log.level == logging.ERROR
        raise RuntimeError("inside")
    assert log.level == before

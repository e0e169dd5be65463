"""ResolutionHarmonise: the in-graph low-pass that gives every source the same detail."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from layer_helpers import safe_mode_round_trip

from skinlesion.models.backbones import feature_key, front_end
from skinlesion.models.resolution import ResolutionHarmonise, antialias_sigma, gaussian_kernel


def _run(x: np.ndarray, size: int = 150) -> np.ndarray:
    return np.asarray(ResolutionHarmonise(size)(x))


def _lesion_like(side: int = 224, seed: int = 0) -> np.ndarray:
    """A smooth dark blob on skin plus fine texture (the detail a low-resolution source lacks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    blob = np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.05)
    base = 200 - 120 * blob[..., None] * np.array([1.0, 1.2, 1.3])
    texture = rng.normal(0, 25, (side, side, 3))
    return np.clip(base + texture, 0, 255)[None].astype("float32")


def test_shape_dtype_and_constant_image():
    x = np.full((2, 224, 224, 3), 117, dtype="uint8")
    y = _run(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, 117.0, atol=1e-3)  # mirror padding: no dark frame


def test_input_at_or_under_the_size_passes_through():
    x = _lesion_like(side=96)
    np.testing.assert_allclose(_run(x, size=96), x, atol=1e-4)
    np.testing.assert_allclose(_run(x, size=150), x, atol=1e-4)


def test_removes_detail_above_the_size_and_keeps_the_lesion():
    checker = (np.indices((224, 224)).sum(axis=0) % 2 * 255.0)[None, ..., None].repeat(3, axis=-1)
    assert _run(checker).std() < 0.1 * checker.std()  # one-pixel detail is gone
    x = _lesion_like()
    y = _run(x)
    centre, skin = y[0, 100, 112].mean(), y[0, 10, 10].mean()
    assert skin - centre > 80  # the dark lesion on light skin survives
    assert y.std() < x.std()


def test_losing_detail_above_the_size_changes_little():
    """The point of the layer: an image downsized to the harmonised size and stretched back
    looks to the model almost like the original, far more than without the layer."""
    import tensorflow as tf

    x = _lesion_like(seed=3)
    degraded = tf.image.resize(tf.image.resize(x, (150, 150), antialias=True), (224, 224)).numpy()
    raw_gap = np.abs(degraded - x).mean()
    harmonised_gap = np.abs(_run(degraded) - _run(x)).mean()
    assert harmonised_gap < 0.2 * raw_gap


@pytest.mark.parametrize("turns,flip", [(1, False), (2, False), (0, True), (3, True)])
def test_equivariant_to_quarter_turns_and_flips(turns, flip):
    x = _lesion_like(seed=5)

    def d8(a):
        a = np.rot90(a, turns, axes=(1, 2))
        return a[:, :, ::-1] if flip else a

    np.testing.assert_allclose(_run(np.ascontiguousarray(d8(x))), d8(_run(x)), atol=1e-2)


def test_antialias_sigma_and_kernel():
    assert antialias_sigma(1.0) == 0.0 and antialias_sigma(3.0) == 1.5
    k = gaussian_kernel(1.0)
    assert len(k) == 7 and np.isclose(k.sum(), 1.0) and np.allclose(k, k[::-1])
    assert np.array_equal(gaussian_kernel(0.0), np.array([0, 1, 0], dtype=np.float32))


@pytest.mark.parametrize("size", [0, 7, 1.5, True, "150", None])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be an integer"):
        ResolutionHarmonise(size)


def test_needs_static_height_and_width():
    with pytest.raises(ValueError, match="static image height and width"):
        ResolutionHarmonise(150)(keras.Input((None, None, 3)))


def test_safe_mode_save_load_round_trip(tmp_path):
    batch = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("uint8")
    loaded = safe_mode_round_trip(ResolutionHarmonise(40, name="resolution"), batch, tmp_path)
    assert isinstance(loaded.get_layer("resolution"), ResolutionHarmonise)
    assert loaded.get_layer("resolution").size == 40


def test_converts_to_tflite_builtins():
    """The layer must not stop a bundle from exporting (builtin ops only, same output)."""
    import tensorflow as tf

    inp = keras.Input((48, 48, 3), batch_size=1)
    model = keras.Model(inp, ResolutionHarmonise(30)(inp))
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interp = tf.lite.Interpreter(model_content=conv.convert())
    interp.allocate_tensors()
    x = np.random.default_rng(1).uniform(0, 255, (1, 48, 48, 3)).astype("float32")
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model.predict_on_batch(x), atol=1e-3)


def test_front_end_and_feature_key():
    assert front_end({}) == {"colour_constancy": False, "harmonise": None}
    fe = front_end({"colour_constancy": True, "harmonise": 150})
    assert fe == {"colour_constancy": True, "harmonise": 150}
    assert feature_key("efficientnet_lite0", **fe) == "efficientnet_lite0+sog+res150"
    assert feature_key("efficientnet_lite0") == "efficientnet_lite0"
    assert feature_key("efficientnet_lite0", **front_end({"harmonise": 0})) == "efficientnet_lite0"

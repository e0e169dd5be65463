"""The Shades of Gray colour-constancy layer: what it does to pixels, and that it saves safely."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from layer_helpers import safe_mode_round_trip

from skinlesion.models.colour import ShadesOfGray


def _lesion_like(seed: int = 0, size: int = 32) -> np.ndarray:
    """A textured RGB image in 0..255 with a neutral (grey) illuminant on average."""
    rng = np.random.default_rng(seed)
    grey = rng.uniform(40, 200, size=(size, size, 1))
    return np.clip(grey + rng.normal(0, 10, size=(size, size, 3)), 0, 255).astype("float32")


def _minkowski(img: np.ndarray, p: float = 6.0) -> np.ndarray:
    return np.mean(img.astype(np.float64) ** p, axis=(-3, -2)) ** (1 / p)


def _run(x: np.ndarray, **kw) -> np.ndarray:
    return keras.ops.convert_to_numpy(ShadesOfGray(**kw)(x))


def test_colour_cast_is_neutralised():
    img = _lesion_like()
    cast = np.clip(img * np.array([1.3, 1.0, 0.7], "float32"), 0, 255)
    before = _minkowski(cast)
    assert before.max() / before.min() > 1.5
    out = _run(cast[None])[0]
    after = _minkowski(out)
    # The corrected illuminant is grey (up to the clipping of a few bright red pixels) ...
    assert after.max() / after.min() < 1.02
    # ... at the brightness of the cast illuminant's mean (normalisation to the illuminant's mean).
    np.testing.assert_allclose(after.mean(), before.mean(), rtol=0.02)


def test_two_casts_of_one_scene_agree_after_correction():
    img = _lesion_like(1) * 0.8  # headroom so no channel clips
    warm = img * np.array([1.1, 1.0, 0.85], "float32")
    cold = img * np.array([0.9, 1.0, 1.15], "float32")
    a, b = _run(np.stack([warm, cold]))
    # A pure per-channel cast is removed exactly, up to one overall brightness factor.
    ratio = a / np.maximum(b, 1e-3)
    mask = b > 5
    assert np.std(ratio[mask]) < 0.01


def test_grey_image_is_unchanged():
    img = np.repeat(_lesion_like(2)[..., :1], 3, axis=-1)
    np.testing.assert_allclose(_run(img[None])[0], img, atol=1e-3)
    flat = np.full((1, 8, 8, 3), 117.0, "float32")
    np.testing.assert_allclose(_run(flat), flat, atol=1e-3)


def test_each_image_is_corrected_on_its_own():
    a = _lesion_like(3) * np.array([1.2, 1.0, 0.8], "float32")
    b = _lesion_like(4) * np.array([0.8, 1.0, 1.2], "float32")
    both = _run(np.stack([a, b]))
    np.testing.assert_allclose(both[0], _run(a[None])[0], atol=1e-3)
    np.testing.assert_allclose(both[1], _run(b[None])[0], atol=1e-3)
    # An unbatched image gives the same answer as a batch of one.
    np.testing.assert_allclose(_run(a), _run(a[None])[0], atol=1e-3)


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int32"])
def test_dtype_and_shape(dtype):
    x = np.clip(_lesion_like(5, 20)[None] * np.array([1.1, 1.0, 0.9]), 0, 255).astype(dtype)
    x = np.concatenate([x, x[:, ::-1]])
    out = ShadesOfGray()(x)
    assert tuple(out.shape) == (2, 20, 20, 3)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    y = keras.ops.convert_to_numpy(out)
    assert y.min() >= 0.0 and y.max() <= 255.0


def test_edge_cases_stay_finite():
    black = np.zeros((1, 8, 8, 3), "uint8")
    np.testing.assert_array_equal(_run(black), 0.0)
    red = np.zeros((1, 8, 8, 3), "float32")
    red[..., 0] = 200.0
    out = _run(red)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[..., 1:], 0.0)
    white = np.full((1, 8, 8, 3), 255, "uint8")
    np.testing.assert_allclose(_run(white), 255.0, atol=1e-3)
    # Large p does not overflow float32 (values are normalised before the power).
    big = _run(_lesion_like(6)[None] * np.array([1.2, 1.0, 0.8], "float32"), p=40)
    assert np.all(np.isfinite(big))


def test_max_gain_bounds_the_amplification():
    img = _lesion_like(7) * 0.5
    img[..., 2] *= 0.05  # almost no blue
    capped = _run(img[None], max_gain=2.0)[0]
    assert capped[..., 2].max() <= 2.0 * img[..., 2].max() + 1e-3
    free = _run(img[None], max_gain=None)[0]
    assert free[..., 2].max() > capped[..., 2].max()


def test_p1_is_grey_world():
    img = _lesion_like(8) * np.array([1.2, 1.0, 0.8], "float32")
    out = _run(img[None], p=1.0, max_gain=None)[0]
    means = out.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(means, means.mean(), rtol=1e-3)


@pytest.mark.parametrize("kw", [{"p": 0.5}, {"p": float("inf")}, {"max_gain": 0.5}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        ShadesOfGray(**kw)


def test_config_round_trip():
    layer = ShadesOfGray(p=4.0, max_gain=3.0, name="sog")
    clone = ShadesOfGray.from_config(layer.get_config())
    assert (clone.p, clone.max_gain, clone.name) == (4.0, 3.0, "sog")
    assert keras.saving.get_registered_name(ShadesOfGray) == "skinlesion>ShadesOfGray"


def test_graph_mode():
    import tensorflow as tf

    layer = ShadesOfGray()
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    x = np.clip(_lesion_like(9), 0, 255).astype("uint8")[None]
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), _run(x), atol=1e-4)


def test_safe_mode_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    batch = (rng.uniform(0, 255, (3, 16, 16, 3)) * np.array([1.0, 0.8, 0.6])).astype("uint8")
    loaded = safe_mode_round_trip(ShadesOfGray(p=6.0, name="colour_constancy"), batch, tmp_path)
    assert isinstance(loaded.get_layer("colour_constancy"), ShadesOfGray)
    assert loaded.get_layer("colour_constancy").p == 6.0

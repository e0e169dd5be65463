"""Tests for skinlesion.explain on a tiny hand-wired CNN that detects a bright square."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from skinlesion.explain import common, gradcam, overlay, sanity, tfkv  # noqa: E402

SIZE = 32
LAYER = "last_conv_act"


def _tiny_model() -> keras.Model:
    """Input 0..255 -> Rescaling -> 2 convs -> "last_conv_act" -> GAP -> Dense(1, sigmoid).

    Hand-set weights: channel 0 fires on bright pixels (the "lesion" square) and pushes
    P(malignant) up; channel 1 fires on any non-black content and pushes it down a little.
    """
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv2")(x)
    x = keras.layers.Activation("relu", name=LAYER)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="malignant_probability")(x)
    model = keras.Model(inputs, outputs, name="tiny")

    k1 = np.full((3, 3, 3, 2), 1.0 / 27.0, np.float32)  # 3x3 mean brightness
    model.get_layer("conv1").set_weights([k1, np.array([-0.6, -0.05], np.float32)])
    k2 = np.zeros((3, 3, 2, 2), np.float32)
    k2[1, 1, 0, 0] = k2[1, 1, 1, 1] = 1.0  # pass both channels through
    model.get_layer("conv2").set_weights([k2, np.zeros(2, np.float32)])
    model.get_layer("malignant_probability").set_weights(
        [np.array([[120.0], [-12.0]], np.float32), np.array([1.4], np.float32)]
    )
    return model


def _image(quadrant: tuple[int, int] | None = (0, 0)) -> np.ndarray:
    """Dim noisy background; a bright 8x8 square in the given (row, col) quadrant."""
    image = np.random.default_rng(0).uniform(30, 90, (SIZE, SIZE, 3))
    if quadrant is not None:
        r, c = (q * SIZE // 2 + 4 for q in quadrant)
        image[r : r + 8, c : c + 8] = 250
    return image.astype(np.uint8)


def _quadrant_mass(heatmap: np.ndarray, quadrant: tuple[int, int]) -> float:
    h = SIZE // 2
    r, c = quadrant
    return float(heatmap[r * h : (r + 1) * h, c * h : (c + 1) * h].sum() / heatmap.sum())


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return _tiny_model()


def test_tiny_model_predicts_malignant_only_with_the_square(model):
    p_square = float(model(_image()[None].astype(np.float32))[0, 0])
    p_plain = float(model(_image(None)[None].astype(np.float32))[0, 0])
    assert p_square > 0.5 > p_plain


def test_find_last_conv_layer(model):
    assert common.find_last_conv_layer(model) == LAYER


@pytest.mark.parametrize("quadrant", [(0, 0), (1, 1)])
def test_gradcam_localises_the_square(model, quadrant):
    heatmap = gradcam.compute_heatmap(model, _image(quadrant), "gradcam", layer_name=LAYER)
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert tuple(int(i) // (SIZE // 2) for i in peak) == quadrant
    assert _quadrant_mass(heatmap, quadrant) > 0.8


def test_default_layer_and_predicted_target(model):
    image = _image()
    default = gradcam.compute_heatmap(model, image)  # gradcam, last conv, predicted class
    malignant = gradcam.compute_heatmap(model, image, target="malignant", layer_name=LAYER)
    np.testing.assert_allclose(default, malignant, atol=1e-6)
    # With a threshold above P(malignant) the predicted class is benign, a different map.
    benign = gradcam.compute_heatmap(model, image, target="predicted", threshold=0.99)
    assert not np.allclose(benign, malignant, atol=1e-3)


@pytest.mark.parametrize("method", common.METHODS)
def test_every_method_returns_a_normalised_map(model, method):
    kwargs = {"seed": 0, "smooth_samples": 5} if method == "smoothgrad" else {}
    heatmap = gradcam.compute_heatmap(model, _image(), method, layer_name=LAYER, **kwargs)
    assert heatmap.shape == (SIZE, SIZE)
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    # Every method should put more of the map on the square's quadrant than chance (0.25).
    assert _quadrant_mass(heatmap, (0, 0)) > 0.4


def test_two_logit_head_reproduces_the_sigmoid(model):
    images = np.stack([_image(), _image(None)]).astype(np.float32)
    p = keras.ops.convert_to_numpy(model(images))[:, 0]
    logits = keras.ops.convert_to_numpy(tfkv.two_logit_model(model)(images))
    softmax = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    np.testing.assert_allclose(softmax, np.stack([1 - p, p], axis=1), atol=1e-6)


def test_scorecam_weights_use_the_sigmoid_probability(model):
    # Plain tf-keras-vis softmaxes the single sigmoid unit to 1.0, which makes the "benign"
    # score 1 - 1 = 0 for every channel and the map all zeros; the two-logit head fixes that.
    heatmap = gradcam.compute_heatmap(
        model, _image(), "scorecam", layer_name=LAYER, target="benign"
    )
    assert np.ptp(heatmap) > 0.5


def test_smoothgrad_seed_is_reproducible_and_leaves_global_rng_alone(model):
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    a = gradcam.compute_heatmap(model, _image(), "smoothgrad", smooth_samples=3, seed=7)
    assert np.random.random() == expected_next
    b = gradcam.compute_heatmap(model, _image(), "smoothgrad", smooth_samples=3, seed=7)
    np.testing.assert_array_equal(a, b)


def test_black_image_gives_an_all_zero_map(model):
    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    heatmap = gradcam.compute_heatmap(model, black, target="malignant")
    assert heatmap.shape == (SIZE, SIZE) and not heatmap.any()


def test_unknown_method_raises(model):
    with pytest.raises(ValueError, match="Unknown method"):
        gradcam.compute_heatmap(model, _image(), "lime")


def test_unknown_layer_lists_candidates(model):
    with pytest.raises(ValueError, match="no layer named 'nope'.*last_conv_act"):
        gradcam.compute_heatmap(model, _image(), layer_name="nope")


def test_non_spatial_layer_raises(model):
    with pytest.raises(ValueError, match="4-D"):
        gradcam.compute_heatmap(model, _image(), layer_name="gap")


@pytest.mark.parametrize(
    "bad_image",
    [
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((SIZE, SIZE), np.uint8),
        np.zeros((1, SIZE, SIZE, 3)),
    ],
)
def test_wrong_image_shape_raises_with_expected_size(model, bad_image):
    with pytest.raises(ValueError, match="32x32x3"):
        gradcam.compute_heatmap(model, bad_image)


def test_bad_options_raise(model):
    with pytest.raises(ValueError, match="Unknown target"):
        gradcam.compute_heatmap(model, _image(), target="melanoma")
    with pytest.raises(TypeError, match="max_N"):
        gradcam.compute_heatmap(model, _image(), "gradcam", max_N=4)


def test_normalize_map_keeps_a_zero_map_zero():
    with np.errstate(all="raise"):
        out = common.normalize_map(np.zeros((4, 4)))
    assert out.dtype == np.float32 and not out.any()
    np.testing.assert_allclose(common.normalize_map(np.array([[1e-12, 3e-12]])), [[0.0, 1.0]])


def test_randomize_model_copies_and_redraws_top_layers(model):
    before = [w.copy() for w in model.get_weights()]
    head = sanity.randomize_model(model, "head", seed=0)
    for original, kept in zip(before, model.get_weights()):
        np.testing.assert_array_equal(original, kept)  # input model untouched
    assert head is not model
    for name in ("conv1", "conv2"):
        for a, b in zip(model.get_layer(name).get_weights(), head.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    old_kernel = model.get_layer("malignant_probability").get_weights()[0]
    assert not np.allclose(head.get_layer("malignant_probability").get_weights()[0], old_kernel)

    cascade = sanity.randomize_model(model, "cascade", n_layers=2, seed=0)
    def kernel(m, name):
        return m.get_layer(name).get_weights()[0]

    assert not np.allclose(kernel(cascade, "conv2"), kernel(model, "conv2"))
    np.testing.assert_array_equal(kernel(cascade, "conv1"), kernel(model, "conv1"))
    all_layers = ["conv1", "conv2", "malignant_probability"]
    assert sanity.randomized_layer_names(model, "all") == all_layers
    with pytest.raises(ValueError, match="only 3 weighted layers"):
        sanity.randomize_model(model, "cascade", n_layers=10)


def test_sanity_check_randomised_maps_differ(model):
    result = sanity.sanity_check(model, _image(), "gradcam", LAYER, seed=0)
    assert set(result) == {"head", "cascade_2", "cascade_3"}
    assert result["cascade_3"]["layers"] == ["conv1", "conv2", "malignant_probability"]
    for entry in result.values():
        assert -1.0 <= entry["ssim"] <= 1.0
        # NaN = the randomised map is constant (e.g. all zero), which also counts as changed.
        assert not entry["spearman"] >= 0.9, entry


def test_overlay_and_png(model):
    image = _image()
    heatmap = gradcam.compute_heatmap(model, image, layer_name=LAYER)
    picture = overlay.overlay(image, heatmap)
    assert isinstance(picture, Image.Image)
    assert picture.mode == "RGB" and picture.size == (SIZE, SIZE)
    # A smaller map is upsampled to the image; a float 0..1 image is accepted for display.
    small = overlay.overlay(
        image.astype(np.float32) / 255.0, heatmap[::4, ::4], alpha=0.3, cmap="inferno"
    )
    assert small.size == (SIZE, SIZE)
    png = overlay.overlay_png_bytes(image, heatmap, alpha=0.5)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="colormap"):
        overlay.overlay(image, heatmap, cmap="no-such-map")
    with pytest.raises(ValueError, match="2-D"):
        overlay.overlay(image, heatmap[None])


def test_plot_explanations_returns_a_figure(model):
    image = _image()
    methods = ("gradcam", "gradcam++")
    heatmaps = {m: gradcam.compute_heatmap(model, image, m, layer_name=LAYER) for m in methods}
    figure = overlay.plot_explanations(image, heatmaps, title="tiny")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 3
    assert [ax.get_title() for ax in figure.axes] == ["original", "gradcam", "gradcam++"]


# --------------------------------------------------------------------------------------------
# Compiled Grad-CAM / Grad-CAM++ (the default) against the tf-keras-vis reference
# --------------------------------------------------------------------------------------------


def _assert_maps_match(fast: np.ndarray, ref: np.ndarray, atol: float = 1e-4) -> None:
    assert fast.shape == ref.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, atol=atol)
    if ref.any():
        assert np.corrcoef(fast.ravel(), ref.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("method", gradcam.COMPILED_METHODS)
@pytest.mark.parametrize("target", ["malignant", "benign"])
@pytest.mark.parametrize("quadrant", [(0, 0), (1, 0)])
def test_compiled_matches_tf_keras_vis(model, method, target, quadrant):
    image = _image(quadrant)
    fast = gradcam.compute_heatmap(model, image, method, layer_name=LAYER, target=target)
    ref = gradcam.compute_heatmap(
        model, image, method, layer_name=LAYER, target=target, reference=True
    )
    assert ref.any()  # a blank reference would make the comparison vacuous
    _assert_maps_match(fast, ref, atol=1e-5)


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    from skinlesion.models.backbones import build_classifier

    full, _ = build_classifier("efficientnet_lite0", weights=None, input_size=96)
    return full


def test_compiled_matches_tf_keras_vis_on_efficientnet_lite0(lite0):
    # build_classifier's full model shares its head layers with the head-only model, which
    # the reference path also has to cope with (the sigmoid layer's input is taken from the
    # full model's own graph).
    image = np.random.default_rng(1).uniform(0, 255, (96, 96, 3)).astype(np.uint8)
    non_blank = 0
    for method in gradcam.COMPILED_METHODS:
        for target in ("malignant", "benign"):
            kw = {"layer_name": "lite_top_activation", "target": target}
            fast = gradcam.compute_heatmap(lite0, image, method, **kw)
            ref = gradcam.compute_heatmap(lite0, image, method, reference=True, **kw)
            _assert_maps_match(fast, ref)
            non_blank += bool(ref.any())
    assert non_blank >= 2


def test_second_call_is_served_from_the_cache(lite0):
    rng = np.random.default_rng(2)
    layer = "lite_top_activation"
    for i in range(3):  # other images, both methods and all targets: one trace
        image = rng.uniform(0, 255, (96, 96, 3)).astype(np.uint8)
        gradcam.predict_and_explain(
            lite0, image, gradcam.COMPILED_METHODS[i % 2], layer, common.TARGETS[i]
        )
    compiled = gradcam._compiled_cam(lite0, layer)
    assert compiled is gradcam._compiled_cam(lite0, layer)
    assert compiled.function.experimental_get_tracing_count() == 1


def test_predict_and_explain_returns_the_model_probability(model):
    image = _image()
    p, heatmap = gradcam.predict_and_explain(model, image, "gradcam", LAYER, "predicted")
    expected = float(model(image[None].astype(np.float32))[0, 0])
    assert p == pytest.approx(expected, abs=1e-6)
    assert p > 0.5  # so "predicted" explained the malignant class
    malignant = gradcam.compute_heatmap(model, image, layer_name=LAYER, target="malignant")
    np.testing.assert_array_equal(heatmap, malignant)
    # With a threshold above p the predicted class is benign.
    _, benign = gradcam.predict_and_explain(model, image, "gradcam", LAYER, threshold=0.99)
    assert not np.allclose(benign, malignant, atol=1e-3)


def test_predict_and_explain_other_methods_and_bad_options(model):
    image = _image()
    p, heatmap = gradcam.predict_and_explain(model, image, "scorecam", LAYER, max_N=2)
    assert p == pytest.approx(float(model(image[None].astype(np.float32))[0, 0]), abs=1e-6)
    assert heatmap.shape == (SIZE, SIZE) and heatmap.max() == pytest.approx(1.0)
    with pytest.raises(TypeError, match="max_N"):
        gradcam.predict_and_explain(model, image, "gradcam", LAYER, max_N=2)
    with pytest.raises(ValueError, match="Unknown method"):
        gradcam.predict_and_explain(model, image, "lime", LAYER)
    with pytest.raises(ValueError, match="Unknown target"):
        gradcam.predict_and_explain(model, image, "gradcam", LAYER, "melanoma")
    with pytest.raises(ValueError, match="32x32x3"):
        gradcam.predict_and_explain(model, image[:16], "gradcam", LAYER)


def test_cache_follows_weight_changes_and_frees_the_model():
    import gc
    import weakref

    local = _tiny_model()
    image = _image()
    gradcam.compute_heatmap(local, image, "gradcam", layer_name=LAYER)  # traces the cached graph
    compiled = gradcam._compiled_cam(local, LAYER)
    # Swap the head's sign: the cached graph reads the live variables, so the map follows.
    kernel, bias = local.get_layer("malignant_probability").get_weights()
    local.get_layer("malignant_probability").set_weights([-kernel, -bias])
    fast = gradcam.compute_heatmap(local, image, "gradcam++", layer_name=LAYER, target="benign")
    ref = gradcam.compute_heatmap(
        local, image, "gradcam++", layer_name=LAYER, target="benign", reference=True
    )
    _assert_maps_match(fast, ref, atol=1e-5)
    assert compiled.function.experimental_get_tracing_count() == 1

    alive = weakref.ref(local)
    del local, compiled
    gc.collect()
    assert alive() is None  # the cache holds the model weakly


def test_gradcam_plus_plus_survives_a_saturated_logit():
    # tf-keras-vis multiplies Grad-CAM++ derivatives by exp(score), inf in float32 for z > 88
    # (its map for this model is all zeros); the compiled path leaves that constant out (it
    # cancels), so the map stays meaningful. Here z is about 112.
    local = _tiny_model()
    kernel, bias = local.get_layer("malignant_probability").get_weights()
    local.get_layer("malignant_probability").set_weights([150.0 * kernel, 150.0 * bias])
    p, heatmap = gradcam.predict_and_explain(local, _image(), "gradcam++", LAYER, "malignant")
    assert p == 1.0
    assert _quadrant_mass(heatmap, (0, 0)) > 0.8


def test_compiled_path_on_a_saved_and_loaded_model(model, tmp_path):
    # Bundles are loaded from .keras files: the sigmoid head must still be recognised.
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    image = _image((1, 1))
    p, fast = gradcam.predict_and_explain(loaded, image, "gradcam", LAYER, "malignant")
    ref = gradcam.compute_heatmap(
        model, image, layer_name=LAYER, target="malignant", reference=True
    )
    _assert_maps_match(fast, ref, atol=1e-5)
    assert p == pytest.approx(float(model(image[None].astype(np.float32))[0, 0]), abs=1e-6)


# --------------------------------------------------------------------------------------------
# Input checks: 0..255 pixels only, real layers, a real threshold
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_image", "message"),
    [
        (_image() > 100, "dtype bool"),
        (_image().astype(np.int64) * 300, "must lie in 0..255.*to 75000"),
        (_image().astype(np.float32) - 300.0, "must lie in 0..255.*from -270"),
        (_image().astype(np.float32) / 255.0, "0..1 float image.*0..255.*Predictor.explain takes any image"),
        (np.full((SIZE, SIZE, 3), 1.0), None),  # constant: cannot tell, so kept (checked below)
    ],
    ids=["bool", "above-255", "negative", "unit-float", "constant"],
)
def test_images_must_hold_0_to_255_pixels(model, bad_image, message):
    if message is None:
        assert gradcam.compute_heatmap(model, bad_image).shape == (SIZE, SIZE)
        return
    for call in (lambda: gradcam.compute_heatmap(model, bad_image),
                 lambda: gradcam.predict_and_explain(model, bad_image),
                 lambda: sanity.sanity_check(model, bad_image)):
        with pytest.raises(ValueError, match=message):
            call()


def test_round_off_and_dark_uint8_images_are_accepted(model):
    image = _image().astype(np.float32)
    image[0, 0] = 255.0004  # arithmetic round-off
    assert gradcam.predict_and_explain(model, image)[1].shape == (SIZE, SIZE)
    dark = np.zeros((SIZE, SIZE, 3), np.uint8)
    dark[:4] = 1  # a uint8 image is 0..255 by definition, however dark
    assert gradcam.compute_heatmap(model, dark).shape == (SIZE, SIZE)


def test_the_input_layer_is_refused(model):
    with pytest.raises(ValueError, match="'input_layer.*' is the model's input layer.*last_conv_act"):
        gradcam.compute_heatmap(model, _image(), layer_name=model.layers[0].name)


@pytest.mark.parametrize(
    ("threshold", "error"),
    [("x", TypeError), (True, TypeError), (None, TypeError), (1.5, ValueError), (-0.1, ValueError),
     (float("nan"), ValueError)],
)
def test_threshold_must_be_a_real_number_in_0_1(model, threshold, error):
    for call in (lambda: gradcam.compute_heatmap(model, _image(), threshold=threshold),
                 lambda: gradcam.predict_and_explain(model, _image(), threshold=threshold),
                 lambda: sanity.sanity_check(model, _image(), threshold=threshold)):
        with pytest.raises(error, match=r"threshold must be a real number in \[0, 1\]"):
            call()
    assert common.check_threshold(np.float32(0.25)) == 0.25

"""The explanation API (:func:`compute_heatmap`, :func:`predict_and_explain`) and the compiled
Grad-CAM / Grad-CAM++ fast path.

Grad-CAM and Grad-CAM++ have a second, compiled implementation (the default; tf-keras-vis stays
the reference, ``reference=True``). tf-keras-vis builds a new extractor model and runs an eager
GradientTape on every call (~0.4-2 s per map on this CPU; an eager call of a ~250-layer Keras
model is ~120 ms of op dispatch alone). The compiled path builds, once per (model, layer), a
model returning (activation, probability, head input) and a ``tf.function`` with a fixed input
signature that returns the activation, d z / d activation and P(malignant) from ONE forward
pass. It is cached in a dict weakly keyed by the model, so later calls reuse the traced graph:
the first call traces (~1 s for EfficientNet-Lite0), later ones cost about one compiled
prediction (p50 ~24 ms vs ~20 ms for ``predict_on_batch`` at 224x224; see
``benchmarks/explain_latency.py``). The CAM weights are then computed in NumPy as tf-keras-vis
0.8.7 does (see :func:`_cam_from_gradients`), so :func:`predict_and_explain` gives the
probability and the map for the price of one prediction. This is hand-written only because
tf-keras-vis has no way to reuse a compiled graph between calls.

What each tf-keras-vis method costs per map on CPU is listed in :mod:`skinlesion.explain.tfkv`.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from skinlesion.explain.common import (
    METHOD_KWARGS,
    METHODS,
    check_image,
    check_inputs,
    check_layer,
    check_target,
    check_threshold,
    logit_from_probability,
    normalize_map,
    predict_one,
    resize_map,
    resolve_target,
    sigmoid_head,
    target_for,
)
from skinlesion.explain.tfkv import tf_keras_vis_heatmap

if TYPE_CHECKING:
    import keras

COMPILED_METHODS: tuple[str, ...] = ("gradcam", "gradcam++")

@dataclass(frozen=True)
class _CompiledCam:
    """A traced graph: one image (1, H, W, 3) float32 -> (activation, dz/dactivation, p).

    Holds no reference to the model itself (only to its layers), so the weak cache entry
    goes away with the model.
    """

    function: Any  # tf.function
    extractor: Any  # keras.Model the function calls; kept here to pin its lifetime
    layer_name: str

# model -> {layer name -> compiled graph}. Weak keys: throw-away models (e.g. the randomised
# copies of sanity_check) must not be kept alive by the cache.
_COMPILED: weakref.WeakKeyDictionary[Any, dict[str, _CompiledCam]] = weakref.WeakKeyDictionary()

_COMPILED_LOCK = threading.Lock()

def _build_compiled_cam(model: keras.Model, layer_name: str) -> _CompiledCam:
    import keras
    import tensorflow as tf

    kind, head, head_tensor = sigmoid_head(model)
    activation = model.get_layer(layer_name).output
    outputs = [activation, model.outputs[0]]
    if kind != "probability":
        outputs.append(head_tensor)
    extractor = keras.Model(model.inputs[0], outputs, name=f"{model.name}_cam_{layer_name}")
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32, name="image")
    model_name = model.name  # the closure must not hold the model (weak cache)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def cam_inputs(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # Watching the input (not the variables) records the forward pass for the tape, as
        # tf-keras-vis does; only d z / d activation is requested, so TF prunes the rest of
        # the backward pass (it never reaches the backbone below the layer).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(image)
            out = extractor(image, training=False)
            features, probability = out[0], out[1]
            if kind == "dense":
                # The Dense layer's live variables, so later weight updates are picked up.
                z = keras.ops.matmul(keras.ops.cast(out[2], head.kernel.dtype), head.kernel)
                z = z + head.bias if head.use_bias else z
            elif kind == "activation":
                z = out[2]
            else:
                z = logit_from_probability(probability)
            score = tf.reduce_sum(tf.cast(z, tf.float32))
        gradients = tape.gradient(score, features)
        if gradients is None:  # raised while tracing, i.e. on the first call
            raise ValueError(
                f"Layer {layer_name!r} of model {model_name!r} does not feed the model's output, "
                "so it cannot explain the prediction; choose a layer below the head."
            )
        return (
            tf.cast(features, tf.float32),
            tf.cast(gradients, tf.float32),
            tf.reshape(tf.cast(probability, tf.float32), [-1]),
        )

    return _CompiledCam(cam_inputs, extractor, layer_name)

def _compiled_cam(model: keras.Model, layer_name: str) -> _CompiledCam:
    """The cached compiled graph for (model, layer), built (not yet traced) on first use."""
    with _COMPILED_LOCK:  # web servers may call from several threads; build once
        per_model = _COMPILED.setdefault(model, {})
        if layer_name not in per_model:
            per_model[layer_name] = _build_compiled_cam(model, layer_name)
        return per_model[layer_name]

def _cam_from_gradients(activation: np.ndarray, gradients: np.ndarray, method: str) -> np.ndarray:
    """Grad-CAM / Grad-CAM++ map (h, w) from one (h, w, C) activation and d score / d activation.

    Same arithmetic as tf-keras-vis 0.8.7 (``Gradcam._calculate_cam`` and
    ``GradcamPlusPlus.__call__`` with the default ReLU ``activation_modifier``), in float64,
    with one exact simplification: its Grad-CAM++ multiplies every derivative by exp(score),
    a positive constant that cancels in the alphas and only scales the map (undone by
    normalisation); we leave it out because exp(z) overflows to inf (or underflows to 0 for
    the benign score -z) once a prediction is confident, which blanks its map.
    """
    a = np.asarray(activation, np.float64)
    g = np.asarray(gradients, np.float64)
    if method == "gradcam":
        weights = g.mean(axis=(0, 1))
    elif method == "gradcam++":
        second = g * g
        third = second * g
        global_sum = a.sum(axis=(0, 1))
        denominator = 2.0 * second + third * global_sum
        denominator = denominator + (second == 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # as tf-keras-vis: inf/NaN kept
            alphas = second / denominator
            norm = alphas.sum(axis=(0, 1))
            alphas = alphas / (norm + (norm == 0.0))
        weights = (np.maximum(g, 0.0) * alphas).sum(axis=(0, 1))
    else:
        raise ValueError(
            f"No compiled implementation of {method!r}; use one of {COMPILED_METHODS}."
        )
    return np.maximum((a * weights).sum(axis=-1), 0.0)

def _upsample(cam: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Linear (order-1 spline) zoom to the input size, as tf-keras-vis does it."""
    from scipy.ndimage import zoom

    factors = (size_hw[0] / cam.shape[0], size_hw[1] / cam.shape[1])
    return zoom(cam, factors, order=1)

def _compiled_predict_and_explain(
    model: keras.Model,
    image: np.ndarray,
    method: str,
    layer_name: str,
    target: str,
    threshold: float,
) -> tuple[float, np.ndarray]:
    """(P(malignant), normalised map) from one pass of the cached graph; inputs are checked."""
    compiled = _compiled_cam(model, layer_name)
    activation, gradients, probability = compiled.function(image[None])
    p = float(probability.numpy()[0])
    # One graph serves both classes: d(-z)/dA = -dz/dA.
    sign = 1.0 if target_for(p, target, threshold) == "malignant" else -1.0
    cam = _cam_from_gradients(activation.numpy()[0], sign * gradients.numpy()[0], method)
    heatmap = _upsample(cam, image.shape[:2])
    if heatmap.shape != image.shape[:2]:  # zoom rounds the output size; never off in practice
        heatmap = resize_map(heatmap, image.shape[:2])
    return p, normalize_map(heatmap)

def predict_and_explain(
    model: keras.Model,
    image: np.ndarray,
    method: str = "gradcam",
    layer_name: str | None = None,
    target: str = "predicted",
    *,
    threshold: float = 0.5,
    **kwargs: Any,
) -> tuple[float, np.ndarray]:
    """(P(malignant), heat map) for one raw RGB image at the model's input size.

    ``image`` holds raw 0..255 pixel values (uint8 or float), as for :func:`compute_heatmap`;
    a 0..1 float image is refused. P(malignant) is the model's raw sigmoid output,
    *uncalibrated*: a bundle's temperature is not applied, so it is not the probability a
    :class:`~skinlesion.serving.inference.Predictor` serves (use ``Predictor.explain`` for the
    served answer). For "gradcam" and "gradcam++" both come from ONE forward pass of a graph
    compiled once per (model, layer) and cached (the first call traces it, ~1 s for
    EfficientNet-Lite0). The other methods run one prediction and then :func:`compute_heatmap`.
    ``target``, ``threshold``, ``layer_name`` and ``kwargs`` are as for :func:`compute_heatmap`;
    with ``target="predicted"`` the raw probability is compared with ``threshold``.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    check_target(target, threshold)
    image = check_image(model, image)
    if method in COMPILED_METHODS:
        if kwargs:
            raise TypeError(
                f"predict_and_explain(method={method!r}) got unexpected keyword argument(s) "
                f"{sorted(kwargs)}; it accepts threshold only."
            )
        return _compiled_predict_and_explain(
            model, image, method, check_layer(model, layer_name), target, threshold
        )
    probability = predict_one(model, image)
    heatmap = compute_heatmap(
        model,
        image,
        method,
        layer_name=layer_name,
        target=target_for(probability, target, threshold),
        **kwargs,
    )
    return probability, heatmap


def compute_heatmap(
    model: keras.Model,
    image: np.ndarray,
    method: str = "gradcam",
    *,
    layer_name: str | None = None,
    target: str = "predicted",
    reference: bool = False,
    **kwargs: Any,
) -> np.ndarray:
    """Explain one prediction; return a float32 (S, S) map in [0, 1] at the image's size.

    ``image`` is one raw RGB array (uint8 or float) holding 0..255 pixel values at the model's
    input size; bool, negative or >255 values and 0..1 float images are refused (ValueError).
    (:meth:`~skinlesion.serving.inference.Predictor.explain` takes any image and converts it.)
    ``target``: "malignant" explains P(malignant), "benign" explains 1 - P, "predicted" the
    class the model predicts: "malignant" when the model's raw, *uncalibrated* output is
    ``>= threshold`` (keyword ``threshold=``, a real number in [0, 1], default 0.5), else
    "benign"; a bundle's decision threshold is on its calibrated scale and does not apply
    here. ``layer_name`` is the conv layer for the CAM methods (default
    :func:`find_last_conv_layer`; ignored by SmoothGrad); the model's input layer is refused.
    Extra keyword arguments: scorecam ``max_N`` (default 32, None = all channels),
    ``batch_size`` (32); smoothgrad ``smooth_samples`` (20), ``smooth_noise`` (0.2 of the
    image's value range), ``seed`` (None = NumPy's global RNG).
    Grad-CAM and Grad-CAM++ use the cached compiled graph (see :func:`predict_and_explain`);
    ``reference=True`` computes them with tf-keras-vis instead (slow; for checking). Score-CAM
    and SmoothGrad always use tf-keras-vis.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    threshold = check_threshold(kwargs.pop("threshold", 0.5))
    unexpected = set(kwargs) - METHOD_KWARGS[method]
    if unexpected:
        raise TypeError(
            f"compute_heatmap(method={method!r}) got unexpected keyword argument(s) "
            f"{sorted(unexpected)}; it accepts threshold and {sorted(METHOD_KWARGS[method])}."
        )
    image, layer_name = check_inputs(model, image, method, layer_name)
    if method in COMPILED_METHODS and not reference and layer_name is not None:
        check_target(target, threshold)
        _, heatmap = _compiled_predict_and_explain(
            model, image, method, layer_name, target, threshold
        )
        return heatmap
    resolved = resolve_target(model, image, target, threshold)
    return tf_keras_vis_heatmap(model, image, method, layer_name, resolved, **kwargs)


def compute_heatmaps(
    model: keras.Model,
    image: np.ndarray,
    methods: Sequence[str] = METHODS,
    *,
    layer_name: str | None = None,
    target: str = "predicted",
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """{method: heat map} for several methods with default settings (e.g. for plotting)."""
    return {
        m: compute_heatmap(
            model, image, m, layer_name=layer_name, target=target, threshold=threshold
        )
        for m in methods
    }

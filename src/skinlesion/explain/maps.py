"""Visual explanations (Grad-CAM, Grad-CAM++, Score-CAM, SmoothGrad) for the lesion classifiers.

The maps are computed with tf-keras-vis 0.8.7. It was written for tf.keras, but under TF 2.21
``tensorflow.keras`` *is* Keras 3, and what we checked (tiny CNN and MobileNetV2, Keras 3.15.1,
TF 2.21.0, SciPy 1.17) is:

* ``Gradcam``, ``GradcamPlusPlus``, ``Scorecam`` and ``Saliency`` (SmoothGrad) all run on a flat
  functional Keras 3 model with ``model_modifier=None`` (so nothing is cloned). So does
  ``ReplaceToLinear`` with cloning, but we don't need it (see below).
* Keras 3 warns "The structure of `inputs` doesn't match the expected structure" on every call
  because tf-keras-vis always passes a *list* of inputs to a single-input model. Harmless;
  we silence that one warning.
* ``Scorecam`` runs ``model.predict`` with no way to pass ``verbose``, so Keras 3 prints a progress
  bar for every map (and re-traces a tf.function per new model). We give it a throw-away
  wrapper model whose ``predict`` is a quiet eager batched call.
* ``Scorecam`` applies ``softmax`` to the model output before the score function sees it. With our
  single sigmoid unit that is softmax over one value, i.e. always 1.0: every channel gets weight 1
  (the map is just the summed activations) and the "benign" score ``1 - p`` is always 0 (an
  all-zero map). We fix this by giving
  tf-keras-vis an equivalent two-logit head ``[0, z]`` (``z`` = the sigmoid's pre-activation):
  ``softmax([0, z]) == [1 - sigmoid(z), sigmoid(z)]`` exactly, so the Score-CAM weights are the
  real class probabilities of the masked images.
* The gradient methods use the logit ``z`` (``-z`` for "benign") as the score, as the Grad-CAM
  paper uses the pre-softmax score: for one sigmoid unit ``dp/dA = p(1-p) dz/dA`` so Grad-CAM is
  unchanged up to scale, but the gradient no longer vanishes when a confident prediction
  saturates to p == 1.0 in float32.
* ``seek_penultimate_conv_layer`` only recognises ``BaseConv`` subclasses (Keras 3's
  ``DepthwiseConv2D`` is not one) and would step *back* from the activation layer we name to the
  conv before it, so we always pass ``seek_penultimate_conv_layer=False`` and pick the layer
  ourselves (:func:`find_last_conv_layer`).
* tf-keras-vis normalises maps as ``(x - min) / (max - min + 1e-7)``. Input gradients of a model
  that takes raw 0..255 pixels are tiny (1e-14 for an untrained MobileNetV2), so its SmoothGrad
  maps peaked well below 1 or came out blank; we ask for unnormalised maps and normalise them
  ourselves (:func:`normalize_map`).
* tf-keras-vis still imports ``scipy.ndimage.interpolation`` (deprecated, still present in SciPy
  1.17); if a future SciPy removes it, the import in :func:`_tf_keras_vis` is what breaks.

* A model from ``backbones.build_classifier`` SHARES its head layers with the head-only model,
  so ``layer.input`` of the sigmoid layer is the *head model's* tensor (Keras returns a shared
  layer's first call) and a wrapper built on it is "not connected to `inputs`". We take the
  sigmoid layer's input from the model's own graph instead (:func:`_sigmoid_head`).

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

tf-keras-vis cost on CPU (2 shared cores, one 224x224 image, untrained MobileNetV2 as an
EfficientNet-Lite0 stand-in / EfficientNetB0): Grad-CAM and Grad-CAM++ ~0.4-0.8 s / ~1.3-2.3 s;
Score-CAM ~1.2-2.9 s / ~5 s with the default ``max_N=32`` (the 32 channels with the largest
spatial variance, "Faster Score-CAM"; ``max_N=None`` uses every channel: for a 1280-channel
backbone that is 1280 forward passes and several GB of masked copies); SmoothGrad ~4-8 s /
~10 s with the default 20 noisy samples (noise = 0.2 of the image's value range; tf-keras-vis
runs them one at a time, and batching them was no faster on CPU). SmoothGrad uses |gradient|,
so its map is the same for the "malignant" and "benign" targets.

Display helpers (:func:`overlay`, :func:`overlay_png_bytes`, :func:`plot_explanations`) are kept
apart from the computations and need neither TensorFlow nor pyplot state.
"""
from __future__ import annotations

import functools
import io
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure
    from PIL import Image

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "smoothgrad")
TARGETS: tuple[str, ...] = ("predicted", "malignant", "benign")
RANDOMIZATION_SCOPES: tuple[str, ...] = ("cascade", "head", "all")

DEFAULT_SCORECAM_MAX_N = 32
DEFAULT_SMOOTH_SAMPLES = 20
DEFAULT_SMOOTH_NOISE = 0.2

# Keyword arguments each method accepts on top of ``threshold`` (used by target="predicted").
_METHOD_KWARGS: dict[str, frozenset[str]] = {
    "gradcam": frozenset(),
    "gradcam++": frozenset(),
    "scorecam": frozenset({"max_N", "batch_size"}),
    "smoothgrad": frozenset({"smooth_samples", "smooth_noise", "seed"}),
}


# --------------------------------------------------------------------------------------------
# Model inspection
# --------------------------------------------------------------------------------------------


def _output_rank(layer: Any) -> int | None:
    """Rank of a layer's (single) output, or None when it has no single symbolic output."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):  # shared layers, multi-output layers
        return None


def _is_input_or_preprocessing(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.InputLayer) or type(layer).__module__.startswith(
        "keras.src.layers.preprocessing"
    )


def _spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D output that could be explained, bottom to top."""
    return [
        layer.name
        for layer in model.layers
        if _output_rank(layer) == 4 and not _is_input_or_preprocessing(layer)
    ]


def _top_index(model: keras.Model) -> int:
    """Index of the head's global pooling/flatten layer (where 4-D features become vectors).

    The *last* such layer: squeeze-and-excitation blocks (EfficientNet) also pool to 2-D inside
    the backbone before reshaping back to 4-D.
    """
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        try:
            in_rank = len(layer.input.shape)
        except (AttributeError, ValueError, TypeError):
            continue
        if in_rank == 4 and _output_rank(layer) == 2:
            return i
    return len(model.layers)


def find_last_conv_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D output before the global pooling.

    Use it when a model bundle does not record its last conv activation layer.
    """
    top = _top_index(model)
    for layer in reversed(model.layers[:top]):
        if _output_rank(layer) == 4 and not _is_input_or_preprocessing(layer):
            return layer.name
    raise ValueError(
        f"Model {model.name!r} has no layer with a 4-D (batch, height, width, channels) output "
        "before its global pooling, so there is no feature map to explain. Pass layer_name= "
        "explicitly."
    )


def _check_layer(model: keras.Model, layer_name: str | None) -> str:
    """Return a valid 4-D layer name (the last conv layer when ``layer_name`` is None)."""
    if layer_name is None:
        return find_last_conv_layer(model)

    def candidates() -> str:
        # Only built for the error message: it walks every layer (slow on a big backbone).
        return ", ".join(repr(n) for n in _spatial_layers(model)[-5:]) or "(none)"

    if layer_name not in {layer.name for layer in model.layers}:
        raise ValueError(
            f"Model {model.name!r} has no layer named {layer_name!r}. Layers with a 4-D output "
            f"nearest the top are: {candidates()}."
        )
    rank = _output_rank(model.get_layer(layer_name))
    if rank != 4:
        raise ValueError(
            f"Layer {layer_name!r} does not have a 4-D (batch, height, width, channels) output "
            f"(rank {rank}); class activation maps need a convolutional feature map. Try one of: "
            f"{candidates()}."
        )
    return layer_name


def _check_image(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """Validate one raw RGB image against the model input; return it as float32 (S, S, 3)."""
    image = np.asarray(image)
    expected = tuple(model.input_shape[1:])
    shown = "x".join("?" if d is None else str(d) for d in expected)
    if image.ndim == 4:
        raise ValueError(
            f"Expected ONE image of shape {shown}, got a batch of shape {image.shape}; "
            "explain images one at a time."
        )
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"Expected one RGB image of shape {shown} (height, width, 3), got shape {image.shape}."
            " Convert greyscale/RGBA images to RGB first."
        )
    if len(expected) != 3 or any(e is not None and e != s for e, s in zip(expected, image.shape)):
        raise ValueError(
            f"Image has shape {image.shape} but the model expects {shown}; resize the image to "
            "the model's input size first."
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError(f"Image must be numeric (uint8 or float RGB), got dtype {image.dtype}.")
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise ValueError("Image contains NaN or infinite values.")
    return image


# --------------------------------------------------------------------------------------------
# Scores and the two-logit head
# --------------------------------------------------------------------------------------------


def _sigmoid_head(model: keras.Model) -> tuple[str, Any, Any]:
    """How to get the logit z (p = sigmoid(z)) of a binary classifier.

    Returns ``(kind, layer, tensor)``: kind "dense" (``layer`` is a Dense(1, sigmoid), ``tensor``
    its input), "activation" (``layer`` is Activation(sigmoid), ``tensor`` = z), or "probability"
    (unknown head; ``tensor`` is the model output, z must be recovered from p). ``tensor`` is
    taken from *this* model's graph: a layer shared with another model (the head model of
    ``build_classifier``) reports the other model's tensor as ``layer.input``.
    """
    import keras

    if len(model.inputs) != 1:
        raise ValueError(
            f"Expected a single-input image classifier, model {model.name!r} has "
            f"{len(model.inputs)} inputs."
        )
    if len(model.outputs) != 1 or tuple(model.output_shape[1:]) != (1,):
        raise ValueError(
            f"Expected a binary classifier with one output of shape (None, 1) = P(malignant), "
            f"got output shape(s) {model.output_shape}."
        )
    # Keras 3 has no public "inputs of this layer's call inside model X"; the output tensor's
    # history names the call (node) that made it.
    history = model.outputs[0]._keras_history
    last = history.operation
    node_inputs = last._inbound_nodes[history.node_index].input_tensors
    sigmoid = keras.activations.sigmoid
    if len(node_inputs) == 1 and getattr(last, "activation", None) is sigmoid:
        if isinstance(last, keras.layers.Dense):
            return "dense", last, node_inputs[0]
        if isinstance(last, keras.layers.Activation):
            return "activation", last, node_inputs[0]
    return "probability", last, model.outputs[0]


def _logit_from_probability(p: Any) -> Any:
    """z = logit(p). Exact except where p has saturated to 0 or 1 in float32."""
    import keras

    eps = 1e-7
    p = keras.ops.clip(p, eps, 1.0 - eps)
    return keras.ops.log(p) - keras.ops.log1p(-p)


def _two_logit_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers whose output is the logits ``[0, z]``, p = sigmoid(z).

    ``softmax([0, z]) == [1 - p, p]``; this is what makes tf-keras-vis's Score-CAM (which
    softmaxes the output) see real probabilities, and ``z`` is the unsaturated score for the
    gradient methods. The original model is not modified.
    """
    import keras

    kind, last, tensor = _sigmoid_head(model)
    if kind == "dense":
        # A new Dense(2) with kernel [0 | W] and bias [0, b]: shares no variables with the
        # original, so it stays correct only for this call (it is rebuilt every time).
        weights = last.get_weights()
        kernel = weights[0]
        bias = weights[1] if last.use_bias else np.zeros((1,), kernel.dtype)
        head = keras.layers.Dense(2, name="explain_two_logits")
        logits = head(tensor)
        head.set_weights(
            [
                np.concatenate([np.zeros_like(kernel), kernel], axis=1),
                np.concatenate([np.zeros_like(bias), bias]),
            ]
        )
    else:
        # Recovering z from p is the last resort (it saturates), hence the Dense/Activation cases.
        z = tensor if kind == "activation" else _logit_from_probability(tensor)
        logits = keras.ops.concatenate([keras.ops.zeros_like(z), z], axis=-1)
    # A single-input model takes a tensor, not a one-element list, or Keras 3 warns on each call.
    wrapper = keras.Model(model.inputs[0], logits, name=f"{model.name}_two_logits")
    # tf-keras-vis's Score-CAM calls predict() without verbose=, so Keras 3 prints a progress
    # bar per map, and since this wrapper is rebuilt per call, predict() would also re-trace
    # its tf.function every time (slow, and TF warns about retracing). The wrapper is ours and
    # throw-away, so give it a quiet eager batched predict instead.
    wrapper.predict = functools.partial(_eager_predict, wrapper)
    return wrapper


def _eager_predict(model: keras.Model, x: Any, batch_size: int = 32, **_: Any) -> np.ndarray:
    import keras

    x = x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x
    batches = [
        keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(batches, axis=0)


def _check_target(target: str, threshold: float) -> None:
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    if target == "predicted" and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}.")


def _target_for(probability: float, target: str, threshold: float) -> str:
    """Map ``target`` to "malignant" or "benign" given the model's P(malignant)."""
    _check_target(target, threshold)
    if target != "predicted":
        return target
    return "malignant" if probability >= threshold else "benign"


def _predict_one(model: keras.Model, image: np.ndarray) -> float:
    """P(malignant) for one checked float32 image (an eager call)."""
    return float(np.asarray(model(image[None], training=False)).reshape(-1)[0])


def _resolve_target(model: keras.Model, image: np.ndarray, target: str, threshold: float) -> str:
    """Map ``target`` to "malignant" or "benign" (running the model for "predicted")."""
    _check_target(target, threshold)
    if target != "predicted":
        return target
    return _target_for(_predict_one(model, image), target, threshold)


def _logit_score(target: str) -> Callable[[Any], Any]:
    """Score on the two-logit output for gradient methods: z for malignant, -z for benign."""
    sign = 1.0 if target == "malignant" else -1.0
    return lambda logits: sign * (logits[:, 1] - logits[:, 0])


def _probability_score(target: str) -> Callable[[Any], Any]:
    """Score on softmax([0, z]) = [1-p, p] for Score-CAM: the target class's probability."""
    column = 1 if target == "malignant" else 0
    return lambda probabilities: probabilities[:, column]


# --------------------------------------------------------------------------------------------
# Heat maps
# --------------------------------------------------------------------------------------------


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] as float32; a constant (e.g. all-zero) map becomes all zeros.

    Hand-written rather than tf-keras-vis's ``normalize`` because its absolute epsilon (1e-7)
    swamps the tiny input gradients of a model fed raw 0..255 pixels.
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(heatmap.min()), float(heatmap.max())
    span = high - low
    # Relative, not absolute: input gradients of a deep net on 0..255 pixels can be ~1e-12
    # and still carry a perfectly good map.
    if span == 0.0 or span <= 1e-6 * max(abs(high), abs(low)):
        return np.zeros(heatmap.shape, np.float32)
    return ((heatmap - low) / span).astype(np.float32)


@contextmanager
def _quiet_tf_keras_vis():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _tf_keras_vis() -> dict[str, Any]:
    with _quiet_tf_keras_vis():
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.scorecam import Scorecam
    return {
        "gradcam": Gradcam,
        "gradcam++": GradcamPlusPlus,
        "scorecam": Scorecam,
        "smoothgrad": Saliency,
    }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------------------------
# Compiled Grad-CAM / Grad-CAM++ (cached per model and layer)
# --------------------------------------------------------------------------------------------

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

    kind, head, head_tensor = _sigmoid_head(model)
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
                z = _logit_from_probability(probability)
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
    sign = 1.0 if _target_for(p, target, threshold) == "malignant" else -1.0
    cam = _cam_from_gradients(activation.numpy()[0], sign * gradients.numpy()[0], method)
    heatmap = _upsample(cam, image.shape[:2])
    if heatmap.shape != image.shape[:2]:  # zoom rounds the output size; never off in practice
        heatmap = _resize_map(heatmap, image.shape[:2])
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

    For "gradcam" and "gradcam++" both come from ONE forward pass of a graph compiled once per
    (model, layer) and cached (the first call traces it, ~1 s for EfficientNet-Lite0). The
    other methods run one prediction and then :func:`compute_heatmap`. ``target``,
    ``threshold``, ``layer_name`` and ``kwargs`` are as for :func:`compute_heatmap`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    _check_target(target, threshold)
    image = _check_image(model, image)
    if method in COMPILED_METHODS:
        if kwargs:
            raise TypeError(
                f"predict_and_explain(method={method!r}) got unexpected keyword argument(s) "
                f"{sorted(kwargs)}; it accepts threshold only."
            )
        return _compiled_predict_and_explain(
            model, image, method, _check_layer(model, layer_name), target, threshold
        )
    probability = _predict_one(model, image)
    heatmap = compute_heatmap(
        model,
        image,
        method,
        layer_name=layer_name,
        target=_target_for(probability, target, threshold),
        **kwargs,
    )
    return probability, heatmap


def warm_up(model: keras.Model, layer_name: str | None = None) -> None:
    """Trace the compiled Grad-CAM graph now (e.g. when a server loads its model), so the
    first user request does not pay the ~1 s tracing cost."""
    layer_name = _check_layer(model, layer_name)
    shape = tuple(d if d is not None else 224 for d in model.input_shape[1:])
    _compiled_cam(model, layer_name).function(np.zeros((1, *shape), np.float32))


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

    ``image`` is one raw RGB array (uint8 or float, 0..255) at the model's input size.
    ``target``: "malignant" explains P(malignant), "benign" explains 1 - P, "predicted" the
    class the model predicts (``threshold=``, default 0.5). ``layer_name`` is the conv layer
    for the CAM methods (default :func:`find_last_conv_layer`; ignored by SmoothGrad).
    Extra keyword arguments: scorecam ``max_N`` (default 32, None = all channels),
    ``batch_size`` (32); smoothgrad ``smooth_samples`` (20), ``smooth_noise`` (0.2 of the
    image's value range), ``seed`` (None = NumPy's global RNG).
    Grad-CAM and Grad-CAM++ use the cached compiled graph (see :func:`predict_and_explain`);
    ``reference=True`` computes them with tf-keras-vis instead (slow; for checking). Score-CAM
    and SmoothGrad always use tf-keras-vis.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    threshold = float(kwargs.pop("threshold", 0.5))
    unexpected = set(kwargs) - _METHOD_KWARGS[method]
    if unexpected:
        raise TypeError(
            f"compute_heatmap(method={method!r}) got unexpected keyword argument(s) "
            f"{sorted(unexpected)}; it accepts threshold and {sorted(_METHOD_KWARGS[method])}."
        )
    image = _check_image(model, image)
    if method != "smoothgrad" or layer_name is not None:
        layer_name = _check_layer(model, layer_name)
    if method in COMPILED_METHODS and not reference:
        _check_target(target, threshold)
        _, heatmap = _compiled_predict_and_explain(
            model, image, method, layer_name, target, threshold
        )
        return heatmap
    resolved = _resolve_target(model, image, target, threshold)

    wrapper = _two_logit_model(model)
    visualizer = _tf_keras_vis()[method](wrapper, model_modifier=None, clone=False)
    with _quiet_tf_keras_vis():
        if method in ("gradcam", "gradcam++"):
            cam = visualizer(
                _logit_score(resolved),
                image,
                penultimate_layer=layer_name,
                seek_penultimate_conv_layer=False,
                normalize_cam=False,
            )
        elif method == "scorecam":
            channels = int(model.get_layer(layer_name).output.shape[-1])
            max_n = kwargs.get("max_N", DEFAULT_SCORECAM_MAX_N)
            # tf-keras-vis reads None/0 as "every channel" and rejects max_N > channels.
            max_n = channels if max_n is None else min(_positive_int("max_N", max_n), channels)
            cam = visualizer(
                _probability_score(resolved),
                image,
                penultimate_layer=layer_name,
                seek_penultimate_conv_layer=False,
                max_N=max_n,
                batch_size=_positive_int("batch_size", kwargs.get("batch_size", 32)),
                normalize_cam=False,
            )
        else:
            samples = _positive_int(
                "smooth_samples", kwargs.get("smooth_samples", DEFAULT_SMOOTH_SAMPLES)
            )
            noise = float(kwargs.get("smooth_noise", DEFAULT_SMOOTH_NOISE))
            if not noise >= 0.0:
                raise ValueError(f"smooth_noise must be >= 0, got {noise!r}.")
            seed = kwargs.get("seed")
            # tf-keras-vis draws its noise from NumPy's global RNG; with a seed we borrow that
            # RNG and put its state back so callers' own random streams are untouched.
            saved = np.random.get_state() if seed is not None else None
            try:
                if seed is not None:
                    np.random.seed(seed)
                cam = visualizer(
                    _logit_score(resolved),
                    image,
                    smooth_samples=samples,
                    smooth_noise=noise,
                    normalize_map=False,
                )
            finally:
                if saved is not None:
                    np.random.set_state(saved)
    cam = np.asarray(cam)
    cam = cam.reshape(cam.shape[-2:]) if cam.ndim == 3 else cam
    if cam.shape != image.shape[:2]:  # defensive: tf-keras-vis zooms to the input size
        cam = _resize_map(cam, image.shape[:2])
    return normalize_map(cam)


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


# --------------------------------------------------------------------------------------------
# Sanity checks (Adebayo et al., 2018, "Sanity Checks for Saliency Maps")
# --------------------------------------------------------------------------------------------


def _weighted_layers(model: keras.Model) -> list[Any]:
    """Layers that hold learned weights, bottom to top (input preprocessing excluded)."""
    return [
        layer
        for layer in model.layers
        if layer.weights and not _is_input_or_preprocessing(layer)
    ]


def _head_layers(model: keras.Model) -> list[Any]:
    top = _top_index(model)
    return [layer for layer in _weighted_layers(model) if model.layers.index(layer) > top]


def _initializer_for(layer: Any, variable_name: str) -> Any | None:
    aliases = {
        "kernel": ("kernel_initializer", "depthwise_initializer"),
        "depthwise_kernel": ("depthwise_initializer",),
        "pointwise_kernel": ("pointwise_initializer",),
    }
    for attr in aliases.get(variable_name, (f"{variable_name}_initializer",)):
        initializer = getattr(layer, attr, None)
        if initializer is not None:
            return initializer
    return None


def _redraw(layer: Any, seed: int) -> list[np.ndarray]:
    """Fresh values for a layer's weights: its own initialisers (seeded), else N(0, std)."""
    import keras

    rng = np.random.default_rng(seed)
    values = []
    for offset, variable in enumerate(layer.weights):
        shape, dtype = tuple(variable.shape), variable.dtype
        initializer = _initializer_for(layer, variable.name.split("/")[-1])
        if initializer is not None:
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed * 1009 + offset
            fresh = type(initializer).from_config(config)
            values.append(keras.ops.convert_to_numpy(fresh(shape, dtype=dtype)))
        else:
            current = keras.ops.convert_to_numpy(variable)
            std = float(np.std(current)) or 0.05
            values.append(rng.normal(0.0, std, shape).astype(current.dtype))
    return values


def randomize_model(
    model: keras.Model,
    scope: str = "cascade",
    n_layers: int | None = None,
    seed: int = 0,
) -> keras.Model:
    """A copy of ``model`` with its top weights re-drawn (model-parameter randomisation test).

    ``scope="head"``: the weighted layers after the global pooling. ``"cascade"``: the top
    ``n_layers`` weighted layers (default: the head plus the top-most backbone layer).
    ``"all"``: every weighted layer (input preprocessing such as Normalization is left alone).
    Weights come from each layer's own initialiser (seeded) or N(0, std of the old weights).
    ``model`` itself is not modified.
    """
    import keras

    if scope not in RANDOMIZATION_SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose one of {RANDOMIZATION_SCOPES}.")
    weighted = _weighted_layers(model)
    head = _head_layers(model)
    if scope == "head":
        if not head:
            raise ValueError(
                f"Model {model.name!r} has no weighted layers after its global pooling."
            )
        chosen = head
    elif scope == "all":
        chosen = weighted
    else:
        if n_layers is None:
            n_layers = len(head) + 1
        n_layers = _positive_int("n_layers", n_layers)
        if n_layers > len(weighted):
            raise ValueError(
                f"n_layers={n_layers} but model {model.name!r} has only {len(weighted)} "
                "weighted layers."
            )
        chosen = weighted[-n_layers:]

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for i, layer in enumerate(chosen):
        target = copy.get_layer(layer.name)
        target.set_weights(_redraw(target, seed + i))
    return copy


def randomized_layer_names(
    model: keras.Model, scope: str = "cascade", n_layers: int | None = None
) -> list[str]:
    """Names of the layers :func:`randomize_model` would re-draw, bottom to top."""
    if scope not in RANDOMIZATION_SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose one of {RANDOMIZATION_SCOPES}.")
    if scope == "head":
        return [layer.name for layer in _head_layers(model)]
    weighted = _weighted_layers(model)
    if scope == "all":
        return [layer.name for layer in weighted]
    if n_layers is None:
        n_layers = len(_head_layers(model)) + 1
    return [layer.name for layer in weighted[-_positive_int("n_layers", n_layers):]]


def compare_maps(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation and SSIM between two [0, 1] maps of the same shape.

    Spearman is NaN when either map is constant (e.g. an all-zero Grad-CAM): rank correlation
    is undefined there, which is itself a sign the explanation changed.
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Maps must have the same shape, got {a.shape} and {b.shape}.")
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    # SSIM's default 7x7 window must fit inside the map; shrink it (odd, >= 3) for tiny maps.
    win = min(7, *(d if d % 2 else d - 1 for d in a.shape))
    if win < 3:
        raise ValueError(f"Maps of shape {a.shape} are too small for SSIM (need >= 3x3).")
    ssim = float(structural_similarity(a, b, data_range=1.0, win_size=win))
    return {"spearman": rho, "ssim": ssim}


@contextmanager
def _quiet_tf_retracing():
    """Silence TensorFlow's "triggered tf.function retracing" warning for expected retraces."""
    import logging

    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def sanity_check(
    model: keras.Model,
    image: np.ndarray,
    method: str = "gradcam",
    layer_name: str | None = None,
    *,
    target: str = "predicted",
    cascade_steps: Sequence[int] | None = None,
    seed: int = 0,
    return_maps: bool = False,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Model-parameter randomisation test: does the map change when the weights do?

    Returns ``{label: {"spearman", "ssim", "layers"[, "heatmap"]}}`` with labels "head" and
    "cascade_<n>" for each n in ``cascade_steps`` (default: the head plus 1, 2, 4 and 8 more
    layers, and all weighted layers, capped at the model's depth); with ``return_maps`` also an
    "original" entry and each map. Faithful explanations give low similarity. The target class
    is fixed from the original model's prediction so every map explains the same class.
    ``kwargs`` go to :func:`compute_heatmap` (e.g. ``max_N``, ``seed`` for SmoothGrad).
    """
    image = _check_image(model, image)
    if method != "smoothgrad" or layer_name is not None:
        layer_name = _check_layer(model, layer_name)
    resolved = _resolve_target(model, image, target, float(kwargs.pop("threshold", 0.5)))
    original = compute_heatmap(
        model, image, method, layer_name=layer_name, target=resolved, **kwargs
    )

    n_weighted, n_head = len(_weighted_layers(model)), len(_head_layers(model))
    if cascade_steps is None:
        # Cascading from the top; steps inside the head would repeat the "head" run.
        steps = {n_head + k for k in (1, 2, 4, 8)}
        cascade_steps = sorted({n for n in steps if n < n_weighted} | {n_weighted})
    runs: list[tuple[str, str, int | None]] = [("head", "head", None)]
    runs += [(f"cascade_{n}", "cascade", int(n)) for n in cascade_steps]

    results: dict[str, dict[str, Any]] = {}
    if return_maps:
        results["original"] = {"spearman": 1.0, "ssim": 1.0, "layers": [], "heatmap": original}
    for label, scope, n in runs:
        randomized = randomize_model(model, scope, n, seed=seed)
        with _quiet_tf_retracing():  # every randomised copy is a new model, so a new trace
            heatmap = compute_heatmap(
                randomized, image, method, layer_name=layer_name, target=resolved, **kwargs
            )
        entry: dict[str, Any] = {
            **compare_maps(original, heatmap),
            "layers": randomized_layer_names(model, scope, n),
        }
        if return_maps:
            entry["heatmap"] = heatmap
        results[label] = entry
    return results


# --------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------


def _resize_map(heatmap: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    resized = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
        (int(size_hw[1]), int(size_hw[0])), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, np.float32)


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """RGB uint8 for display; floats in 0..1 are taken as 0..1, otherwise as 0..255."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an RGB image of shape (height, width, 3), got {image.shape}.")
    if image.dtype == np.uint8:
        return image
    image = np.nan_to_num(image.astype(np.float32))
    if image.size and image.max() <= 1.0:
        image = image * 255.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _colour_map(heatmap: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"Unknown matplotlib colormap {cmap!r}; try 'jet', 'inferno', 'viridis' or 'turbo'."
        ) from None
    return (colormap(np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0).astype(np.float32)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet"
) -> Image.Image:
    """Blend a colour-mapped [0, 1] heat map over an RGB image; returns a PIL RGB image.

    The map is resized (bilinear) to the image if needed; ``alpha`` is the map's weight.
    """
    from PIL import Image

    rgb = _as_uint8_rgb(image)
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"Heat map must be 2-D (height, width), got shape {heatmap.shape}.")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("Heat map contains NaN or infinite values.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}.")
    if heatmap.shape != rgb.shape[:2]:
        heatmap = _resize_map(heatmap, rgb.shape[:2])
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * _colour_map(heatmap, cmap)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), mode="RGB")


def overlay_png_bytes(image: np.ndarray, heatmap: np.ndarray, **kw: Any) -> bytes:
    """:func:`overlay` encoded as PNG bytes (for web responses and notebooks)."""
    buffer = io.BytesIO()
    overlay(image, heatmap, **kw).save(buffer, format="PNG")
    return buffer.getvalue()


def plot_explanations(
    image: np.ndarray,
    heatmaps: dict[str, np.ndarray],
    title: str | None = None,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> Figure:
    """A one-row figure: the original image, then one overlay per heat map (dict order)."""
    from matplotlib.figure import Figure

    rgb = _as_uint8_rgb(image)
    panels = [("original", rgb)] + [
        (name, np.asarray(overlay(rgb, heatmap, alpha=alpha, cmap=cmap)))
        for name, heatmap in heatmaps.items()
    ]
    figure = Figure(figsize=(2.6 * len(panels), 2.9 if title else 2.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for ax, (name, panel) in zip(axes, panels):
        ax.imshow(panel)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure

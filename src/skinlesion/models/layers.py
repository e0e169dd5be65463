"""Custom Keras layers that travel inside saved models.

They are registered serializable classes rather than ``Lambda`` layers so a bundle loads with
``safe_mode=True`` (no arbitrary code is deserialised).
"""
from __future__ import annotations

import keras
import numpy as np

from skinlesion.models.registry import NORMALISATIONS


@keras.saving.register_keras_serializable(package="skinlesion")
class ImagePreprocess(keras.layers.Layer):
    """Raw RGB 0..255 -> the normalisation a backbone was trained with.

    Lives in the model graph so every caller (training, CLI, web app, dashboard) feeds raw
    RGB and preprocessing exists exactly once. ``mode`` names a row of
    :data:`skinlesion.models.registry.NORMALISATIONS` (saved models store only the name).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALISATIONS:
            raise ValueError(f"unknown preprocessing mode {mode!r}; known: {sorted(NORMALISATIONS)}")
        self.mode = mode
        norm = NORMALISATIONS[mode]
        self._flip = norm.bgr
        self._mean = np.asarray(norm.mean, dtype="float32")
        self._std = np.asarray(norm.std, dtype="float32")

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if self._flip:
            x = x[..., ::-1]
        return (x - self._mean) / self._std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}

"""Custom Keras layers that travel inside saved models.

They are registered serializable classes rather than ``Lambda`` layers so a bundle loads with
``safe_mode=True`` (no arbitrary code is deserialised).
"""
from __future__ import annotations

import keras
import numpy as np

# Per-backbone input conventions of keras.applications and the EfficientNet-Lite ports,
# expressed as (RGB->BGR?, mean, std) on RGB values in 0..255.
_IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
_IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
PREPROCESS_MODES: dict[str, tuple[bool, tuple[float, float, float], tuple[float, float, float]]] = {
    # ResNet50 (caffe): BGR, mean-subtracted, not scaled.
    "caffe": (True, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # DenseNet121 (torch): RGB scaled to 0..1 then ImageNet mean/std.
    "torch": (False, _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB),
    # InceptionV3 / MobileNet (tf): RGB scaled to -1..1.
    "tf": (False, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    # Official EfficientNet-Lite: (x - 127) / 128.
    "lite": (False, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
}


@keras.saving.register_keras_serializable(package="skinlesion")
class ImagePreprocess(keras.layers.Layer):
    """Raw RGB 0..255 -> the normalisation a backbone was trained with.

    Lives in the model graph so every caller (training, CLI, web app, dashboard) feeds raw
    RGB and preprocessing exists exactly once.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; known: {sorted(PREPROCESS_MODES)}")
        self.mode = mode
        flip, mean, std = PREPROCESS_MODES[mode]
        self._flip = flip
        self._mean = np.asarray(mean, dtype="float32")
        self._std = np.asarray(std, dtype="float32")

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if self._flip:
            x = x[..., ::-1]
        return (x - self._mean) / self._std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}

"""Shared check for the custom front-end layers (colour constancy, resolution harmonisation)."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np


def safe_mode_round_trip(layer: keras.layers.Layer, batch: np.ndarray, tmp_path: Path) -> keras.Model:
    """Put ``layer`` first in a tiny raw-RGB model, save it, reload it with ``safe_mode=True``, check the
    reloaded model predicts ``batch`` exactly as the original, and return the reloaded model."""
    from skinlesion.models.layers import ImagePreprocess

    inp = keras.Input(batch.shape[1:], dtype="uint8")
    x = ImagePreprocess("lite")(layer(inp))
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    path = tmp_path / "tiny.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict_on_batch(batch), model.predict_on_batch(batch))
    return loaded

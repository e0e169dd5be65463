"""A Keras feature extractor run by the LiteRT (TFLite) interpreter, for bulk feature extraction.

On the 2-core CPU machine, XNNPACK computes Lite0's pooled features 1.66x as fast as Keras at
batch 64, and the same features to float rounding (max abs difference 3.3e-05 on features up to
5.84): ``benchmarks/feature_backends.py`` measures both. The model is converted in memory
(nothing is written to disk) and the conversion takes ~6 s, so
:func:`skinlesion.models.features.extract_features` uses it only for large jobs.

The saved model, serving, Grad-CAM and fine-tuning stay on Keras: only stage-1 features (which
are cached and then read by a head trained in Keras) come from here.
"""
from __future__ import annotations

import contextlib
import io
import logging
import threading
import weakref
from typing import Any

import numpy as np

from skinlesion import config
from skinlesion.models.quiet import quiet_tensorflow

_CONVERTED: weakref.WeakKeyDictionary[Any, tuple[TFLiteFeatureModel, str]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class TFLiteFeatureModel:
    """``predict_on_batch``, ``input_shape`` and ``output_shape`` of a one-input, one-output Keras
    model, computed by a TFLite interpreter converted from it (builtin ops only)."""

    def __init__(self, model: Any, *, num_threads: int | None = None) -> None:
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        self.input_shape = tuple(model.input_shape)
        self.output_shape = tuple(model.output_shape)
        # from_keras_model (a SavedModel export underneath): a concrete function of the model
        # captured here converts with unread variables and computes NaN.
        # The export prints every captured tensor, and TensorFlow's logger announces the temporary
        # folder it writes ("Assets written to" a temporary path), which would land in notebook outputs.
        with quiet_tensorflow(logging.WARNING), contextlib.redirect_stdout(io.StringIO()):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            blob = converter.convert()
        self._interpreter = Interpreter(model_content=blob, num_threads=num_threads or config.cpu_threads())
        self._in = self._interpreter.get_input_details()[0]["index"]
        self._out = self._interpreter.get_output_details()[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()  # one call at a time: the interpreter is not thread-safe

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if len(x) == 0:  # the interpreter cannot resize to an empty batch
            return np.zeros((0, *self.output_shape[1:]), np.float32)
        with self._lock:
            if len(x) != self._batch:
                self._interpreter.resize_tensor_input(self._in, list(x.shape))
                self._interpreter.allocate_tensors()
                self._batch = len(x)
            self._interpreter.set_tensor(self._in, x)
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._out))


def tflite_features(model: Any) -> TFLiteFeatureModel:
    """The TFLite twin of ``model``, converted once per model object and weights (a model whose
    weights changed since, e.g. by fine-tuning, is converted again)."""
    from skinlesion.models.backbones import weights_digest

    digest = weights_digest(model)
    with _LOCK:
        hit = _CONVERTED.get(model)
        if hit is None or hit[1] != digest:
            hit = _CONVERTED[model] = (TFLiteFeatureModel(model), digest)
        return hit[0]

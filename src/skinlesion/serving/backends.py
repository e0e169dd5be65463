"""Inference backends of the Predictor: a batch of images in, (pooled features, raw probability) out.

Every backend is called as ``backend(batch)`` with a batch of RGB images, uint8, shape
(N, S, S, 3) at the bundle's input size (what :func:`skinlesion.data.intake.load_for_model`
returns), and returns

* the bundle's ``meta.feature_layer`` output, float32 (N, d): the out-of-distribution check and
  the image-type gate read these, so every backend must return them;
* the model's raw P(malignant), float32 (N,), *before* calibration.

Calibration (the bundle's temperature), test-time augmentation, OOD and the decision stay in the
:class:`~skinlesion.serving.inference.Predictor`, so every backend is served by the same rules.

Backends (``BACKENDS``):

``keras``
    the bundle's ``model.keras``.
``tflite`` / ``tflite-dynamic``
    the bundle's TFLite export, float or with dynamic-range (int8 weight) quantisation, made by
    ``skinlesion export BUNDLE --format tflite [--quantize dynamic]`` into
    ``<bundle>/export/tflite[-dynamic]/``, run by the LiteRT interpreter (``ai-edge-litert``,
    the maintained successor of ``tf.lite.Interpreter``). TensorFlow is never imported for it.
    It is refused unless it was made from this bundle's exact ``model.keras`` (sha256) and
    passed its parity check.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from skinlesion import config
from skinlesion.bundle.format import MODEL_FILE, BundleError
from skinlesion.io import read_json, sha256_file

if TYPE_CHECKING:
    from skinlesion.bundle.format import Bundle

BACKENDS: tuple[str, ...] = config.BACKENDS

# Where exports live and what they hold (written by skinlesion.serving.export).
EXPORT_DIR = "export"
MANIFEST_FILE = "export.json"
PARITY_FILE = "parity.json"
TFLITE_FILE = "model.tflite"
SAVEDMODEL_DIR = "saved_model"
SIGNATURE = "serve"
INPUT_NAME = "image"
OUTPUT_FEATURES = "features"
OUTPUT_PROBABILITY = "probability"


class Backend(Protocol):
    """What the Predictor calls: ``backend(batch_uint8) -> (features, raw_probability)``."""

    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def export_variant(fmt: str, quantize: str | None = None) -> str:
    """The name of an export: ``savedmodel``, ``tflite`` or ``tflite-<quantize>``."""
    return fmt if not quantize else f"{fmt}-{quantize}"


def export_command(bundle_path: str | os.PathLike[str], variant: str) -> str:
    """The command line that makes the export ``variant`` of a bundle (for error messages)."""
    fmt, _, quantize = variant.partition("-")
    return f"skinlesion export {bundle_path} --format {fmt}" + (f" --quantize {quantize}" if quantize else "")


def export_folder(bundle_path: str | os.PathLike[str], variant: str) -> Path:
    """The default folder of a bundle's export ``variant``: ``<bundle>/export/<variant>``."""
    return Path(bundle_path) / EXPORT_DIR / variant


class KerasBackend:
    """The bundle's Keras model with its pooled-feature layer as a second output."""

    name = "keras"

    def __init__(self, bundle: Bundle) -> None:
        import keras

        model = bundle.model
        self.model = keras.Model(model.input, [model.get_layer(bundle.meta.feature_layer).output, model.output])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, prob = self.model.predict_on_batch(batch)
        return np.asarray(feats), np.asarray(prob).reshape(-1)


class TFLiteBackend:
    """A ``model.tflite`` with the ``serve`` signature: ``image`` (float32 raw RGB 0..255) ->
    ``features``, ``probability``. Thread-safe (one call at a time: the interpreter is not)."""

    def __init__(self, model_file: str | os.PathLike[str], *, name: str = "tflite",
                 num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.name = name
        self.model_file = Path(model_file)
        self.num_threads = num_threads or config.cpu_threads()
        self._interpreter = Interpreter(model_path=str(self.model_file), num_threads=self.num_threads)
        try:
            self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        except ValueError as exc:
            raise BundleError(f"{self.model_file} has no {SIGNATURE!r} signature; re-export it "
                              "with `skinlesion export`") from exc
        outputs = self._runner.get_output_details()
        if {OUTPUT_FEATURES, OUTPUT_PROBABILITY} - set(outputs):
            raise BundleError(f"{self.model_file}: the {SIGNATURE!r} signature returns {sorted(outputs)}, not "
                              f"{OUTPUT_FEATURES!r} and {OUTPUT_PROBABILITY!r}; re-export it with `skinlesion export`")
        self.feature_dim = int(outputs[OUTPUT_FEATURES]["shape_signature"][-1])
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str = "tflite", *, num_threads: int | None = None) -> TFLiteBackend:
        """The bundle's export ``variant`` after checking it belongs to this model and passed parity."""
        folder = export_folder(bundle.path, variant)
        verify_export(folder, bundle)
        backend = cls(folder / TFLITE_FILE, name=variant, num_threads=num_threads)
        # The interpreter resizes its input to whatever it is given, so an input_size in bundle.json
        # that is not the exported model's would be served silently; refused here instead.
        shape = tuple(int(d) for d in backend._runner.get_input_details()[INPUT_NAME]["shape_signature"][1:3])
        if -1 not in shape and shape != (bundle.input_size, bundle.input_size):
            raise BundleError(f"{bundle.path}: bundle.json says input_size {bundle.input_size}, but the {variant} "
                              f"export takes {shape[0]}x{shape[1]} pixels; the bundle.json does not belong to "
                              "this export")
        return backend

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(batch, dtype=np.float32)
        if len(x) == 0:  # the interpreter cannot resize to an empty batch
            return np.zeros((0, self.feature_dim), np.float32), np.zeros((0,), np.float32)
        with self._lock:
            out = self._runner(**{INPUT_NAME: x})
        return np.asarray(out[OUTPUT_FEATURES]), np.asarray(out[OUTPUT_PROBABILITY]).reshape(-1)


def verify_export(folder: Path, bundle: Bundle) -> dict[str, Any]:
    """The manifest of the export in ``folder`` once it is known to be usable for ``bundle``.

    Refused (:class:`BundleError`, with the command that fixes it): a missing export, one made
    from another ``model.keras`` (stale after retraining), a file whose checksum changed, and
    one whose parity check failed.
    """
    how = f"`{export_command(bundle.path, folder.name)}`"
    manifest_file = folder / MANIFEST_FILE
    if not manifest_file.is_file():
        raise BundleError(f"no {folder.name} export of {bundle.path} (looked in {folder}); make it with {how}")
    manifest = read_json(manifest_file, BundleError)
    expected = bundle.meta.files.get(MODEL_FILE)
    if manifest.get("source_model_sha256") != expected:
        raise BundleError(f"{folder} was exported from another {MODEL_FILE} than the bundle's current one; "
                          f"re-export it with {how} and --force")
    for name, digest in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise BundleError(f"{folder}: {name} is missing or changed since export; re-export with {how} and --force")
    parity = read_json(folder / PARITY_FILE, BundleError) if (folder / PARITY_FILE).is_file() else {}
    if parity.get("passed") is not True:
        raise BundleError(f"{folder} did not pass its parity check against the Keras model "
                          f"({folder / PARITY_FILE}); it is not served")
    return dict(manifest)


def make_backend(bundle: Bundle, backend: str = "keras", *, num_threads: int | None = None) -> Backend:
    """The backend called ``backend`` (one of :data:`BACKENDS`) for a single-model bundle."""
    if backend == "keras":
        return KerasBackend(bundle)
    if backend in ("tflite", "tflite-dynamic"):
        return TFLiteBackend.from_bundle(bundle, backend, num_threads=num_threads)
    raise BundleError(f"unknown inference backend {backend!r}; choose from {', '.join(BACKENDS)}")

"""Export a bundle's model for serving: TF SavedModel or TFLite (float, or dynamic-range quantised),
each checked against the Keras model on real test images before it can be served.

Every export has one signature, ``serve``, that takes what ``model.keras`` takes and returns what
the Predictor needs:

* input ``image``: **float32** (N, S, S, 3), raw RGB 0..255 at the bundle's input size S — the
  model's preprocessing is inside the graph, exactly as in the bundle. The serving backend casts
  the intake's uint8 images to float32 (so do it yourself when you call the export directly);
* output ``features``: the bundle's ``meta.feature_layer`` output (N, d), read by the
  out-of-distribution check and the image-type gate;
* output ``probability``: the model's raw P(malignant) (N, 1), *before* calibration. The calibrated
  probability is the bundle's temperature applied to it, by the Predictor, as for Keras.

Folder (default ``<bundle>/export/<variant>``, variant ``savedmodel``, ``tflite`` or
``tflite-dynamic``):

    model.tflite  or  saved_model/    the model
    export.json                       manifest: source bundle and the sha256 of its model.keras,
                                      signature, file checksums, sizes, versions, the command
    parity.json                       export vs Keras on N real test images (strict JSON)

The parity check runs after every export on ``n`` (default 200) images of the Kaggle test split
(or any folder): per-view raw probabilities, the probability as served (dihedral TTA mean when the
bundle uses it, then calibrated), features, OOD ratios and decisions. Float exports must agree to
``max |Δp| <= 1e-4`` (:data:`FLOAT_TOLERANCE`), else the export is kept for inspection, marked
failed, never served, and :class:`ExportError` is raised. Quantised exports are not held to a
bit-level tolerance; what they cost in AUC is measured by
:func:`skinlesion.evaluation.export_check.compare_export` (``skinlesion export --evaluate``).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion import config
from skinlesion.bundle.format import MODEL_FILE, Bundle, BundleError, load, package_versions
from skinlesion.data.datasets import DataError, image_files
from skinlesion.io import sha256_file, write_json
from skinlesion.serving.backends import (
    INPUT_NAME,
    MANIFEST_FILE,
    OUTPUT_FEATURES,
    OUTPUT_PROBABILITY,
    PARITY_FILE,
    SAVEDMODEL_DIR,
    SIGNATURE,
    TFLITE_FILE,
    KerasBackend,
    TFLiteBackend,
    export_command,
    export_folder,
    export_variant,
)

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("savedmodel", "tflite")
QUANTIZE: tuple[str, ...] = ("dynamic",)
FLOAT_TOLERANCE = 1e-4
DEFAULT_PARITY_N = 200


class ExportError(BundleError):
    """An export that cannot be made, or that does not match the Keras model."""


@dataclass(frozen=True)
class ExportResult:
    """Where an export went, its manifest and its parity figures."""

    folder: Path
    manifest: dict[str, Any]
    parity: dict[str, Any]


class SavedModelRunner:
    """The ``serve`` signature of an exported SavedModel, called like a serving backend."""

    name = "savedmodel"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        import tensorflow as tf

        self._tf = tf
        self._fn = tf.saved_model.load(str(folder)).signatures[SIGNATURE]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._fn(**{INPUT_NAME: self._tf.constant(np.asarray(batch, np.float32))})
        return out[OUTPUT_FEATURES].numpy(), out[OUTPUT_PROBABILITY].numpy().reshape(-1)


# ------------------------------------------------------------------------------------------------
# Parity images
# ------------------------------------------------------------------------------------------------
def parity_images(data: str | os.PathLike[str] | None = None, n: int = DEFAULT_PARITY_N, seed: int = 0) -> list[Path]:
    """``n`` images (seeded sample, sorted) of ``data`` (a folder, searched recursively), else of
    the Kaggle test split; fewer when fewer exist. No images is a :class:`DataError`."""
    if n < 1:
        raise ValueError(f"the parity check needs at least 1 image; got n={n}")
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"parity data folder {root} does not exist")
        files = image_files(root)
        where = config.display_path(root)
    else:
        from skinlesion.data.sources import load_source

        try:
            src = load_source("kaggle")
        except DataError as exc:
            raise DataError(f"the parity check needs real test images and the Kaggle set was not found ({exc}); "
                            "pass --parity-data DIR with dermoscopic images") from exc
        files = src.paths(src.records[src.records["split"] == "test"])
        where = "kaggle test split"
    if not files:
        raise DataError(f"no images found for the parity check in {where}")
    if len(files) > n:
        pick = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
        files = [files[i] for i in sorted(pick)]
    return list(files)


# ------------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------------
def parity_check(bundle: Bundle, runner: Any, files: Sequence[Path], *, tolerance: float | None,
                 batch_size: int = 32, reference: Any | None = None) -> dict[str, Any]:
    """Compare ``runner`` (an export) with the bundle's Keras model on ``files``.

    Both see the same decoded uint8 batches (the Predictor's intake) and, when the bundle serves
    dihedral TTA, all 8 views. ``passed`` is ``max_abs_dp_served <= tolerance`` and
    ``max_abs_dp_raw <= tolerance`` (always True when ``tolerance`` is None: quantised exports).
    """
    from skinlesion.data.intake import ImageRejected, read_file_bytes, read_image
    from skinlesion.metrics.calibration import apply_temperature
    from skinlesion.models.features import apply_view
    from skinlesion.models.lesion import base_view
    from skinlesion.serving.inference import check_crop_rule, read_as, reading_of

    check_crop_rule(bundle)
    keras_run = reference or KerasBackend(bundle)
    reading = reading_of(bundle)
    views = list(bundle.meta.served_views)
    raw_k: list[np.ndarray] = []
    raw_e: list[np.ndarray] = []
    feat_k: list[np.ndarray] = []
    feat_e: list[np.ndarray] = []
    unreadable = 0
    for start in range(0, len(files), batch_size):
        arrays = []
        for f in files[start:start + batch_size]:
            try:
                # Size-limited read: a huge file is one more unreadable image, not a MemoryError.
                arrays.append(read_as(read_image(read_file_bytes(f)), {reading})[reading])
            except (ImageRejected, OSError) as exc:
                unreadable += 1
                log.warning("parity image %s skipped: %s", f, getattr(exc, "message", None) or exc)
        if not arrays:
            continue
        batch = np.stack(arrays)  # a crop bundle's lesion crops, as the Predictor reads them: then the base views
        rk, re_ = [], []
        for v in views:
            seen = apply_view(batch, base_view(v))
            fk, pk = keras_run(seen)
            fe, pe = runner(seen)
            rk.append(pk)
            re_.append(pe)
            if v == views[0]:  # the plain view ("id", or "lc2_id" behind a lesion crop)
                feat_k.append(np.asarray(fk, np.float64))
                feat_e.append(np.asarray(fe, np.float64))
        raw_k.append(np.stack(rk, axis=1))
        raw_e.append(np.stack(re_, axis=1))
    if not raw_k:
        raise DataError("none of the parity images could be read")
    rk_all, re_all = np.concatenate(raw_k).astype(np.float64), np.concatenate(raw_e).astype(np.float64)
    fk_all, fe_all = np.concatenate(feat_k), np.concatenate(feat_e)
    t = bundle.meta.temperature
    # The Predictor's rule: mean of the raw outputs over the views, then the temperature.
    served_k = apply_temperature(rk_all.mean(axis=1), t)
    served_e = apply_temperature(re_all.mean(axis=1), t)
    d_raw = np.abs(rk_all - re_all)
    d_served = np.abs(served_k - served_e)
    d_feat = np.abs(fk_all - fe_all)
    out: dict[str, Any] = {
        "n_images": int(len(rk_all)), "n_unreadable": unreadable, "views": views,
        "tolerance": tolerance, "temperature": t,
        "max_abs_dp_raw": float(d_raw.max()), "mean_abs_dp_raw": float(d_raw.mean()),
        "max_abs_dp_served": float(d_served.max()), "mean_abs_dp_served": float(d_served.mean()),
        "p99_abs_dp_served": float(np.quantile(d_served, 0.99)),
        "max_abs_dfeature": float(d_feat.max()),
        "max_rel_dfeature": float(d_feat.max() / max(float(np.abs(fk_all).max()), 1e-12)),
    }
    policy = bundle.meta.decision
    if policy is not None:
        dk = [policy.decide(float(p)) for p in served_k]
        de = [policy.decide(float(p)) for p in served_e]
        out["decision_disagreements"] = int(sum(a != b for a, b in zip(dk, de)))
    ood = bundle.ood_detector()
    if ood is not None:
        ratio_k, ratio_e = ood.distance(fk_all) / ood.threshold, ood.distance(fe_all) / ood.threshold
        out["max_abs_dood_ratio"] = float(np.abs(ratio_k - ratio_e).max())
        out["ood_flag_disagreements"] = int(((ratio_k > 1.0) != (ratio_e > 1.0)).sum())
    out["passed"] = bool(tolerance is None or (out["max_abs_dp_served"] <= tolerance
                                               and out["max_abs_dp_raw"] <= tolerance))
    return out


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------
def _write_savedmodel(bundle: Bundle, target: Path) -> None:
    """A SavedModel with the ``serve`` signature (Keras' ExportArchive: inference graph only)."""
    import keras
    import tensorflow as tf

    infer = KerasBackend(bundle).model
    size = bundle.input_size
    archive = keras.export.ExportArchive()
    archive.track(infer)

    def serve(image: Any) -> dict[str, Any]:
        feats, prob = infer(image, training=False)
        return {OUTPUT_FEATURES: feats, OUTPUT_PROBABILITY: prob}

    archive.add_endpoint(name=SIGNATURE, fn=serve,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME)])
    archive.write_out(str(target), verbose=False)


def _write_tflite(saved_model: Path, target: Path, quantize: str | None) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    if quantize == "dynamic":
        # Dynamic-range quantisation: int8 weights, float activations; no calibration data needed.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    target.write_bytes(converter.convert())


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _files(folder: Path) -> dict[str, str]:
    return {f.relative_to(folder).as_posix(): sha256_file(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name not in (MANIFEST_FILE, PARITY_FILE)}


def export_bundle(bundle_path: str | os.PathLike[str], fmt: str, *, quantize: str | None = None,
                  out: str | os.PathLike[str] | None = None, parity_data: str | os.PathLike[str] | None = None,
                  parity_n: int = DEFAULT_PARITY_N, force: bool = False) -> ExportResult:
    """Export a single-model bundle to ``fmt`` (``savedmodel`` or ``tflite``), then check parity.

    The folder is written atomically (built beside the target, then renamed); an existing export
    is only replaced with ``force``, and nothing else ever is (see :func:`_check_target`). Raises :class:`ExportError` when the float export's parity
    check fails (the folder is kept, marked failed, and the serving backend refuses it).
    """
    from skinlesion.serving.inference import check_crop_rule

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"unknown quantisation {quantize!r}; choose from {', '.join(QUANTIZE)}")
    if quantize and fmt != "tflite":
        raise ExportError("--quantize applies to --format tflite only")
    bundle = load(bundle_path)
    if bundle.kind != "single":
        raise ExportError(f"{bundle.path} is an ensemble; export each member bundle "
                          f"({', '.join(bundle.meta.members)}) and serve the ensemble with the same backend")
    check_crop_rule(bundle)  # before minutes of conversion, not in the parity check after it
    variant = export_variant(fmt, quantize)
    folder = Path(out) if out else export_folder(bundle.path, variant)
    _check_target(folder, bundle.path, force=force)
    bundle.ood_detector()  # damaged statistics fail now, not after minutes of conversion
    files = parity_images(parity_data, parity_n)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if fmt == "savedmodel":
            _write_savedmodel(bundle, tmp / SAVEDMODEL_DIR)
            runner: Any = SavedModelRunner(tmp / SAVEDMODEL_DIR)
        else:
            with tempfile.TemporaryDirectory(prefix="skinlesion-export-") as scratch:
                _write_savedmodel(bundle, Path(scratch) / SAVEDMODEL_DIR)
                _write_tflite(Path(scratch) / SAVEDMODEL_DIR, tmp / TFLITE_FILE, quantize)
            runner = TFLiteBackend(tmp / TFLITE_FILE, name=variant)
        artefact = tmp / (SAVEDMODEL_DIR if fmt == "savedmodel" else TFLITE_FILE)
        parity = parity_check(bundle, runner, files, tolerance=None if quantize else FLOAT_TOLERANCE)
        parity["images"] = "kaggle test split" if parity_data is None else config.display_path(parity_data)
        keras_bytes = (bundle.path / MODEL_FILE).stat().st_size
        manifest = {
            "format": fmt, "quantize": quantize, "variant": variant, "signature": SIGNATURE,
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, bundle.input_size, bundle.input_size, 3],
                      "values": "raw RGB 0..255 (uint8 images cast to float32), centre-cropped and resized by "
                                "skinlesion.data.intake" + (", except that the square cut is the lesion's, found at "
                                                            "that size and cut from the decoded image by "
                                                            "skinlesion.models.lesion.crop_from"
                                                            if bundle.meta.lesion_crop else ""),
                      "lesion_crop": bundle.meta.lesion_crop, "lesion_crop_rule": bundle.meta.crop_rule},
            "outputs": {OUTPUT_FEATURES: f"the {bundle.meta.feature_layer!r} layer (pooled features)",
                        OUTPUT_PROBABILITY: "raw P(malignant) before calibration"},
            "bundle": bundle.meta.run_id, "bundle_path": config.display_path(bundle.path),
            "source_model_sha256": bundle.meta.files.get(MODEL_FILE),
            "temperature": bundle.meta.temperature, "tta": bundle.meta.raw.get("tta"),
            "size_bytes": _size(artefact), "keras_model_bytes": keras_bytes,
            "size_ratio_vs_keras": _size(artefact) / keras_bytes,
            "parity_passed": parity["passed"],
            "files": _files(tmp),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "command": export_command(config.display_path(bundle.path), variant),
        }
        write_json(tmp / PARITY_FILE, parity)
        write_json(tmp / MANIFEST_FILE, manifest)
        _replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s: max |dp| served %.2e over %d images (%s)", variant, config.display_path(folder),
             parity["max_abs_dp_served"], parity["n_images"], "passed" if parity["passed"] else "FAILED")
    if not parity["passed"]:
        raise ExportError(f"parity check failed: max |Δp| {parity['max_abs_dp_served']:.2e} (served), "
                          f"{parity['max_abs_dp_raw']:.2e} (raw) > {FLOAT_TOLERANCE:g} on {parity['n_images']} images; "
                          f"{folder} is kept for inspection and will not be served")
    return ExportResult(folder, manifest, parity)


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` is a previous export: a real folder (not a link) holding its manifest."""
    return folder.is_dir() and not folder.is_symlink() and (folder / MANIFEST_FILE).is_file()


def _check_target(folder: Path, bundle_path: Path, *, force: bool) -> None:
    """Refuse an export target whose replacement would lose something: ``force`` replaces only a
    previous export, never the bundle, a folder above it, or any other file or folder."""
    target, bundle_dir = folder.resolve(), bundle_path.resolve()
    if target == bundle_dir or target in bundle_dir.parents:
        raise ExportError(f"{folder} is the bundle's folder or contains it; choose another --out for the export")
    above = next((p for p in target.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ExportError(f"cannot export to {folder}: {above} is a file, not a folder")
    if not folder.exists() and not folder.is_symlink():
        return
    if not _is_export(folder):
        raise ExportError(f"{folder} already exists and is not a previous export (no {MANIFEST_FILE}); "
                          "refusing to replace it, even with --force; choose another --out")
    if not force:
        raise ExportError(f"{folder} already exists; pass --force to replace it")


def _replace(tmp: Path, folder: Path) -> None:
    """Move the finished export into place; an old one is swapped out first, then deleted.

    Only a previous export is ever swapped out (checked again: the export took a while, and
    something else may have been put there meanwhile)."""
    old = None
    if folder.exists() or folder.is_symlink():
        if not _is_export(folder):
            raise ExportError(f"{folder} appeared during the export and is not a previous export; "
                              "refusing to replace it (the new export was not kept)")
        old = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

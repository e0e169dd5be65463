"""What an export costs and saves against the bundle's own Keras model, on real data.

:func:`compare_export` scores a source's evaluation images (its official test split where it has
one, all of it otherwise, as leave-one-source-out does) with the Keras model and with the export,
both as served (the bundle's TTA and calibration), and reports the AUC of each, their paired
difference (bootstrap CI and DeLong p), decision agreement, the size ratio of the model files and
the one-image latency ratio measured in the same run. ``skinlesion export --evaluate SOURCE``
writes it to ``reports/export/<run-id>/<variant>.json`` with the export's parity figures.

Score a source with a bundle that never saw it (a leave-one-source-out bundle, e.g.
``models/loso/loso-<recipe>-ham10000`` for HAM10000), so the AUCs are held-out ones.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.bundle.format import MODEL_FILE
from skinlesion.data.datasets import DataError
from skinlesion.io import read_json, write_json

log = logging.getLogger(__name__)


def evaluation_files(source: str) -> tuple[list[Path], np.ndarray]:
    """The images and labels a source is scored on: its test split where it has one, else all."""
    from skinlesion.data.sources import load_source

    src = load_source(source)
    records = src.records
    frame = records[records["split"] == "test"]
    if frame.empty:
        frame = records
    return src.paths(frame), frame["label"].to_numpy().astype(int)


def _keras_probabilities(bundle_path: Path, files: list[Path], progress: bool) -> tuple[pd.DataFrame, str]:
    from skinlesion.evaluation.generalise import stage1_probabilities
    from skinlesion.serving.inference import Predictor

    # Stage-1 bundles: the head on cached backbone features gives the Keras model's numbers
    # (a test checks the equality against the Predictor) in seconds instead of an hour.
    fast = stage1_probabilities(bundle_path, files, progress=progress)
    if fast is not None:
        return fast, "keras (head on cached stage-1 features, equal to the Keras Predictor)"
    return Predictor.from_bundle(bundle_path).predict_batch(files, progress=progress), "keras (Predictor)"


def one_image_latency(bundle_path: Path, backends: Sequence[str], image: Path | None, runs: int = 20) -> dict[str, Any]:
    """p50/p95 ms of ``Predictor.predict`` on one image for each backend (served TTA), interleaved
    round by round so that load from other jobs hits every backend alike."""
    from skinlesion.data.intake import load_for_model, read_file_bytes
    from skinlesion.serving.inference import Predictor

    predictors = {b: Predictor.from_bundle(bundle_path, backend=b) for b in backends}
    size = next(iter(predictors.values())).input_size
    arr = (load_for_model(read_file_bytes(image), size) if image is not None
           else np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    for p in predictors.values():  # warm-up: graph tracing, interpreter allocation
        p.predict(arr)
    times: dict[str, list[float]] = {b: [] for b in backends}
    load = os.getloadavg()[0]
    for _ in range(runs):
        for b, p in predictors.items():
            t0 = time.perf_counter()
            p.predict(arr)
            times[b].append(1000 * (time.perf_counter() - t0))
    out: dict[str, Any] = {b: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}
                           for b, t in times.items()}
    out.update(runs=runs, tta=next(iter(predictors.values())).default_tta, load_average=[load, os.getloadavg()[0]])
    return out


def compare_export(bundle_path: str | os.PathLike[str], variant: str, sources: Sequence[str], *,
                   latency_runs: int = 20, n_resamples: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Keras vs the export ``variant`` (``tflite``, ``tflite-dynamic``) of a bundle on ``sources``."""
    from skinlesion.bundle.format import load
    from skinlesion.metrics import stats
    from skinlesion.serving.backends import MANIFEST_FILE, PARITY_FILE, TFLITE_FILE, export_folder, verify_export
    from skinlesion.serving.inference import Predictor

    bundle_path = Path(bundle_path)
    bundle = load(bundle_path)
    if bundle.meta.decision is None:
        raise DataError(f"{bundle_path} has no frozen decision threshold")
    folder = export_folder(bundle.path, variant)
    verify_export(folder, bundle)
    n_resamples = stats.N_BOOTSTRAP if n_resamples is None else n_resamples
    threshold = float(bundle.meta.decision.threshold)
    exported = Predictor.from_bundle(bundle_path, backend=variant)
    keras_bytes = (bundle.path / MODEL_FILE).stat().st_size
    export_bytes = (folder / TFLITE_FILE).stat().st_size
    report: dict[str, Any] = {
        "bundle": bundle.meta.run_id, "bundle_path": config.display_path(bundle.path), "variant": variant,
        "manifest": read_json(folder / MANIFEST_FILE), "parity": read_json(folder / PARITY_FILE),
        "size": {"keras_bytes": keras_bytes, "export_bytes": export_bytes, "ratio": export_bytes / keras_bytes},
        "threshold": threshold, "sources": {},
    }
    float_file = export_folder(bundle.path, "tflite") / TFLITE_FILE
    if variant != "tflite" and float_file.is_file():
        report["size"]["ratio_vs_float_tflite"] = export_bytes / float_file.stat().st_size
    first_image: Path | None = None
    for source in sources:
        files, labels = evaluation_files(source)
        t0 = time.perf_counter()
        ref, how = _keras_probabilities(bundle_path, files, progress)
        t1 = time.perf_counter()
        exp = exported.predict_batch(files, progress=progress)
        t2 = time.perf_counter()
        ok = (ref["error"].fillna("") == "").to_numpy() & (exp["error"].fillna("") == "").to_numpy()
        if first_image is None and ok.any():  # the latency image: one both scorers could read
            first_image = files[int(np.flatnonzero(ok)[0])]
        y = labels[ok]
        pk, pe = ref["probability"].to_numpy()[ok], exp["probability"].to_numpy()[ok]
        test = stats.paired_auc_test(y, pe, pk, n_resamples=n_resamples)
        policy = bundle.meta.decision
        agree = np.mean([policy.decide(float(a)) == policy.decide(float(b)) for a, b in zip(pk, pe)])
        dp = np.abs(pe - pk)
        entry = {
            "n": int(ok.sum()), "n_malignant": int(y.sum()), "n_unreadable": int((~ok).sum()),
            "keras_scored_by": how,
            "auc_keras": test["auc_b"], "auc_export": test["auc_a"], "auc_change": test["diff"],
            "auc_change_ci": [test["ci_low"], test["ci_high"]], "delong_p": test["p_value"],
            "max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean()),
            "decision_agreement": float(agree),
            "sensitivity_keras": float(np.mean(pk[y == 1] >= threshold)),
            "sensitivity_export": float(np.mean(pe[y == 1] >= threshold)),
            "specificity_keras": float(np.mean(pk[y == 0] < threshold)),
            "specificity_export": float(np.mean(pe[y == 0] < threshold)),
            "wall_s": {"keras": t1 - t0, "export": t2 - t1},
        }
        report["sources"][source] = entry
        log.info("%s on %s (n=%d): AUC keras %.4f, %s %.4f (change %+.4f)", variant, source, entry["n"],
                 entry["auc_keras"], variant, entry["auc_export"], entry["auc_change"])
    latency = one_image_latency(bundle_path, ["keras", variant], first_image, runs=latency_runs)
    latency["ratio_p50"] = latency[variant]["p50_ms"] / latency["keras"]["p50_ms"]
    report["latency"] = latency
    return report


def write_comparison(report: dict[str, Any], out: str | os.PathLike[str] | None = None) -> Path:
    """Write :func:`compare_export`'s report (strict JSON), by default to
    ``reports/export/<run-id>/<variant>.json``."""
    path = Path(out) if out else config.reports_dir() / "export" / report["bundle"] / f"{report['variant']}.json"
    return write_json(path, report)

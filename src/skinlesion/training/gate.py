"""Fit the image-type gate of a bundle and store it beside the model.

The gate reads the bundle's own pooled features (what the Predictor computes anyway), so it is
fitted per bundle: dermoscopic images from the bundle's training and validation rows, the
training and validation patients of PAD-UFES-20 (clinical photos) and of the generated non-skin
set. Test patients and test pictures are never seen, so ``skinlesion gate evaluate`` can report
on them.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.bundle.format import Bundle, BundleError, add_to_bundle, load
from skinlesion.data.datasets import DataError
from skinlesion.data.image_types import clinical_frame, dermoscopic_frame, nonskin_frame
from skinlesion.models.gate import IMAGE_TYPES, ImageTypeGate, fit_gate

GATE_FILE = "gate.npz"


def bundle_features(bundle: Bundle, files: list[str] | list[Path], *, progress: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """The bundle's pooled features (its ``feature_layer``) of each file: (features, ok, errors).

    Frozen-backbone bundles share the feature cache of their backbone; fine-tuned ones cache
    under their own run id (their features are their own).
    """
    import keras

    from skinlesion.models.features import extract_features

    meta = bundle.meta
    model = keras.Model(bundle.model.input, bundle.model.get_layer(meta.feature_layer).output)
    cc = bool(meta.training.config.get("colour_constancy"))
    frozen = meta.stage == "head" and meta.weights not in (None, "", "random")
    tag = meta.weights if frozen else (f"{meta.weights}-{meta.run_id}" if meta.weights not in (None, "random") else None)
    feats, ok, errors = extract_features(model, [str(f) for f in files], backbone=f"{meta.backbone}{'+sog' if cc else ''}",
                                         weights_tag=tag, views=("id",), progress=progress)
    return feats[:, 0], ok, errors


def gate_training_frame(dermoscopic: pd.DataFrame, *, seed: int = 42) -> pd.DataFrame:
    """Train/val/test rows of all three kinds; ``dermoscopic`` are :func:`dermoscopic_frame` rows."""
    return pd.concat([dermoscopic, clinical_frame(seed=seed), nonskin_frame(seed=seed)], ignore_index=True)


def fit_on_frame(frame: pd.DataFrame, feats: np.ndarray, ok: np.ndarray, **kwargs: Any) -> ImageTypeGate:
    """Fit on the ``train`` rows, calibrate and set the threshold on the ``val`` rows."""
    y = frame["kind"].map({k: i for i, k in enumerate(IMAGE_TYPES)}).to_numpy()
    tr = ok & (frame["split"] == "train").to_numpy()
    va = ok & (frame["split"] == "val").to_numpy()
    return fit_gate(feats[tr], y[tr], feats[va], y[va], classes=IMAGE_TYPES, **kwargs)


def attach_gate(bundle_path: str | os.PathLike[str], *, seed: int = 42, progress: bool = False) -> dict[str, Any]:
    """Fit the gate for a single bundle and add ``gate.npz`` + a ``gate`` entry to its bundle.json."""
    from skinlesion.data.training_data import roots_for

    b = load(bundle_path)
    if b.kind != "single":
        raise BundleError(f"{b.path} is an ensemble; fit the gate on its first member (the ensemble uses it)")
    splits = b.path / "splits.csv"
    if not splits.is_file():
        raise BundleError(f"{b.path} has no splits.csv, so its training images are unknown")
    table = pd.read_csv(splits)
    table = table[table["split"].isin(["train", "val"])]
    derm = dermoscopic_frame(table, roots_for(table, b.meta.training.data_dir))
    frame = gate_training_frame(derm, seed=seed)
    feats, ok, _errors = bundle_features(b, frame["path"].tolist(), progress=progress)
    if not ok.any():
        raise DataError("no image of the gate's training set could be read")
    gate = fit_on_frame(frame, feats, ok, seed=seed)
    counts = {f"{k}:{s}": int(((frame["kind"] == k) & (frame["split"] == s) & ok).sum())
              for k in IMAGE_TYPES for s in ("train", "val")}
    entry = {
        "file": GATE_FILE, "classes": list(gate.classes), "threshold": gate.threshold,
        "temperature": gate.temperature, "method": "logistic regression on pooled features (balanced classes), "
        "temperature-scaled; dermoscopic when calibrated P(dermoscopic) >= threshold",
        "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "images": counts, "seed": seed,
    }
    add_to_bundle(b.path, {GATE_FILE: gate.save}, {"gate": entry})
    return entry

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


# The settings a gate is fitted with. ``views``: the views of each training image (extra views
# are augmentation; the gate always reads the plain view at prediction and validation time);
# ``balance_sources``: each dermoscopic source weighs the same in training; ``max_false_flag``:
# the quantile of validation P(dermoscopic) that sets the threshold. ``GATE_SETTINGS`` is the
# candidate that ``skinlesion gate evaluate`` selects by leave-one-source-out on the training
# sources (reports/gate/<run>/gate.json, "selection"); a test keeps the two in step.
GATE_CANDIDATES: dict[str, dict[str, Any]] = {
    "C=0.05": {"c": 0.05},
    "C=0.01": {"c": 0.01},
    "C=0.3": {"c": 0.3},
    "C=0.05, flipped copies": {"c": 0.05, "views": ("id", "fh")},
    "C=0.05, sources weighted equally": {"c": 0.05, "balance_sources": True},
    "C=0.05, threshold at 0.1 % of validation": {"c": 0.05, "max_false_flag": 0.001},
}
GATE_SETTINGS = "C=0.01"


def settings_of(name: str) -> dict[str, Any]:
    """The full settings of a candidate (defaults filled in)."""
    if name not in GATE_CANDIDATES:
        raise ValueError(f"unknown gate settings {name!r}; choose from {', '.join(GATE_CANDIDATES)}")
    return {"c": 0.05, "views": ("id",), "balance_sources": False, "max_false_flag": 0.005,
            **GATE_CANDIDATES[name]}


def bundle_features(bundle: Bundle, files: list[str] | list[Path], *, views: tuple[str, ...] = ("id",),
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """The bundle's pooled features (its ``feature_layer``) of each file and view:
    (features (n, n_views, d), ok, errors).

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
    return extract_features(model, [str(f) for f in files], backbone=f"{meta.backbone}{'+sog' if cc else ''}",
                            weights_tag=tag, views=views, progress=progress)


def gate_training_frame(dermoscopic: pd.DataFrame, *, seed: int = 42) -> pd.DataFrame:
    """Train/val/test rows of all three kinds; ``dermoscopic`` are :func:`dermoscopic_frame` rows."""
    return pd.concat([dermoscopic, clinical_frame(seed=seed), nonskin_frame(seed=seed)], ignore_index=True)


def fit_on_frame(frame: pd.DataFrame, feats: np.ndarray, ok: np.ndarray, *, settings: str = GATE_SETTINGS,
                 seed: int = 42) -> ImageTypeGate:
    """Fit on the ``train`` rows, calibrate and set the threshold on the ``val`` rows.

    ``feats`` is (n, n_views, d) with at least the views of ``settings``, the plain view first.
    """
    cfg = settings_of(settings)
    nv = len(cfg["views"])
    if feats.ndim != 3 or feats.shape[1] < nv:
        raise ValueError(f"gate settings {settings!r} need features of {nv} view(s), got shape {feats.shape}")
    y = frame["kind"].map({k: i for i, k in enumerate(IMAGE_TYPES)}).to_numpy()
    tr = ok & (frame["split"] == "train").to_numpy()
    va = ok & (frame["split"] == "val").to_numpy()
    weight = np.ones(len(frame))
    if cfg["balance_sources"]:
        derm = tr & (frame["kind"] == "dermoscopic").to_numpy()
        counts = frame.loc[derm, "source"].value_counts()
        per_source = derm.sum() / (len(counts) * counts)
        weight[derm] = frame.loc[derm, "source"].map(per_source).to_numpy()
    x_tr = feats[tr, :nv].reshape(-1, feats.shape[2])
    return fit_gate(x_tr, np.repeat(y[tr], nv), feats[va, 0], y[va], classes=IMAGE_TYPES, c=cfg["c"],
                    max_false_flag=cfg["max_false_flag"], sample_weight=np.repeat(weight[tr], nv), seed=seed)


def attach_gate(bundle_path: str | os.PathLike[str], *, settings: str = GATE_SETTINGS, seed: int = 42,
                progress: bool = False) -> dict[str, Any]:
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
    feats, ok, _errors = bundle_features(b, frame["path"].tolist(), views=settings_of(settings)["views"],
                                         progress=progress)
    if not ok.any():
        raise DataError("no image of the gate's training set could be read")
    gate = fit_on_frame(frame, feats, ok, settings=settings, seed=seed)
    counts = {f"{k}:{s}": int(((frame["kind"] == k) & (frame["split"] == s) & ok).sum())
              for k in IMAGE_TYPES for s in ("train", "val")}
    entry = {
        "file": GATE_FILE, "classes": list(gate.classes), "threshold": gate.threshold,
        "temperature": gate.temperature, "method": "logistic regression on pooled features (balanced classes), "
        "temperature-scaled; dermoscopic when calibrated P(dermoscopic) >= threshold",
        "settings": settings,
        "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "images": counts, "seed": seed,
    }
    add_to_bundle(b.path, {GATE_FILE: gate.save}, {"gate": entry})
    return entry

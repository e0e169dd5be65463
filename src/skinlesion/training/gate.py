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

from skinlesion import config
from skinlesion.bundle.format import Bundle, BundleError, add_to_bundle, load
from skinlesion.data.datasets import DataError
from skinlesion.data.image_types import clinical_frame, dermoscopic_frame, nonskin_frame
from skinlesion.models.gate import IMAGE_TYPES, ImageTypeGate, fit_gate

GATE_FILE = "gate.npz"


# The settings a gate is fitted with. ``balance_sources``: each dermoscopic source weighs the
# same in training; ``max_false_flag``: the quantile of validation P(dermoscopic) that sets the
# threshold. ``GATE_SETTINGS`` is the candidate that ``skinlesion gate evaluate`` selects by
# leave-one-source-out on the training sources (reports/gate/<run>/gate.json, "selection"); a
# test keeps the two in step. Which views the gate reads is not a candidate: it reads what the
# bundle serves (``BundleMeta.served_views``).
GATE_CANDIDATES: dict[str, dict[str, Any]] = {
    "C=0.05": {"c": 0.05},
    "C=0.01": {"c": 0.01},
    "C=0.3": {"c": 0.3},
    "C=0.05, sources weighted equally": {"c": 0.05, "balance_sources": True},
    "C=0.05, threshold at 0.1 % of validation": {"c": 0.05, "max_false_flag": 0.001},
}
GATE_SETTINGS = "C=0.05, sources weighted equally"


def settings_of(name: str) -> dict[str, Any]:
    """The full settings of a candidate (defaults filled in)."""
    if name not in GATE_CANDIDATES:
        raise ValueError(f"unknown gate settings {name!r}; choose from {', '.join(GATE_CANDIDATES)}")
    return {"c": 0.05, "balance_sources": False, "max_false_flag": 0.005, **GATE_CANDIDATES[name]}


def bundle_features(bundle: Bundle, files: list[str] | list[Path], *, views: tuple[str, ...] = ("id",),
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """The bundle's pooled features (its ``feature_layer``) of each file and view:
    (features (n, n_views, d), ok, errors).

    Frozen-backbone bundles share the feature cache of their backbone; fine-tuned ones cache
    under their own run id (their features are their own).
    """
    import keras

    from skinlesion.models.backbones import feature_key, front_end
    from skinlesion.models.features import extract_features

    meta = bundle.meta
    model = keras.Model(bundle.model.input, bundle.model.get_layer(meta.feature_layer).output)
    frozen = meta.stage == "head" and meta.weights not in (None, "", "random")
    tag = meta.weights if frozen else (f"{meta.weights}-{meta.run_id}" if meta.weights not in (None, "random") else None)
    return extract_features(model, [str(f) for f in files], backbone=feature_key(str(meta.backbone), **front_end(meta.training.config)),
                            weights_tag=tag, views=views, progress=progress)


def gate_training_frame(dermoscopic: pd.DataFrame, *, seed: int = 42) -> pd.DataFrame:
    """Train/val/test rows of all three kinds; ``dermoscopic`` are :func:`dermoscopic_frame` rows."""
    return pd.concat([dermoscopic, clinical_frame(seed=seed), nonskin_frame(seed=seed)], ignore_index=True)


def fit_on_frame(frame: pd.DataFrame, plain: np.ndarray, read: np.ndarray, ok: np.ndarray, *,
                 settings: str = GATE_SETTINGS, views: tuple[str, ...] = ("id",), seed: int = 42) -> ImageTypeGate:
    """Fit on the ``train`` rows' plain-view features, calibrate and set the threshold on the
    ``val`` rows' ``read`` features (the mean over ``views``, what the Predictor will read).

    The gate is linear, so reading the mean features is averaging its logits over the views: test-
    time augmentation of the gate, calibrated on exactly what it reads. Only validation rows need
    the extra views (training rows use ``plain``; ``read`` may hold anything there).
    """
    cfg = settings_of(settings)
    if plain.shape != read.shape or plain.ndim != 2 or len(plain) != len(frame):
        raise ValueError(f"plain and read features must both be (n, d) for {len(frame)} rows; got "
                         f"{plain.shape} and {read.shape}")
    y = frame["kind"].map({k: i for i, k in enumerate(IMAGE_TYPES)}).to_numpy()
    tr = ok & (frame["split"] == "train").to_numpy()
    va = ok & (frame["split"] == "val").to_numpy()
    weight = np.ones(len(frame))
    if cfg["balance_sources"]:
        derm = tr & (frame["kind"] == "dermoscopic").to_numpy()
        counts = frame.loc[derm, "source"].value_counts()
        per_source = derm.sum() / (len(counts) * counts)
        weight[derm] = frame.loc[derm, "source"].map(per_source).to_numpy()
    return fit_gate(plain[tr], y[tr], read[va], y[va], classes=IMAGE_TYPES, c=cfg["c"],
                    max_false_flag=cfg["max_false_flag"], sample_weight=weight[tr], seed=seed, views=views)


def gate_inputs(bundle: Bundle, files: list[str], need_read: np.ndarray, views: tuple[str, ...], *,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plain, read, ok) for :func:`fit_on_frame`: the plain view of every file, and the mean
    over ``views`` where ``need_read`` (elsewhere a copy of the plain view), so that the extra
    views are computed only for the rows that are read (validation and scored rows)."""
    if not views or views[0] != "id":
        raise ValueError(f"a gate reads the plain view first; got views {views}")
    plain, ok, _ = bundle_features(bundle, files, views=("id",), progress=progress)
    plain = plain[:, 0]
    read = plain.copy()
    rows = np.flatnonzero(np.asarray(need_read, dtype=bool) & ok)
    if len(views) > 1 and len(rows):
        more, ok_more, _ = bundle_features(bundle, [files[i] for i in rows], views=views, progress=progress)
        read[rows] = more.mean(axis=1)
        ok[rows] &= ok_more
    return plain, read, ok


def attach_gate(bundle_path: str | os.PathLike[str], *, settings: str = GATE_SETTINGS, seed: int = 42,
                data_dir: str | os.PathLike[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Fit the gate for a single bundle and add ``gate.npz`` + a ``gate`` entry to its bundle.json.

    The dermoscopic images are the bundle's own training and validation rows, under the sources'
    roots, or under ``data_dir`` (default: the folder recorded at training) for a single-root run.
    """
    from skinlesion.data.training_data import roots_for

    b = load(bundle_path)
    if b.meta.lesion_crop:
        # The gate tells dermoscopy from other pictures by the whole image; a crop hides that.
        raise BundleError(f"{b.path} reads lesion crops; fit the image-type gate on a bundle that reads whole "
                          "images (an ensemble's first such member)")
    if b.kind != "single":
        raise BundleError(f"{b.path} is an ensemble; fit the gate on its first member (the ensemble uses it)")
    splits = b.path / "splits.csv"
    if not splits.is_file():
        raise BundleError(f"{b.path} has no splits.csv, so its training images are unknown")
    table = pd.read_csv(splits)
    table = table[table["split"].isin(["train", "val"])]
    roots = roots_for(table, data_dir if data_dir is not None else b.meta.training.data_dir)
    derm = dermoscopic_frame(table, roots)
    if not any(Path(p).is_file() for p in derm["path"]):
        # Moved data, or a relative folder recorded by an older version and read from elsewhere.
        where = ", ".join(f"{name}: {config.display_path(root)}" for name, root in roots.items())
        raise DataError(f"none of the bundle's {len(derm)} training images is under {where}; if its dataset has "
                        "moved, say where it is now with --data-dir")
    frame = gate_training_frame(derm, seed=seed)
    views = b.meta.served_views
    plain, read, ok = gate_inputs(b, frame["path"].tolist(), (frame["split"] == "val").to_numpy(), views,
                                  progress=progress)
    if not ok.any():
        raise DataError("no image of the gate's training set could be read")
    gate = fit_on_frame(frame, plain, read, ok, settings=settings, views=views, seed=seed)
    counts = {f"{k}:{s}": int(((frame["kind"] == k) & (frame["split"] == s) & ok).sum())
              for k in IMAGE_TYPES for s in ("train", "val")}
    entry = {
        "file": GATE_FILE, "classes": list(gate.classes), "threshold": gate.threshold,
        "temperature": gate.temperature, "views": list(views),
        "method": f"logistic regression on pooled features (mean over {len(views)} view(s); balanced classes), "
        "temperature-scaled; dermoscopic when calibrated P(dermoscopic) >= threshold",
        "settings": settings,
        "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "images": counts, "seed": seed,
    }
    add_to_bundle(b.path, {GATE_FILE: gate.save}, {"gate": entry})
    return entry

"""What a training run learns from and is scored on: one split table over one or more roots.

Two ways in, one shape out (:class:`TrainingData`):

* :func:`multi_source_data` - several registered sources (``--sources kaggle,ham10000,isic2017``),
  audited for duplicates across all of them and split by groups (:mod:`skinlesion.data.splits`);
  ``holdout`` sources are read too but only ever evaluated on (leave-one-source-out).
* :func:`single_root_data` - one Kaggle-layout or folder-per-class root with a seeded
  stratified validation split written once to a splits file (the original behaviour).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.data.datasets import (
    DataError,
    is_kaggle_layout,
    load_or_create_splits,
    resolve_training_data,
)
from skinlesion.data.splits import SPLIT_TABLE_COLUMNS, check_no_leak, make_split_table

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Split table (``SPLIT_TABLE_COLUMNS``) plus the root of each source it names."""

    table: pd.DataFrame
    roots: dict[str, Path]
    sources: dict[str, str] = field(default_factory=dict)   # name -> fingerprint
    synthetic: bool = False
    fingerprint: str = ""
    data_dir: Path | None = None                             # single-root runs only
    splits_file: Path | None = None

    def part(self, split: str) -> pd.DataFrame:
        return self.table[self.table["split"] == split]

    def files(self, frame: pd.DataFrame) -> list[Path]:
        """Absolute image paths of rows of the table."""
        return [self.roots[s] / p for s, p in zip(frame["source"], frame["path"])]

    def describe(self) -> str:
        counts = self.table.groupby(["source", "split"]).size().unstack(fill_value=0)
        return ", ".join(f"{src}: " + " ".join(f"{k} {v}" for k, v in row.items() if v)
                         for src, row in counts.iterrows())


def multi_source_data(
    names: list[str],
    *,
    holdout: list[str] | tuple[str, ...] = (),
    val_fraction: float = 0.15,
    seed: int = 42,
    progress: bool = True,
    drop_copies_from: list[str] | tuple[str, ...] = (),
) -> TrainingData:
    """Read ``names`` (+ ``holdout``), audit duplicates across all of them, split by groups
    (``drop_copies_from``: :func:`~skinlesion.data.splits.make_split_table`)."""
    from skinlesion.data.audit import find_pairs, hash_images
    from skinlesion.data.sources import combined_records, load_source

    not_trained = sorted(set(drop_copies_from) - set(names))
    if not_trained:
        log.info("--drop-copies-from: %s not trained on here, left as it is", ", ".join(not_trained))
    overlap = set(names) & set(holdout)
    if overlap:
        raise DataError(f"source(s) {sorted(overlap)} cannot be both trained on and held out")
    sources = [load_source(n) for n in [*names, *holdout]]
    for s in sources:
        if s.info.modality != "dermoscopic":
            raise DataError(f"{s.name} holds {s.info.modality} photos, not dermoscopy; this classifier is "
                            "trained on dermoscopic images only")
    records = combined_records(sources)
    roots = {s.name: s.root for s in sources}
    table = hash_images([roots[s] / p for s, p in zip(records["source"], records["path"])], progress=progress)
    pairs = find_pairs(table)
    split = make_split_table(records, pairs, train_sources=names, val_fraction=val_fraction, seed=seed,
                             drop_copies_from=drop_copies_from)
    check_no_leak(split)
    fps = {s.name: s.fingerprint() for s in sources}
    import hashlib

    fp = hashlib.sha256("|".join(f"{k}:{v}" for k, v in sorted(fps.items())).encode()).hexdigest()[:16]
    return TrainingData(split, roots, fps, fingerprint=fp)


def single_root_data(
    data_dir: str | os.PathLike[str] | None = None,
    splits_file: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.15,
    seed: int = 42,
) -> TrainingData:
    """One Kaggle-layout or folder-per-class root, with the splits file reused across runs."""
    from skinlesion.data.synth import is_synthetic

    root = resolve_training_data(data_dir)
    splits, file = load_or_create_splits(root, splits_file, val_fraction=val_fraction, seed=seed)
    name = "kaggle" if is_kaggle_layout(root) else f"folder:{root.name}"
    table = pd.DataFrame({
        "source": name, "image_id": splits["path"], "path": splits["path"], "label": splits["label"].astype(int),
        "diagnosis": np.where(splits["label"].to_numpy() == 1, "malignant", "benign"),
        "group": name + ":" + splits["path"], "split": splits["split"],
        "reason": np.where(splits["split"] == "val", f"stratified validation carve-out ({val_fraction:.0%})",
                           np.where(splits["split"] == "test", "official test split", "training")),
    })[SPLIT_TABLE_COLUMNS]
    fp = Path(file).stem.split("-")[0]
    return TrainingData(table, {name: root}, {name: fp}, synthetic=is_synthetic(root), fingerprint=fp,
                        data_dir=root, splits_file=Path(file))


def source_balanced_weights(frame: pd.DataFrame) -> np.ndarray:
    """Per-image weights that give every (source, label) cell the same total weight.

    Each source then counts equally whatever its size, and each class equally within it; the
    weights average to 1 so learning rates keep their meaning.
    """
    cell = frame.groupby(["source", "label"])["path"].transform("size").to_numpy(dtype=float)
    n_cells = frame.groupby(["source", "label"]).ngroups
    w = len(frame) / (n_cells * cell)
    return w / w.mean()


def class_balanced_weights(frame: pd.DataFrame) -> np.ndarray:
    """Per-image weights that give both classes the same total weight."""
    counts = frame["label"].value_counts()
    w = frame["label"].map(lambda y: len(frame) / (2.0 * counts[y])).to_numpy(dtype=float)
    return w / w.mean()


def roots_for(table: pd.DataFrame, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Where each source of a saved split table lives now (``data_dir`` overrides a single-root run)."""
    roots: dict[str, Path] = {}
    for name in table["source"].unique():
        if data_dir is not None:
            roots[name] = Path(data_dir)
        elif name in config.SOURCE_FOLDER:
            roots[name] = config.source_root(name)
        else:
            raise DataError(f"the split table names source {name!r}; pass --data-dir to say where it is")
    return roots

"""What the image-type gate learns from and is scored on: one table of images with their type.

Three kinds of image, each split so that nothing related is on both sides:

* ``dermoscopic``: the rows of a grouped split table (:mod:`skinlesion.data.splits`) of the
  dermoscopic sources, with their own train / val / test;
* ``clinical``: PAD-UFES-20 smartphone photos, split by ``patient_id``;
* ``other``: the generated non-skin set (:mod:`skinlesion.data.nonskin`), split by photograph
  for crops of real photos and by draw for generated pictures.

Every row has ``path`` (absolute), ``kind``, ``source``, ``group`` and ``split``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.data.datasets import DataError

GATE_COLUMNS = ["path", "kind", "source", "group", "split"]
CLINICAL_FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
NONSKIN_PER_FAMILY = 120


def _unit(text: str, seed: int) -> float:
    """A stable number in [0, 1) for ``text`` (splits that do not depend on row order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{text}".encode()).digest()[:8], "little") / 2.0**64


def split_by_group(groups: pd.Series, fractions: dict[str, float], seed: int = 42) -> np.ndarray:
    """Assign each group wholly to a split, in proportion to ``fractions`` (by group count)."""
    edges = np.cumsum(list(fractions.values()))
    names = list(fractions)
    lookup = {g: names[min(int(np.searchsorted(edges, _unit(str(g), seed), side="right")), len(names) - 1)]
              for g in groups.unique()}
    return groups.map(lookup).to_numpy()


def dermoscopic_frame(table: pd.DataFrame, roots: dict[str, Path]) -> pd.DataFrame:
    """Rows of a split table that are trained, validated or scored on, as gate rows."""
    keep = table[table["split"].isin(["train", "val", "test"])]
    if keep.empty:
        raise DataError("the split table has no dermoscopic train/val/test rows for the gate")
    return pd.DataFrame({
        "path": [str(roots[s] / p) for s, p in zip(keep["source"], keep["path"])],
        "kind": "dermoscopic", "source": keep["source"].to_numpy(), "group": keep["group"].to_numpy(),
        "split": keep["split"].to_numpy(),
    })[GATE_COLUMNS]


def clinical_frame(root: str | os.PathLike[str] | None = None, *, seed: int = 42) -> pd.DataFrame:
    """PAD-UFES-20 photos split by patient (``CLINICAL_FRACTIONS`` of the patients)."""
    from skinlesion.data.sources import load_source

    src = load_source("pad_ufes_20", root)
    r = src.records
    if r.empty:
        raise DataError(f"pad_ufes_20 at {config.display_path(src.root)} holds no images")
    return pd.DataFrame({
        "path": [str(p) for p in src.paths(r)], "kind": "clinical", "source": "pad_ufes_20",
        "group": r["group"].to_numpy(), "split": split_by_group(r["group"], CLINICAL_FRACTIONS, seed),
    })[GATE_COLUMNS]


def nonskin_frame(out_dir: str | os.PathLike[str] | None = None, *,
                  per_family: int = NONSKIN_PER_FAMILY, seed: int = 42) -> pd.DataFrame:
    """The generated non-skin set (written once under the cache), split by photograph or draw.

    Photographs: a sixth of them validate, a third are held out for test. Generated pictures:
    the first half of each family trains, the next 15 % validate, the rest (35 %) are test.
    """
    from skinlesion.data.nonskin import write_nonskin

    root = Path(out_dir) if out_dir else config.cache_dir() / "nonskin"
    rows = []
    for path, item in write_nonskin(root, per_family):
        if item.family == "photo":
            u = _unit(item.group, seed)
            split = "test" if u < 1 / 3 else "val" if u < 1 / 2 else "train"
        else:
            i = int(item.name.rsplit("-", 1)[1])
            split = "train" if i < 0.5 * per_family else "val" if i < 0.65 * per_family else "test"
        rows.append({"path": str(path), "kind": "other", "source": f"nonskin:{item.family}",
                     "group": item.group, "split": split})
    return pd.DataFrame(rows, columns=GATE_COLUMNS)

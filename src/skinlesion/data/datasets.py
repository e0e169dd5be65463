"""Dataset discovery, splits and download: the data stage of the pipeline.

Reads the Kaggle layout ``<root>/{train,test}/{benign,malignant}/*`` or a plain
folder-per-class layout ``<root>/{benign,malignant}/*``. Raw data is never modified.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion import CLASS_NAMES, config

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def image_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``root`` (recursively) with an image suffix, sorted."""
    return sorted(f for f in Path(root).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
KAGGLE_HANDLE = "hasnainjaved/melanoma-skin-cancer-dataset-of-10000-images"
SPLIT_COLUMNS = ["path", "label", "split"]


class DataError(ValueError):
    """A dataset folder that cannot be used, with a message that says how to fix it."""


@dataclass
class FolderScan:
    """Images found under one folder-per-class directory."""

    root: Path
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # files that are not images by suffix

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts)}


def _class_dirs(root: Path) -> dict[str, Path]:
    """Map class name -> sub-folder, matching names case-insensitively."""
    found = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    return {name: found[name] for name in CLASS_NAMES if name in found}


def scan_class_folders(root: str | os.PathLike[str], *, require_both: bool = True) -> FolderScan:
    """List the images of ``root/{benign,malignant}``; non-image files are skipped and counted.

    ``require_both=False`` accepts a one-class folder (an external evaluation set); training
    always needs both classes.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    dirs = _class_dirs(root)
    missing = [c for c in CLASS_NAMES if c not in dirs]
    if not dirs:
        raise DataError(
            f"{root} has no class folders: expected sub-folders {list(CLASS_NAMES)} "
            "(or train/ and test/ each holding them)"
        )
    if missing and require_both:
        raise DataError(
            f"{root} is missing the class folder(s) {missing}; a binary classifier needs images of "
            f"both classes in {list(CLASS_NAMES)}"
        )
    scan = FolderScan(root=root)
    for label, name in enumerate(CLASS_NAMES):
        if name not in dirs:
            continue
        for p in sorted(dirs[name].rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES:
                scan.paths.append(p)
                scan.labels.append(label)
            else:
                scan.skipped.append(p)
    counts = scan.class_counts
    if not scan.paths:
        raise DataError(f"{root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if require_both and min(counts.values()) == 0:
        empty = [k for k, v in counts.items() if v == 0]
        raise DataError(f"{root}: class folder(s) {empty} contain no images; both classes are needed")
    if scan.skipped:
        warnings.warn(f"{root}: skipped {len(scan.skipped)} non-image file(s)", stacklevel=2)
    return scan


def is_kaggle_layout(root: str | os.PathLike[str]) -> bool:
    """True when ``root`` has ``train/`` (and usually ``test/``) split folders."""
    return (Path(root) / "train").is_dir()


def dataset_fingerprint(paths: list[Path], root: Path) -> str:
    """A cheap identity of a file list: sha256 over relative paths and sizes."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def build_splits(
    root: str | os.PathLike[str], *, val_fraction: float = 0.15, seed: int = 42
) -> pd.DataFrame:
    """Table of every image with its label and split (train / val / test).

    The validation split is a seeded, stratified carve-out of train. A root without
    ``test/`` gets no test split (evaluate such data with ``--external``).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    root = Path(root)
    train_root = root / "train" if is_kaggle_layout(root) else root
    train = scan_class_folders(train_root)
    if min(train.class_counts.values()) < 2:
        raise DataError(f"{train_root}: need at least 2 images per class to carve a validation split")
    idx = np.arange(len(train.paths))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=train.labels)
    split = np.empty(len(idx), dtype=object)
    split[tr], split[va] = "train", "val"
    frames = [pd.DataFrame({"path": train.paths, "label": train.labels, "split": split})]
    if is_kaggle_layout(root) and (root / "test").is_dir():
        test = scan_class_folders(root / "test", require_both=False)
        frames.append(pd.DataFrame({"path": test.paths, "label": test.labels, "split": "test"}))
    df = pd.concat(frames, ignore_index=True)
    df["path"] = [Path(p).relative_to(root).as_posix() for p in df["path"]]
    return df[SPLIT_COLUMNS]


def load_or_create_splits(
    root: str | os.PathLike[str],
    splits_file: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.15,
    seed: int = 42,
) -> tuple[pd.DataFrame, Path]:
    """Read the splits CSV for this dataset, or write it once; every backbone reuses it.

    The default file lives in ``models/splits/`` and is named after the dataset fingerprint,
    the seed and the validation fraction, so a changed dataset never reuses a stale split.
    """
    root = Path(root)
    if splits_file is None:
        fresh = build_splits(root, val_fraction=val_fraction, seed=seed)
        fp = dataset_fingerprint([root / p for p in fresh["path"]], root)
        splits_file = config.models_dir() / "splits" / f"{fp}-seed{seed}-val{int(val_fraction * 100)}.csv"
        if not Path(splits_file).exists():
            _atomic_write_csv(fresh, Path(splits_file))
            return fresh, Path(splits_file)
    splits_file = Path(splits_file)
    if not splits_file.exists():
        df = build_splits(root, val_fraction=val_fraction, seed=seed)
        _atomic_write_csv(df, splits_file)
        return df, splits_file
    df = pd.read_csv(splits_file)
    if list(df.columns) != SPLIT_COLUMNS:
        raise DataError(f"{splits_file} is not a splits file (columns {list(df.columns)} != {SPLIT_COLUMNS})")
    missing = [p for p in df["path"] if not (root / p).exists()]
    if missing:
        raise DataError(
            f"{splits_file} lists {len(missing)} file(s) absent from {root} (e.g. {missing[0]}); "
            "delete the splits file to rebuild it for this dataset"
        )
    return df, splits_file


def _atomic_write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def resolve_training_data(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The dataset root to use, checked to exist with a message that says what to do."""
    root = config.resolve_data_dir(explicit)
    if not root.exists():
        raise DataError(
            f"no dataset at {root}. Point --data-dir or SKINLESION_DATA_DIR at the Kaggle "
            "'melanoma_cancer_dataset' folder, run `skinlesion data download`, or make a synthetic "
            "one with `skinlesion data synth`."
        )
    return root


# --- download ---------------------------------------------------------------------------

MANUAL_DOWNLOAD_HELP = (
    "Download it by hand from https://www.kaggle.com/datasets/{handle} (free Kaggle account), "
    "unzip it, and put the 'melanoma_cancer_dataset' folder (with train/ and test/) at {dest}, "
    "or point SKINLESION_DATA_DIR at it."
)


def _online(host: str = "www.kaggle.com", port: int = 443, timeout: float = 3.0) -> bool:
    # kagglehub retries for a long time when offline; one short TCP probe lets us fail fast.
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def download(dest: str | os.PathLike[str] | None = None) -> Path:
    """Fetch the Kaggle dataset with kagglehub into ``data/raw/melanoma_cancer_dataset``."""
    dest = Path(dest) if dest else config.default_raw_dataset()
    help_text = MANUAL_DOWNLOAD_HELP.format(handle=KAGGLE_HANDLE, dest=dest)
    if dest.exists() and is_kaggle_layout(dest):
        return dest
    if not _online():
        raise DataError(f"cannot reach kaggle.com (offline?). {help_text}")
    try:
        import kagglehub

        cached = Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except Exception as exc:  # kagglehub raises many types (auth, HTTP, IO)
        raise DataError(f"kagglehub download failed: {exc}. {help_text}") from exc
    found = [p.parent for p in cached.rglob("train") if p.is_dir() and (p / "benign").is_dir()]
    if not found:
        raise DataError(f"downloaded files at {cached} do not contain train/benign. {help_text}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(found[0], tmp)
    os.replace(tmp, dest)
    return dest

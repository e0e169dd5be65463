"""Dataset discovery, splits and download: the data stage of the pipeline.

Reads the Kaggle layout ``<root>/{train,test}/{benign,malignant}/*`` or a plain
folder-per-class layout ``<root>/{benign,malignant}/*``. Raw data is never modified.
"""
from __future__ import annotations

import hashlib
import logging
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
log = logging.getLogger(__name__)


def _visible_files(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Regular files in ``folder`` (and below it unless ``recursive=False``), sorted, leaving out
    hidden files and everything under a hidden folder: tool litter (.DS_Store, ._x.jpg,
    .ipynb_checkpoints), never data."""
    found = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in found if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def image_files(root: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Every file under ``root`` (recursively; directly in it with ``recursive=False``) with an
    image suffix, sorted.

    Hidden files and anything under a hidden folder (``._x.jpg``, ``.ipynb_checkpoints``) are left
    out, as in :func:`scan_class_folders`; so are files whose name is not valid UTF-8, with a warning.
    """
    root = Path(root)
    _check_folder_name(root)
    files = [f for f in _visible_files(root, recursive=recursive) if f.suffix.lower() in IMAGE_SUFFIXES]
    bad = [f for f in files if not _is_utf8(f.relative_to(root).as_posix())]
    _warn_bad_names(root, bad)
    skip = set(bad)
    return [f for f in files if f not in skip]


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
    skipped: list[Path] = field(default_factory=list)  # non-images by suffix, and names that are not UTF-8
    bad_names: list[Path] = field(default_factory=list)  # the skipped files whose name is not UTF-8

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts)}


def _is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8, which ``os.fsdecode`` keeps as lone
    surrogates: they pass through pathlib but crash any later ``.encode()`` (hashes, CSV, JSON)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """``name`` safe to print and log: its raw bytes (``b'caf\\xe9.jpg'``) when it is not UTF-8."""
    return name if _is_utf8(name) else repr(os.fsencode(name))


def _check_folder_name(root: Path) -> None:
    # Every file under such a folder would carry the bad bytes into reports and bundles.
    if not _is_utf8(str(root)):
        raise DataError(f"the folder name {_shown(str(root))} is not valid UTF-8: rename it")


def _warn_bad_names(folder: Path, bad: list[Path]) -> None:
    """One warning per folder naming the files skipped because their name is not UTF-8."""
    if not bad:
        return
    names = [_shown(p.relative_to(folder).as_posix()) for p in bad]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    log.warning("%s: skipped %d file(s) whose name is not valid UTF-8: %s%s; rename them to use them",
                folder, len(bad), ", ".join(names[:5]), more)


def _visible_subdirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` not hidden by a leading dot (.ipynb_checkpoints, .git), sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def _class_dirs(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """(class name -> sub-folder, other visible sub-folders), matching class names case-insensitively.

    Two folders for one class (``benign/`` and ``Benign/``) are refused: keeping either would
    depend on directory order and silently drop the other's images.
    """
    subdirs = _visible_subdirs(root)
    dirs: dict[str, Path] = {}
    for name in CLASS_NAMES:
        same = [p for p in subdirs if p.name.lower() == name]
        if len(same) > 1:
            raise DataError(
                f"{root} has {len(same)} folders for the class {name!r}: {', '.join(p.name + '/' for p in same)} "
                f"(class folder names ignore case); merge them into one {name}/ folder"
            )
        if same:
            dirs[name] = same[0]
    return dirs, [p for p in subdirs if p.name.lower() not in CLASS_NAMES]


def _no_class_folders(root: Path, dataset_root: bool) -> str:
    """Why ``root`` cannot be read, worded for what the caller accepts."""
    splits = [s for s in ("train", "test") if (root / s).is_dir()]
    if dataset_root and splits == ["test"]:
        return (f"{root} has test/ but no train/: training needs {root / 'train'}/{{benign,malignant}}/ "
                "(test/ is optional)")
    if splits and not dataset_root:
        alts = [root / s for s in ("test", "train") if s in splits]
        hint = f"pass {alts[0]}" + (f" (or {alts[1]})" if len(alts) > 1 else "")
        return (f"{root} looks like a dataset root ({', '.join(s + '/' for s in splits)}), but this command reads "
                f"one folder-per-class set ({root}/benign, {root}/malignant): {hint}")
    also = " (or train/ and test/ each holding them)" if dataset_root else ""
    return f"{root} has no class folders: expected sub-folders {list(CLASS_NAMES)}{also}"


def scan_class_folders(
    root: str | os.PathLike[str], *, require_both: bool = True, dataset_root: bool = False
) -> FolderScan:
    """List the images of ``root/{benign,malignant}``; non-image files are skipped and counted.

    ``require_both=False`` accepts a one-class folder (an external evaluation set); training
    always needs both classes. ``dataset_root=True`` says the caller would also have taken a
    ``train/``+``test/`` root (it only words the error). Hidden files and everything under a
    hidden folder are ignored; other folders beside the class folders are ignored with a warning;
    files whose name is not valid UTF-8 are skipped with a warning.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    _check_folder_name(root)
    dirs, others = _class_dirs(root)
    missing = [c for c in CLASS_NAMES if c not in dirs]
    if not dirs:
        raise DataError(_no_class_folders(root, dataset_root))
    if missing and require_both:
        raise DataError(
            f"{root} is missing the class folder(s) {missing}; a binary classifier needs images of "
            f"both classes in {list(CLASS_NAMES)}"
        )
    if others:
        # Not an error: users keep other folders around, but they must know those are not read.
        log.warning("%s: ignored folder(s) %s; only %s are read", root,
                    ", ".join(_shown(p.name) + "/" for p in others), " and ".join(f"{c}/" for c in CLASS_NAMES))
    scan = FolderScan(root=root)
    for label, name in enumerate(CLASS_NAMES):
        if name not in dirs:
            continue
        for p in _visible_files(dirs[name]):
            if not _is_utf8(p.relative_to(root).as_posix()):
                scan.bad_names.append(p)
                scan.skipped.append(p)
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                scan.paths.append(p)
                scan.labels.append(label)
            else:
                scan.skipped.append(p)
    _warn_bad_names(root, scan.bad_names)
    n_other = len(scan.skipped) - len(scan.bad_names)
    if n_other:
        warnings.warn(f"{root}: skipped {n_other} non-image file(s)", stacklevel=2)
    counts = scan.class_counts
    if not scan.paths:
        raise DataError(f"{root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if require_both and min(counts.values()) == 0:
        empty = [k for k, v in counts.items() if v == 0]
        raise DataError(f"{root}: class folder(s) {empty} contain no images; both classes are needed")
    return scan


def warn_other_split_folders(root: Path) -> None:
    """Warn about visible folders beside ``train/`` and ``test/`` of a Kaggle-layout ``root``
    (``val/``, ``valid/``, ``extra/``): they are not read, and saying nothing would hide that."""
    others = [p for p in _visible_subdirs(root) if p.name not in ("train", "test")]
    if others:
        log.warning("%s: ignored folder(s) %s; only train/ and test/ are read", root,
                    ", ".join(_shown(p.name) + "/" for p in others))


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
    kaggle = is_kaggle_layout(root)
    if kaggle:
        warn_other_split_folders(root)
    train_root = root / "train" if kaggle else root
    train = scan_class_folders(train_root, dataset_root=not kaggle)
    if min(train.class_counts.values()) < 2:
        raise DataError(f"{train_root}: need at least 2 images per class to carve a validation split")
    idx = np.arange(len(train.paths))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=train.labels)
    split = np.empty(len(idx), dtype=object)
    split[tr], split[va] = "train", "val"
    frames = [pd.DataFrame({"path": train.paths, "label": train.labels, "split": split})]
    if kaggle and (root / "test").is_dir():
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

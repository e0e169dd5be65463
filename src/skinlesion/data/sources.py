"""Data sources: each public collection as one table of image records with a shared label map.

A :class:`Source` is a collection (the Kaggle set, HAM10000, ISIC 2017, PAD-UFES-20, or any
folder-per-class directory) read into a table with one row per image:

    source, image_id, path (relative to the source root), label (0 benign / 1 malignant),
    diagnosis (the set's own diagnosis), group (images of one lesion share it), split
    (the set's official split where it has one, else "train")

Every reader validates what it reads. Unusable input (no metadata file, an unknown
diagnosis, a duplicate id, a CSV row with two diagnoses) is a :class:`DataError`; rows that
merely cannot be used (an id in the CSV with no image file, an image file with no label)
are dropped *and counted* in ``Source.problems``, never silently. ``strict=True`` turns
those into errors as well.

Binary labels follow one mapping for every set (``../shared/README.md``, "Labels across
sets"): malignant = melanoma (incl. in situ), basal cell carcinoma, squamous cell carcinoma
incl. intraepithelial carcinoma, and HAM10000 ``akiec`` / PAD-UFES-20 ``ACK`` (actinic
keratoses grouped with intraepithelial carcinoma, as is conventional); benign = nevi,
seborrhoeic and other benign keratoses, solar lentigo, dermatofibroma, vascular lesions.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from skinlesion import CLASS_NAMES, config
from skinlesion.data.datasets import (
    DataError,
    image_files,
    is_kaggle_layout,
    scan_class_folders,
    warn_other_split_folders,
)

RECORD_COLUMNS = ["source", "image_id", "path", "label", "diagnosis", "group", "split"]

# The set's own diagnosis -> binary label. One table per set; anything else is an error.
HAM10000_LABELS = {"mel": 1, "bcc": 1, "akiec": 1, "nv": 0, "bkl": 0, "df": 0, "vasc": 0}
PAD_UFES_20_LABELS = {"MEL": 1, "BCC": 1, "SCC": 1, "ACK": 1, "NEV": 0, "SEK": 0}
ISIC2017_LABELS = {"melanoma": 1, "seborrheic_keratosis": 0, "nevus": 0}


@dataclass(frozen=True)
class SourceInfo:
    """What a collection is, where it comes from and the terms it is used under."""

    name: str
    title: str
    citation: str
    licence: str
    modality: str          # "dermoscopic" or "clinical" (ordinary photos)
    download: str          # how to get it by hand


@dataclass
class Source:
    """A collection read from disk: its description, root and one record per image."""

    info: SourceInfo
    root: Path
    records: pd.DataFrame
    problems: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    def paths(self, frame: pd.DataFrame | None = None) -> list[Path]:
        """Absolute paths of ``frame`` (default: every record)."""
        frame = self.records if frame is None else frame
        return [self.root / p for p in frame["path"]]

    def fingerprint(self) -> str:
        """A cheap identity of the records: sha256 over path, label and file size."""
        h = hashlib.sha256()
        for p, y in zip(self.records["path"], self.records["label"]):
            h.update(f"{p}\t{y}\t{(self.root / p).stat().st_size}\n".encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        """Counts per label and per split (what ``skinlesion data sources`` prints)."""
        r = self.records
        by_split = {s: {CLASS_NAMES[k]: int(v) for k, v in g["label"].value_counts().sort_index().items()}
                    for s, g in r.groupby("split", sort=True)}
        return {
            "source": self.name, "title": self.info.title, "modality": self.info.modality,
            "root": config.display_path(self.root), "images": len(r),
            "benign": int((r["label"] == 0).sum()), "malignant": int((r["label"] == 1).sum()),
            "groups": int(r["group"].nunique()), "splits": by_split,
            "diagnoses": {str(k): int(v) for k, v in r["diagnosis"].value_counts().items()},
            "problems": dict(self.problems), "licence": self.info.licence, "citation": self.info.citation,
        }


def _records(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    out = rows.assign(source=source)[RECORD_COLUMNS].reset_index(drop=True)
    out["label"] = out["label"].astype(int)
    dup = out["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{source}: duplicate image id(s) {sorted(out.loc[dup, 'image_id'].unique())[:5]}")
    return out


def _require(path: Path, what: str, source: str) -> None:
    if not path.exists():
        raise DataError(f"{source}: {what} not found at {path}. {INFO[source].download}")


def _image_files(folder: Path) -> dict[str, Path]:
    """image id (file stem) -> file, for the image files directly in ``folder`` (hidden files and
    names that are not UTF-8 left out, with a warning for the latter: :func:`image_files`)."""
    return {p.stem: p for p in image_files(folder, recursive=False)}


def _match_files(ids: pd.Series, files: dict[str, Path], source: str, problems: dict[str, int],
                 strict: bool, where: str) -> pd.Series:
    """Mask of CSV ids that have an image file; counts ids without one and files without a label."""
    has_file = ids.isin(files.keys())
    n_missing = int((~has_file).sum())
    n_unlabelled = len(set(files) - set(ids))
    if strict and (n_missing or n_unlabelled):
        raise DataError(f"{source}: {n_missing} id(s) in {where} have no image file "
                        f"(e.g. {ids[~has_file].head(3).tolist()}), {n_unlabelled} image file(s) have no label")
    if n_missing:
        problems["id without image file"] = problems.get("id without image file", 0) + n_missing
    if n_unlabelled:
        problems["image file without label"] = problems.get("image file without label", 0) + n_unlabelled
    return has_file


# --- readers ------------------------------------------------------------------------------

def read_kaggle(root: Path, *, strict: bool = False) -> Source:
    """Kaggle layout ``<root>/{train,test}/{benign,malignant}/*``; no lesion ids (each image is its own group)."""
    name = "kaggle"
    _require(root, "the Kaggle 'melanoma_cancer_dataset' folder", name)
    if not is_kaggle_layout(root):
        raise DataError(f"{name}: {root} has no train/ folder (expected train/ and test/ with benign/ and malignant/)")
    warn_other_split_folders(root)
    frames = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        scan = scan_class_folders(root / split, require_both=(split == "train"))
        rel = [p.relative_to(root).as_posix() for p in scan.paths]
        frames.append(pd.DataFrame({"image_id": rel, "path": rel, "label": scan.labels, "split": split}))
    df = pd.concat(frames, ignore_index=True)
    df["diagnosis"] = [CLASS_NAMES[y] for y in df["label"]]
    df["group"] = name + ":" + df["image_id"]
    return Source(INFO[name], root, _records(df, name))


def _metadata_source(root: Path, name: str, csv_name: str, *, id_col: str, dx_col: str, group_col: str,
                     labels: dict[str, int], strict: bool) -> Source:
    """A set described by one metadata CSV (id, diagnosis, group) beside an ``images/`` folder."""
    csv = root / csv_name
    _require(csv, csv_name, name)
    meta = _read_csv(csv, list(dict.fromkeys([group_col, id_col, dx_col])), name)
    unknown = sorted(set(meta[dx_col]) - set(labels))
    if unknown:
        raise DataError(f"{name}: unknown {dx_col} value(s) {unknown} in {csv_name}; known: {sorted(labels)}")
    problems: dict[str, int] = {}
    _require(root / "images", "the images/ folder", name)
    files = _image_files(root / "images")
    ids = meta[id_col].map(lambda v: Path(str(v)).stem)  # some sets list file names, some bare ids
    keep = _match_files(ids, files, name, problems, strict, csv_name)
    meta, ids = meta[keep], ids[keep]
    df = pd.DataFrame({
        "image_id": ids, "path": [files[i].relative_to(root).as_posix() for i in ids],
        "label": meta[dx_col].map(labels), "diagnosis": meta[dx_col],
        "group": name + ":" + meta[group_col].astype(str), "split": "train",
    })
    return Source(INFO[name], root, _records(df, name), problems)


def read_ham10000(root: Path, *, strict: bool = False) -> Source:
    """HAM10000: ``HAM10000_metadata.csv`` (dx -> label, lesion_id groups) and ``images/``."""
    return _metadata_source(root, "ham10000", "HAM10000_metadata.csv", id_col="image_id", dx_col="dx",
                            group_col="lesion_id", labels=HAM10000_LABELS, strict=strict)


ISIC2017_SPLITS = {"train": "Training", "val": "Validation", "test": "Test_v2"}


def read_isic2017(root: Path, *, strict: bool = False) -> Source:
    """ISIC 2017 part 3: official train / validation / test folders and ground-truth CSVs."""
    name = "isic2017"
    _require(root, "the ISIC 2017 folder", name)
    frames: list[pd.DataFrame] = []
    problems: dict[str, int] = {}
    for split, tag in ISIC2017_SPLITS.items():
        csv = root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv"
        folder = root / f"ISIC-2017_{tag}_Data"
        if not csv.exists() and not folder.exists():
            continue
        _require(csv, csv.name, name)
        _require(folder, folder.name, name)
        gt = _read_csv(csv, ["image_id", "melanoma", "seborrheic_keratosis"], name)
        try:
            mel = gt["melanoma"].astype(float).astype(int)
            sk = gt["seborrheic_keratosis"].astype(float).astype(int)
        except ValueError as exc:
            raise DataError(f"{name}: {csv.name} has non-numeric labels: {exc}") from exc
        bad = ~mel.isin([0, 1]) | ~sk.isin([0, 1]) | ((mel == 1) & (sk == 1))
        if bad.any():
            raise DataError(f"{name}: {csv.name} rows with invalid labels (not 0/1, or two diagnoses): "
                            f"{gt.loc[bad, 'image_id'].head(3).tolist()}")
        dx = pd.Series("nevus", index=gt.index).mask(mel == 1, "melanoma").mask(sk == 1, "seborrheic_keratosis")
        files = _image_files(folder)
        # Superpixel masks ship beside the images in the original archive; they are not images to classify.
        files = {k: v for k, v in files.items() if not k.endswith("_superpixels")}
        keep = _match_files(gt["image_id"], files, name, problems, strict, csv.name)
        gt, dx = gt[keep], dx[keep]
        frames.append(pd.DataFrame({
            "image_id": gt["image_id"], "path": [files[i].relative_to(root).as_posix() for i in gt["image_id"]],
            "label": dx.map(ISIC2017_LABELS), "diagnosis": dx, "group": name + ":" + gt["image_id"], "split": split,
        }))
    if not frames:
        raise DataError(f"{name}: no ISIC-2017_*_Part3_GroundTruth.csv under {root}. {INFO[name].download}")
    return Source(INFO[name], root, _records(pd.concat(frames, ignore_index=True), name), problems)


def read_pad_ufes_20(root: Path, *, strict: bool = False) -> Source:
    """PAD-UFES-20 smartphone photos (clinical, NOT dermoscopy): ``metadata.csv`` and ``images/``.

    Grouped by patient: several lesions (and photos) of one patient never straddle splits.
    """
    return _metadata_source(root, "pad_ufes_20", "metadata.csv", id_col="img_id", dx_col="diagnostic",
                            group_col="patient_id", labels=PAD_UFES_20_LABELS, strict=strict)


def read_folder(root: Path, *, name: str | None = None, strict: bool = False) -> Source:
    """Any folder-per-class directory ``<root>/{benign,malignant}/*`` (one or both classes)."""
    root = Path(root)
    scan = scan_class_folders(root, require_both=False)
    label = name or f"folder:{root.name}"
    rel = [p.relative_to(root).as_posix() for p in scan.paths]
    df = pd.DataFrame({"image_id": rel, "path": rel, "label": scan.labels, "split": "test"})
    df["diagnosis"] = [CLASS_NAMES[y] for y in df["label"]]
    df["group"] = label + ":" + df["image_id"]
    info = SourceInfo(label, f"folder {root.name}", "", "unknown", "dermoscopic", "")
    n_other = len(scan.skipped) - len(scan.bad_names)
    problems = {k: v for k, v in (("non-image file", n_other), ("file name not UTF-8", len(scan.bad_names))) if v}
    return Source(info, root, _records(df, label), problems)


def _read_csv(path: Path, required: list[str], source: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{source}: {path.name} is not a readable CSV: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{source}: {path.name} lacks the column(s) {missing} (has {list(df.columns)[:8]})")
    empty = df[required].eq("").any(axis=1)
    if empty.any():
        raise DataError(f"{source}: {path.name} has {int(empty.sum())} row(s) with an empty {required} value")
    return df


# --- registry -------------------------------------------------------------------------------

INFO: dict[str, SourceInfo] = {
    "kaggle": SourceInfo(
        "kaggle", "Melanoma Skin Cancer Dataset of 10000 Images (Kaggle)",
        "M. H. Javid, 2022, kaggle.com/dsv/3376422", "see the Kaggle page (CC0 stated there)", "dermoscopic",
        "Download it from https://www.kaggle.com/datasets/hasnainjaved/melanoma-skin-cancer-dataset-of-10000-images "
        "(or `skinlesion data download --source kaggle`) and point SKINLESION_DATA_DIR at 'melanoma_cancer_dataset'."),
    "ham10000": SourceInfo(
        "ham10000", "HAM10000 (ISIC 2018 task 3)",
        "Tschandl, Rosendahl & Kittler, Sci. Data 5, 180161 (2018)", "CC BY-NC 4.0", "dermoscopic",
        "Download it from https://doi.org/10.7910/DVN/DBW86T (or `skinlesion data download --source ham10000`), "
        "put HAM10000_metadata.csv and the images in images/ under one folder and point SKINLESION_HAM10000_DIR at it."),
    "isic2017": SourceInfo(
        "isic2017", "ISIC 2017 challenge, part 3",
        "Codella et al., ISBI 2018", "CC-0 or CC BY-NC per image (ISIC archive)", "dermoscopic",
        "Download the part 3 data and ground truth from https://challenge.isic-archive.com/data/#2017 "
        "(or `skinlesion data download --source isic2017`) and point SKINLESION_ISIC2017_DIR at the folder."),
    "pad_ufes_20": SourceInfo(
        "pad_ufes_20", "PAD-UFES-20 smartphone photos (clinical, not dermoscopy)",
        "Pacheco et al., Data in Brief 32, 106221 (2020)", "CC BY 4.0", "clinical",
        "Download it from https://data.mendeley.com/datasets/zr7vgbcyr2/1 and point SKINLESION_PAD_UFES_20_DIR "
        "at a folder holding metadata.csv and images/."),
}
READERS: dict[str, Callable[..., Source]] = {
    "kaggle": read_kaggle, "ham10000": read_ham10000, "isic2017": read_isic2017, "pad_ufes_20": read_pad_ufes_20,
}
DERMOSCOPIC_SOURCES: tuple[str, ...] = ("kaggle", "ham10000", "isic2017")


def load_source(name: str, root: str | os.PathLike[str] | None = None, *, strict: bool = False) -> Source:
    """Read the source ``name`` from ``root`` (default: its configured root).

    A name that is not registered but is an existing folder is read as folder-per-class.
    """
    if name in READERS:
        return READERS[name](Path(root) if root else config.source_root(name), strict=strict)
    if Path(name).is_dir():
        return read_folder(Path(name), strict=strict)
    raise DataError(f"unknown data source {name!r}; choose from {', '.join(READERS)} or give a folder")


def parse_sources(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"kaggle,ham10000"`` -> ``["kaggle", "ham10000"]`` with a clear error for unknown names."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [n for n in names if n not in READERS and not Path(n).is_dir()]
    if bad:
        raise DataError(f"unknown data source(s) {bad}; choose from {', '.join(READERS)}")
    if not names:
        raise DataError("no data source given")
    if len(set(names)) != len(names):
        raise DataError(f"data source listed twice: {names}")
    return names


def find_sources(names: tuple[str, ...] | None = None) -> tuple[dict[str, Source], dict[str, str]]:
    """(sources found, {name: why not}) for every registered source (or ``names``)."""
    found: dict[str, Source] = {}
    missing: dict[str, str] = {}
    for name in names or tuple(READERS):
        try:
            found[name] = load_source(name)
        except DataError as exc:
            missing[name] = str(exc)
    return found, missing


def combined_records(sources: list[Source]) -> pd.DataFrame:
    """One table of several sources' records (``source`` column tells them apart)."""
    if not sources:
        raise DataError("no data sources to combine")
    return pd.concat([s.records for s in sources], ignore_index=True)

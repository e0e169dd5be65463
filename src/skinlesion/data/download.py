"""Download the public sources from their official archives (for users with internet).

* ``kaggle``   - kagglehub (:func:`skinlesion.data.datasets.download`).
* ``isic2017`` - the ISIC challenge archive: part 3 images and ground truth of the training,
  validation and test splits, in their official file names.
* ``ham10000`` - the ISIC 2018 task 3 archive (HAM10000): images, one-hot ground truth and
  lesion groupings, rewritten as ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, dx_type)
  plus ``images/`` - the layout :func:`skinlesion.data.sources.read_ham10000` reads.

Offline, every download fails at once (one short TCP probe) with how to get the data by
hand, instead of hanging in retries. Archives are fetched to a ``.partial`` folder and moved
into place only when complete, so an interrupted download never looks like a dataset.
"""
from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from skinlesion import config
from skinlesion.data import datasets
from skinlesion.data.datasets import DataError
from skinlesion.data.datasets import download as download_kaggle

ISIC_ARCHIVE = "https://isic-challenge-data.s3.amazonaws.com"
ISIC2017_FILES = [f"2017/ISIC-2017_{tag}_{kind}" for tag in ("Training", "Validation", "Test_v2")
                  for kind in ("Data.zip", "Part3_GroundTruth.csv")]
HAM10000_FILES = ["2018/ISIC2018_Task3_Training_Input.zip", "2018/ISIC2018_Task3_Training_GroundTruth.zip",
                  "2018/ISIC2018_Task3_Training_LesionGroupings.csv"]
HAM10000_DX = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}


def _fetch(base: str, name: str, folder: Path) -> Path:
    target = folder / Path(name).name
    url = f"{base.rstrip('/')}/{name}"
    if urllib.parse.urlparse(url).scheme not in ("https", "file"):
        raise DataError(f"refusing to download from {url}")
    with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as out:  # noqa: S310 (scheme checked)
        shutil.copyfileobj(resp, out)
    return target


def _unzip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            # Refuse archive members that would land outside the target folder.
            if Path(member).is_absolute() or ".." in Path(member).parts:
                raise DataError(f"{archive.name} holds an unsafe path: {member}")
        z.extractall(into)
    archive.unlink()


def _ham10000_metadata(folder: Path) -> None:
    """Rewrite the ISIC 2018 task 3 files into HAM10000's own metadata layout."""
    gt = pd.read_csv(next(folder.rglob("ISIC2018_Task3_Training_GroundTruth.csv")))
    groups = pd.read_csv(folder / "ISIC2018_Task3_Training_LesionGroupings.csv")
    onehot = gt.set_index("image")[list(HAM10000_DX)]
    if not (onehot.sum(axis=1) == 1).all():
        raise DataError("HAM10000 ground truth: an image without exactly one diagnosis")
    dx = onehot.idxmax(axis=1).map(HAM10000_DX)
    meta = groups.rename(columns={"image": "image_id", "diagnosis_confirm_type": "dx_type"})
    meta["dx"] = meta["image_id"].map(dx)
    if meta["dx"].isna().any():
        raise DataError("HAM10000 lesion groupings list images the ground truth lacks")
    meta[["lesion_id", "image_id", "dx", "dx_type"]].to_csv(folder / "HAM10000_metadata.csv", index=False)
    images = folder / "images"
    images.mkdir()
    for jpg in folder.rglob("ISIC_*.jpg"):
        if jpg.parent != images:
            jpg.rename(images / jpg.name)


def download_source(name: str, dest: str | os.PathLike[str] | None = None, *, base_url: str = ISIC_ARCHIVE) -> Path:
    """Download the source ``name`` into ``dest`` (default ``data/raw/<folder>``) and return it."""
    from skinlesion.data.sources import INFO

    if name == "kaggle":
        return download_kaggle(dest)
    if name not in ("isic2017", "ham10000"):
        raise DataError(f"no download for source {name!r}; choose kaggle, ham10000 or isic2017")
    dest = Path(dest) if dest else config.data_dir() / "raw" / config.SOURCE_FOLDER[name]
    if dest.exists() and any(dest.iterdir()):
        return dest
    host = urllib.parse.urlparse(base_url).hostname
    if host and not datasets._online(host):
        raise DataError(f"cannot reach {host} (offline?). {INFO[name].download}")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in ISIC2017_FILES if name == "isic2017" else HAM10000_FILES:
            got = _fetch(base_url, f, tmp)
            if got.suffix == ".zip":
                _unzip(got, tmp)
        if name == "ham10000":
            _ham10000_metadata(tmp)
    except (OSError, zipfile.BadZipFile, KeyError, StopIteration, pd.errors.ParserError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"downloading {name} failed: {exc}. {INFO[name].download}") from exc
    os.replace(tmp, dest)
    return dest

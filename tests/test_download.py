"""Source downloads: fail fast offline with how to get the data; archives become the reader's layout."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.cli import main
from skinlesion.data import datasets
from skinlesion.data.datasets import DataError
from skinlesion.data.download import download_source
from skinlesion.data.sources import read_ham10000, read_isic2017


def _jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path, "JPEG")


@pytest.mark.parametrize("source", ["ham10000", "isic2017"])
def test_offline_download_fails_fast_with_manual_instructions(source, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_online", lambda *a, **k: False)
    with pytest.raises(DataError, match="offline.*point SKINLESION_"):
        download_source(source, tmp_path / source)
    assert not (tmp_path / source).exists()


def test_cli_download_offline(tmp_path, monkeypatch):
    from click.testing import CliRunner

    monkeypatch.setattr(datasets, "_online", lambda *a, **k: False)
    r = CliRunner().invoke(main, ["data", "download", "--source", "isic2017", "--dest", str(tmp_path / "d")])
    assert r.exit_code == 1 and "challenge.isic-archive.com" in r.output and "Traceback" not in r.output


def _zip(path: Path, files: dict[str, Path]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for arc, f in files.items():
            z.write(f, arc)


def test_ham10000_archive_becomes_the_readers_layout(tmp_path):
    """A miniature of the ISIC 2018 task 3 archive served from file:// URLs."""
    site = tmp_path / "site" / "2018"
    site.mkdir(parents=True)
    imgs = {}
    for i in range(4):
        f = tmp_path / f"ISIC_{i}.jpg"
        _jpeg(f, i)
        imgs[f"ISIC2018_Task3_Training_Input/ISIC_{i}.jpg"] = f
    _zip(site / "ISIC2018_Task3_Training_Input.zip", imgs)
    gt = pd.DataFrame({"image": [f"ISIC_{i}" for i in range(4)], "MEL": [1, 0, 0, 0], "NV": [0, 1, 1, 0],
                       "BCC": [0, 0, 0, 1], "AKIEC": 0, "BKL": 0, "DF": 0, "VASC": 0})
    gt_csv = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt.to_csv(gt_csv, index=False)
    _zip(site / "ISIC2018_Task3_Training_GroundTruth.zip", {"ISIC2018_Task3_Training_GroundTruth/" + gt_csv.name: gt_csv})
    pd.DataFrame({"image": [f"ISIC_{i}" for i in range(4)], "lesion_id": ["HAM_1", "HAM_2", "HAM_2", "HAM_3"],
                  "diagnosis_confirm_type": "histopathology"}).to_csv(
        site / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    dest = download_source("ham10000", tmp_path / "ham", base_url=(tmp_path / "site").as_uri())
    src = read_ham10000(dest)
    assert list(src.records.sort_values("image_id")["diagnosis"]) == ["mel", "nv", "nv", "bcc"]
    assert src.records["group"].nunique() == 3 and src.problems == {}


def test_isic2017_archive_and_a_broken_zip(tmp_path):
    site = tmp_path / "site" / "2017"
    site.mkdir(parents=True)
    for j, tag in enumerate(("Training", "Validation", "Test_v2")):
        f = tmp_path / f"ISIC_000000{j}.jpg"
        _jpeg(f, j)
        _zip(site / f"ISIC-2017_{tag}_Data.zip", {f"ISIC-2017_{tag}_Data/{f.name}": f})
        pd.DataFrame({"image_id": [f.stem], "melanoma": [float(j == 0)], "seborrheic_keratosis": [0.0]}).to_csv(
            site / f"ISIC-2017_{tag}_Part3_GroundTruth.csv", index=False)
    dest = download_source("isic2017", tmp_path / "isic", base_url=(tmp_path / "site").as_uri())
    assert set(read_isic2017(dest).records["split"]) == {"train", "val", "test"}
    (site / "ISIC-2017_Training_Data.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="downloading isic2017 failed"):
        download_source("isic2017", tmp_path / "isic-b", base_url=(tmp_path / "site").as_uri())
    assert not (tmp_path / "isic-b").exists() and not (tmp_path / "isic-b.partial").exists()

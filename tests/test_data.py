"""Dataset discovery, splits and the bad-input cases of the data stage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.data.datasets import DataError, build_splits, image_files, load_or_create_splits, scan_class_folders


def _img(path, value=128, size=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


@pytest.fixture
def kaggle_tree(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 10), ("test", 3)):
        for c in ("benign", "malignant"):
            for i in range(n):
                _img(root / split / c / f"{c}_{i}.jpg", value=20 * i)
    return root


def test_scan_counts_and_skips_non_images(kaggle_tree):
    (kaggle_tree / "train" / "benign" / "notes.txt").write_text("hello")
    (kaggle_tree / "train" / "benign" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning, match="skipped 1 non-image"):
        scan = scan_class_folders(kaggle_tree / "train")
    assert scan.class_counts == {"benign": 10, "malignant": 10}
    assert [p.name for p in scan.skipped] == ["notes.txt"]


def test_image_files_lists_images_recursively_and_sorted(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image suffix is not an image
    for name in ("b/deep/z.PNG", "a.jpg", "notes.txt", "b/c.webp"):
        (tmp_path / name).write_bytes(b"x")
    assert image_files(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b" / "c.webp", tmp_path / "b" / "deep" / "z.PNG"]
    assert image_files(tmp_path / "missing") == []


def test_case_insensitive_class_folders_and_other_formats(tmp_path):
    _img(tmp_path / "Benign" / "a.png")
    _img(tmp_path / "MALIGNANT" / "b.bmp")
    _img(tmp_path / "MALIGNANT" / "c.tiff")
    scan = scan_class_folders(tmp_path)
    assert scan.class_counts == {"benign": 1, "malignant": 2}


def test_splits_are_stratified_seeded_and_cover_test(kaggle_tree):
    a = build_splits(kaggle_tree, val_fraction=0.2, seed=1)
    b = build_splits(kaggle_tree, val_fraction=0.2, seed=1)
    pd.testing.assert_frame_equal(a, b)
    counts = a.groupby(["split", "label"]).size().to_dict()
    assert counts == {("test", 0): 3, ("test", 1): 3, ("train", 0): 8, ("train", 1): 8, ("val", 0): 2, ("val", 1): 2}
    assert not a["path"].str.startswith("/").any()


def test_splits_file_written_once_and_reused(kaggle_tree, tmp_path):
    f = tmp_path / "splits.csv"
    df1, p1 = load_or_create_splits(kaggle_tree, f, seed=3)
    df2, p2 = load_or_create_splits(kaggle_tree, f, seed=99)  # seed ignored: the file wins
    pd.testing.assert_frame_equal(df1, df2)
    assert p1 == p2 == f


def test_stale_splits_file_refused(kaggle_tree, tmp_path):
    f = tmp_path / "splits.csv"
    load_or_create_splits(kaggle_tree, f)
    (kaggle_tree / "train" / "benign" / "benign_0.jpg").unlink()
    with pytest.raises(DataError, match="delete the splits file"):
        load_or_create_splits(kaggle_tree, f)


def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_class_folders(tmp_path / "nope")


def test_empty_dir(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        scan_class_folders(tmp_path)


def test_missing_class_folder(tmp_path):
    _img(tmp_path / "benign" / "a.jpg")
    with pytest.raises(DataError, match=r"missing the class folder\(s\) \['malignant'\]"):
        scan_class_folders(tmp_path)


def test_one_class_allowed_for_evaluation_only(tmp_path):
    _img(tmp_path / "benign" / "a.jpg")
    assert scan_class_folders(tmp_path, require_both=False).class_counts == {"benign": 1, "malignant": 0}


def test_empty_class_folder(tmp_path):
    _img(tmp_path / "benign" / "a.jpg")
    (tmp_path / "malignant").mkdir()
    with pytest.raises(DataError, match="contain no images"):
        scan_class_folders(tmp_path)


def test_too_few_images_for_validation(tmp_path):
    _img(tmp_path / "train" / "benign" / "a.jpg")
    _img(tmp_path / "train" / "malignant" / "b.jpg")
    with pytest.raises(DataError, match="at least 2 images per class"):
        build_splits(tmp_path)


def test_download_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    from skinlesion.data import datasets as data

    monkeypatch.setattr(data, "_online", lambda *a, **k: False)
    with pytest.raises(DataError, match="Download it by hand"):
        data.download(tmp_path / "dest")

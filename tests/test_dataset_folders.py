"""Dataset folders that are almost right: each gets a clear error or a warning, and loses nothing.

Covers the folder scanners of :mod:`skinlesion.data.datasets` (class folders differing only in
case, names that are not UTF-8, hidden and extra folders, the wrong layout for a command) and
``skinlesion generalise --data-dir``. Tiny generated JPEGs, no model.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.data.datasets import (
    DataError,
    build_splits,
    dataset_fingerprint,
    image_files,
    load_or_create_splits,
    scan_class_folders,
)

BAD_NAME = b"caf\xe9.jpg"  # Latin-1, not UTF-8: Python shows it as 'caf\udce9.jpg'


def _img(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(path)


def _classes(root: Path, n: int = 4) -> Path:
    for c in ("benign", "malignant"):
        for i in range(n):
            _img(root / c / f"{c}_{i}.jpg", value=20 * i)
    return root


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    _classes(root / "train", n=6)
    _classes(root / "test", n=2)
    return root


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """Warnings of the datasets module (a handler of its own: the CLI stops propagation to root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("skinlesion.data.datasets")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _bad_file(folder: Path) -> bytes:
    """A JPEG named with bytes that are not UTF-8; skips where the file system refuses such names."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.path.join(os.fsencode(folder), BAD_NAME)
    try:
        with open(path, "wb") as f:
            Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(f, format="JPEG")
    except OSError:
        pytest.skip("this file system only allows UTF-8 names")
    return path


# --- 1. benign/ and Benign/ side by side -------------------------------------------------------

def test_class_folders_differing_only_in_case_are_refused_naming_both(tmp_path):
    root = _classes(tmp_path / "site")
    _img(root / "Benign" / "extra.jpg")
    with pytest.raises(DataError, match=r"2 folders for the class 'benign': Benign/, benign/.*merge them"):
        scan_class_folders(root)


def test_training_reader_refuses_case_duplicates_in_train(kaggle_root):
    _img(kaggle_root / "train" / "BENIGN" / "extra.jpg")
    with pytest.raises(DataError, match=r"BENIGN/, benign/"):
        build_splits(kaggle_root)


# --- 2. file names that are not UTF-8 ----------------------------------------------------------

def test_non_utf8_name_is_skipped_counted_and_named_once(tmp_path, logged):
    root = _classes(tmp_path / "site")
    _bad_file(root / "benign")
    _bad_file(root / "malignant" / "sub")
    (root / "benign" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1 non-image"):  # the bad names are not "non-images"
        scan = scan_class_folders(root)
    assert scan.class_counts == {"benign": 4, "malignant": 4}
    assert len(scan.skipped) == 3 and len(scan.bad_names) == 2
    assert all(str(p).encode() for p in scan.paths)  # nothing undecodable reaches later stages
    [msg] = [r.getMessage() for r in logged]
    assert "skipped 2 file(s) whose name is not valid UTF-8" in msg and "rename" in msg
    assert repr(b"benign/" + BAD_NAME) in msg and repr(b"malignant/sub/" + BAD_NAME) in msg
    msg.encode("utf-8")  # the warning itself is printable (and fits train.log)


def test_non_utf8_name_never_reaches_splits_or_fingerprint(kaggle_root, tmp_path, logged):
    _bad_file(kaggle_root / "train" / "benign")
    _bad_file(kaggle_root / "test" / "malignant")
    df, file = load_or_create_splits(kaggle_root, tmp_path / "splits.csv")  # writes the CSV
    assert len(df) == 16 and pd.read_csv(file)["path"].str.contains("caf").sum() == 0
    dataset_fingerprint([kaggle_root / p for p in df["path"]], kaggle_root)
    assert len(logged) == 2  # one per scanned folder: train/ and test/


def test_image_files_skips_non_utf8_names_with_a_warning(tmp_path, logged):
    _img(tmp_path / "a.jpg")
    _bad_file(tmp_path / "deep")
    assert image_files(tmp_path) == [tmp_path / "a.jpg"]
    assert repr(b"deep/" + BAD_NAME) in logged[0].getMessage()


def test_folder_whose_own_name_is_not_utf8_is_refused(tmp_path):
    root = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    try:
        _classes(root)
    except OSError:
        pytest.skip("this file system only allows UTF-8 names")
    with pytest.raises(DataError, match=r"not valid UTF-8: rename it"):
        scan_class_folders(root)
    with pytest.raises(DataError, match=r"not valid UTF-8"):
        image_files(root)


# --- 3. hidden folders ------------------------------------------------------------------------

def test_images_under_hidden_folders_are_not_read(kaggle_root):
    _img(kaggle_root / "train" / "benign" / ".ipynb_checkpoints" / "x.jpg")
    _img(kaggle_root / "train" / "benign" / "ok" / ".git" / "deep" / "y.jpg")
    _img(kaggle_root / "train" / "benign" / "ok" / "z.jpg")  # a visible sub-folder is still read
    _img(kaggle_root / "train" / ".hidden" / "w.jpg")
    df = build_splits(kaggle_root)
    assert not df["path"].str.contains(r"/\.", regex=True).any()
    assert "train/benign/ok/z.jpg" in set(df["path"])
    assert (df["split"] != "test").sum() == 13


# --- 4. extra folders -------------------------------------------------------------------------

def test_extra_class_folder_is_ignored_with_a_warning(kaggle_root, logged):
    for i in range(3):
        _img(kaggle_root / "train" / "unknown" / f"u{i}.jpg")
    scan = scan_class_folders(kaggle_root / "train")
    assert scan.class_counts == {"benign": 6, "malignant": 6}
    [msg] = [r.getMessage() for r in logged]
    assert "ignored folder(s) unknown/" in msg and "only benign/ and malignant/ are read" in msg


def test_extra_folder_beside_train_and_test_is_named(kaggle_root, logged):
    _classes(kaggle_root / "valid", n=1)
    (kaggle_root / ".cache").mkdir()
    build_splits(kaggle_root)
    assert [r.getMessage() for r in logged] == [f"{kaggle_root}: ignored folder(s) valid/; only train/ and test/ are read"]


def test_source_readers_name_extra_folders_and_skip_non_utf8_files(kaggle_root, tmp_path, logged):
    """``read_kaggle`` warns about folders beside train/ and test/ as ``build_splits`` does; a
    metadata source skips a non-UTF-8 file name with the warning instead of counting it as an
    image without a label."""
    from skinlesion.data.sources import read_ham10000, read_kaggle

    _classes(kaggle_root / "valid", n=1)
    assert len(read_kaggle(kaggle_root).records) == 16
    assert [r.getMessage() for r in logged] == [f"{kaggle_root}: ignored folder(s) valid/; only train/ and test/ are read"]

    logged.clear()
    ham = tmp_path / "ham"
    pd.DataFrame({"lesion_id": ["L1", "L2"], "image_id": ["ISIC_1", "ISIC_2"], "dx": ["mel", "nv"]}).to_csv(
        ham.mkdir() or ham / "HAM10000_metadata.csv", index=False)
    for i in (1, 2):
        _img(ham / "images" / f"ISIC_{i}.jpg")
    _img(Path(os.fsdecode(os.fsencode(ham / "images") + b"/" + BAD_NAME)))
    src = read_ham10000(ham)
    assert len(src.records) == 2 and src.problems == {}
    [msg] = [r.getMessage() for r in logged]
    assert "skipped 1 file(s) whose name is not valid UTF-8" in msg


def test_no_warning_for_a_clean_dataset(kaggle_root, logged):
    build_splits(kaggle_root)
    assert logged == []


# --- 5. messages that fit the command ---------------------------------------------------------

def test_dataset_root_given_where_a_folder_per_class_set_is_wanted(kaggle_root):
    from skinlesion.data.sources import read_folder  # calibrate --site, robustness --data

    expected = (f"{kaggle_root} looks like a dataset root (train/, test/), but this command reads one "
                f"folder-per-class set ({kaggle_root}/benign, {kaggle_root}/malignant): "
                f"pass {kaggle_root / 'test'} (or {kaggle_root / 'train'})")
    for read in (lambda: scan_class_folders(kaggle_root, require_both=False), lambda: read_folder(kaggle_root)):
        with pytest.raises(DataError) as exc:
            read()
        assert str(exc.value) == expected


def test_only_test_folder_suggests_it(tmp_path):
    _classes(tmp_path / "nt" / "test")
    with pytest.raises(DataError, match=r"\(test/\), but .*: pass \S+/nt/test$"):
        scan_class_folders(tmp_path / "nt", require_both=False)


def test_training_root_with_test_but_no_train(tmp_path):
    _classes(tmp_path / "nt" / "test")
    with pytest.raises(DataError, match=r"nt has test/ but no train/: training needs \S+/nt/train/\{benign,malignant\}/"):
        build_splits(tmp_path / "nt")


def test_empty_folder_messages(tmp_path):
    with pytest.raises(DataError, match=r"no class folders: expected sub-folders \['benign', 'malignant'\]$"):
        scan_class_folders(tmp_path)
    with pytest.raises(DataError, match=r"\(or train/ and test/ each holding them\)$"):
        build_splits(tmp_path)


def test_generalise_refuses_data_dir_without_blaming_sources(kaggle_root):
    from click.testing import CliRunner

    from skinlesion.cli import main

    r = CliRunner().invoke(main, ["generalise", "--recipe", "qa", "--data-dir", str(kaggle_root)])
    assert r.exit_code == 2, r.output
    assert "does not read --data-dir" in r.output and "SKINLESION_DATA_DIR=DIR" in r.output
    assert "not both" not in r.output

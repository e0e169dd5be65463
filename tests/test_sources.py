"""Data sources: readers on tiny fixtures (valid and broken), cross-source audit, grouped splits."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.data.audit import audit_records, find_pairs, hash_images, overlap_table
from skinlesion.data.datasets import DataError
from skinlesion.data.sources import (
    find_sources,
    load_source,
    parse_sources,
    read_folder,
    read_ham10000,
    read_isic2017,
    read_kaggle,
    read_pad_ufes_20,
)
from skinlesion.data.splits import check_no_leak, duplicate_groups, grouped_carve_out, make_split_table
from skinlesion.data.training_data import class_balanced_weights, source_balanced_weights


def _img(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A distinct, deterministic image (smooth random field so pHash differs between seeds)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=95)
    return path


def make_ham(root: Path, rows: list[tuple[str, str, str]], files: list[str] | None = None) -> Path:
    """rows: (lesion_id, image_id, dx); files: image ids to create (default: every row's)."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx"]).assign(dx_type="histo").to_csv(
        root / "HAM10000_metadata.csv", index=False)
    for i, image_id in enumerate(files if files is not None else [r[1] for r in rows]):
        _img(root / "images" / f"{image_id}.jpg", 100 + i)
    return root


def make_isic(root: Path, splits: dict[str, list[tuple[str, float, float]]], seed: int = 500) -> Path:
    tags = {"train": "Training", "val": "Validation", "test": "Test_v2"}
    root.mkdir(parents=True, exist_ok=True)
    for j, (split, rows) in enumerate(splits.items()):
        pd.DataFrame(rows, columns=["image_id", "melanoma", "seborrheic_keratosis"]).to_csv(
            root / f"ISIC-2017_{tags[split]}_Part3_GroundTruth.csv", index=False)
        for i, (image_id, _, _) in enumerate(rows):
            _img(root / f"ISIC-2017_{tags[split]}_Data" / f"{image_id}.jpg", seed + 50 * j + i)
    return root


def make_kaggle(root: Path, n: int = 3, seed: int = 900) -> Path:
    for split in ("train", "test"):
        for label in ("benign", "malignant"):
            for i in range(n):
                _img(root / split / label / f"m_{split}_{label}_{i}.jpg", seed + hash((split, label)) % 1000 + i)
    return root


# --- readers ------------------------------------------------------------------------------------

def test_ham10000_reader_maps_dx_and_groups_by_lesion(tmp_path):
    root = make_ham(tmp_path / "ham", [("HAM_1", "ISIC_1", "mel"), ("HAM_1", "ISIC_2", "mel"),
                                      ("HAM_2", "ISIC_3", "nv"), ("HAM_3", "ISIC_4", "akiec"),
                                      ("HAM_4", "ISIC_5", "bkl")])
    src = read_ham10000(root)
    r = src.records.set_index("image_id")
    assert r.loc["ISIC_1", "label"] == 1 and r.loc["ISIC_3", "label"] == 0 and r.loc["ISIC_4", "label"] == 1
    assert r.loc["ISIC_1", "group"] == r.loc["ISIC_2", "group"] != r.loc["ISIC_3", "group"]
    assert r.loc["ISIC_5", "diagnosis"] == "bkl"
    assert src.summary()["groups"] == 4 and src.problems == {}


def test_ham10000_unknown_dx_is_an_error(tmp_path):
    root = make_ham(tmp_path / "ham", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_2", "tumour")])
    with pytest.raises(DataError, match="unknown dx"):
        read_ham10000(root)


def test_ham10000_missing_file_and_unlabelled_file_are_counted_or_strict_errors(tmp_path):
    root = make_ham(tmp_path / "ham", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_2", "nv")],
                    files=["ISIC_1", "ISIC_9"])
    src = read_ham10000(root)
    assert list(src.records["image_id"]) == ["ISIC_1"]
    assert src.problems == {"id without image file": 1, "image file without label": 1}
    with pytest.raises(DataError, match="no image file"):
        read_ham10000(root, strict=True)


def test_ham10000_duplicate_id_and_bad_csv(tmp_path):
    root = make_ham(tmp_path / "ham", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_1", "nv")])
    with pytest.raises(DataError, match="duplicate image id"):
        read_ham10000(root)
    (root / "HAM10000_metadata.csv").write_text("image,diagnosis\nISIC_1,mel\n")
    with pytest.raises(DataError, match="lacks the column"):
        read_ham10000(root)
    (root / "HAM10000_metadata.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x00")
    with pytest.raises(DataError):
        read_ham10000(root)
    with pytest.raises(DataError, match="not found"):
        read_ham10000(tmp_path / "nowhere")


def test_isic2017_reader_official_splits_and_label_rules(tmp_path):
    root = make_isic(tmp_path / "isic", {
        "train": [("ISIC_0000001", 1.0, 0.0), ("ISIC_0000002", 0.0, 1.0), ("ISIC_0000003", 0.0, 0.0)],
        "val": [("ISIC_0000004", 0.0, 0.0), ("ISIC_0000005", 1.0, 0.0)],
        "test": [("ISIC_0000006", 0.0, 0.0), ("ISIC_0000007", 1.0, 0.0)],
    })
    # Superpixel masks of the original archive are not images to classify.
    _img(root / "ISIC-2017_Training_Data" / "ISIC_0000001_superpixels.jpg", 7)
    src = read_isic2017(root)
    r = src.records.set_index("image_id")
    assert r.loc["ISIC_0000001", "diagnosis"] == "melanoma" and r.loc["ISIC_0000001", "label"] == 1
    assert r.loc["ISIC_0000002", "diagnosis"] == "seborrheic_keratosis" and r.loc["ISIC_0000002", "label"] == 0
    assert r.loc["ISIC_0000003", "diagnosis"] == "nevus"
    assert src.summary()["splits"] == {"test": {"benign": 1, "malignant": 1}, "train": {"benign": 2, "malignant": 1},
                                       "val": {"benign": 1, "malignant": 1}}
    assert src.problems == {}


def test_isic2017_two_diagnoses_or_non_numeric_labels_are_errors(tmp_path):
    root = make_isic(tmp_path / "isic", {"train": [("ISIC_1", 1.0, 1.0)]})
    with pytest.raises(DataError, match="two diagnoses"):
        read_isic2017(root)
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("image_id,melanoma,seborrheic_keratosis\nISIC_1,yes,0\n")
    with pytest.raises(DataError, match="non-numeric"):
        read_isic2017(root)


def test_kaggle_and_folder_readers(tmp_path):
    src = read_kaggle(make_kaggle(tmp_path / "kg"))
    assert src.summary()["splits"] == {"test": {"benign": 3, "malignant": 3}, "train": {"benign": 3, "malignant": 3}}
    assert src.records["group"].nunique() == 12
    one_class = tmp_path / "ext" / "malignant"
    _img(one_class / "a.jpg", 1)
    (one_class / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="non-image"):
        f = read_folder(tmp_path / "ext")
    assert len(f.records) == 1 and f.problems == {"non-image file": 1}
    with pytest.raises(DataError, match="no train/ folder"):
        read_kaggle(tmp_path / "ext")


def test_pad_ufes_reader_groups_by_patient(tmp_path):
    root = tmp_path / "pad"
    rows = [("PAT_1", "10", "NEV", "PAT_1_10_1.jpg"), ("PAT_1", "11", "MEL", "PAT_1_11_2.jpg"),
            ("PAT_2", "12", "SEK", "PAT_2_12_3.jpg")]
    root.mkdir()
    pd.DataFrame(rows, columns=["patient_id", "lesion_id", "diagnostic", "img_id"]).to_csv(root / "metadata.csv", index=False)
    for i, r in enumerate(rows):
        _img(root / "images" / r[3], 300 + i)
    src = read_pad_ufes_20(root)
    assert src.info.modality == "clinical"
    g = src.records.set_index("image_id")["group"]
    assert g["PAT_1_10_1"] == g["PAT_1_11_2"] != g["PAT_2_12_3"]


def test_parse_sources_and_unknown_source(tmp_path):
    assert parse_sources("kaggle, ham10000") == ["kaggle", "ham10000"]
    with pytest.raises(DataError, match="unknown data source"):
        parse_sources("kaggle,imagenet")
    with pytest.raises(DataError, match="twice"):
        parse_sources("kaggle,kaggle")
    with pytest.raises(DataError, match="unknown data source"):
        load_source("imagenet")


def test_source_roots_come_from_environment(tmp_path, monkeypatch):
    root = make_ham(tmp_path / "elsewhere", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_2", "nv")])
    monkeypatch.setenv("SKINLESION_HAM10000_DIR", str(root))
    found, missing = find_sources(("ham10000",))
    assert found["ham10000"].root == root and not missing
    monkeypatch.setenv("SKINLESION_HAM10000_DIR", str(tmp_path / "absent"))
    found, missing = find_sources(("ham10000",))
    assert not found and "ham10000" in missing


# --- audit -------------------------------------------------------------------------------------

def _reencode(src: Path, dst: Path, size: tuple[int, int], quality: int = 80) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(dst, "JPEG", quality=quality)


def test_audit_finds_planted_duplicates_across_two_sources(tmp_path):
    ham = make_ham(tmp_path / "ham", [(f"HAM_{i}", f"ISIC_{i}", "nv" if i % 2 else "mel") for i in range(8)])
    kg = make_kaggle(tmp_path / "kg", n=2)
    # Plant: a byte-identical copy and a resized, re-encoded copy of two HAM images in the Kaggle set.
    (kg / "train" / "malignant" / "copy_exact.jpg").write_bytes((ham / "images" / "ISIC_0.jpg").read_bytes())
    _reencode(ham / "images" / "ISIC_2.jpg", kg / "test" / "malignant" / "copy_near.jpg", (64, 64))
    sources = [read_ham10000(ham), read_kaggle(kg)]
    records = pd.concat([s.records for s in sources], ignore_index=True)
    pairs = audit_records(records, {s.name: s.root for s in sources}, progress=False)
    kinds = {(r.image_a, r.image_b, r.kind) for r in pairs.itertuples()}
    assert ("ISIC_0", "train/malignant/copy_exact.jpg", "exact") in kinds
    assert ("ISIC_2", "test/malignant/copy_near.jpg", "near") in kinds
    assert len(pairs) == 2, pairs
    ov = overlap_table(pairs, records).set_index(["source_a", "source_b"])
    assert ov.loc[("ham10000", "kaggle"), "images_a"] == 2


def test_hash_cache_is_reused_and_rebuilt_when_broken(tmp_path):
    files = [_img(tmp_path / f"{i}.jpg", i) for i in range(3)]
    cache = tmp_path / "hashes.npz"
    a = hash_images(files, progress=False, cache=cache)
    assert cache.exists()
    b = hash_images(files, progress=False, cache=cache)
    assert np.array_equal(a.phash, b.phash)
    cache.write_bytes(b"broken")
    c = hash_images(files, progress=False, cache=cache)
    assert np.array_equal(a.phash, c.phash)
    assert len(find_pairs(c)) == 0


def test_an_undecodable_image_is_named_not_left_out_of_the_audit(tmp_path):
    from skinlesion.data.datasets import DataError

    files = [_img(tmp_path / f"{i}.jpg", i) for i in range(2)]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"2 of 4 images cannot be read or decoded.*empty\.jpg") as info:
        hash_images([*files, tmp_path / "empty.jpg", tmp_path / "text.jpg"], progress=False,
                    cache=tmp_path / "hashes.npz")
    assert "text.jpg" in str(info.value)


# --- grouped splits ------------------------------------------------------------------------------

def _records(n: int, rng: np.random.Generator, sources=("a", "b"), n_groups: int | None = None) -> pd.DataFrame:
    groups = rng.integers(0, n_groups or n, n)
    src = rng.choice(list(sources), n)
    split = np.where(rng.random(n) < 0.2, "test", "train")
    return pd.DataFrame({"source": src, "image_id": [f"i{i}" for i in range(n)], "path": [f"p{i}.jpg" for i in range(n)],
                         "label": rng.integers(0, 2, n), "diagnosis": "x",
                         "group": [f"{s}:{g}" for s, g in zip(src, groups)], "split": split})


@pytest.mark.parametrize("seed", range(12))
def test_grouped_split_never_leaks_a_group_property(seed):
    """Property: for random sources, lesion groups and duplicate pairs, no group spans training and evaluation."""
    rng = np.random.default_rng(seed)
    rec = _records(300, rng, n_groups=120)
    pairs = pd.DataFrame({"a": rng.integers(0, 300, 40), "b": rng.integers(0, 300, 40)})
    held = ["b"] if seed % 2 else []
    table = make_split_table(rec, pairs, train_sources=[s for s in ("a", "b") if s not in held], seed=seed)
    check_no_leak(table)
    comp = duplicate_groups(rec, pairs)
    by_split = pd.Series(table["split"].to_numpy()).groupby(comp).agg(set)
    for splits in by_split:
        kept = splits - {"excluded", "unused"}
        assert len(kept) <= 1, splits
    assert set(table["split"]) <= {"train", "val", "test", "excluded", "unused"}
    if held:
        held_rows = table[table["source"] == "b"]
        assert held_rows["split"].isin(["test", "unused"]).all()
        # Its official test split is scored whole; its other images are never trained on.
        assert (held_rows["split"] == "test").sum() == (rec.loc[rec["source"] == "b", "split"] == "test").sum()
    # Every original lesion group stays whole within its non-excluded split.
    orig = rec["group"].to_numpy()
    for _g, part in table.assign(orig=orig).groupby("orig"):
        assert part.loc[~part["split"].isin(["excluded", "unused"]), "split"].nunique() <= 1


def _copy_records(rows):
    return pd.DataFrame({"source": [r[0] for r in rows], "image_id": [f"i{i}" for i in range(len(rows))],
                         "path": [f"p{i}.jpg" for i in range(len(rows))], "label": [r[2] for r in rows],
                         "diagnosis": "x", "group": [r[3] for r in rows], "split": [r[1] for r in rows]})


def test_copies_are_dropped_from_the_named_source_only_when_another_training_source_holds_the_lesion():
    """The Kaggle set repackages HAM10000 and ISIC 2017 images: trained on together, one copy of each lesion is kept."""
    rows = [  # source, official split, label, group
        ("kaggle", "train", 1, "k-copy-of-h1"), ("ham10000", "train", 1, "h1"),  # 0, 1: a copy, dropped from kaggle
        ("kaggle", "train", 0, "k-own"),                                         # 2: kaggle's own, kept
        ("kaggle", "train", 1, "k-copy-of-i1"), ("isic2017", "test", 1, "i1"),   # 3, 4: twin scored, the usual clash
        ("kaggle", "train", 1, "k-copy-of-h2"), ("ham10000", "train", 1, "h2"),  # 5, 6: a second copy
        ("ham10000", "train", 0, "h3"), ("ham10000", "train", 0, "h4"), ("kaggle", "train", 0, "k-own2"),
        ("kaggle", "test", 1, "k-test"), ("ham10000", "train", 1, "h5"), ("kaggle", "train", 1, "k-own3"),
        ("kaggle", "train", 1, "k-copy-of-i2"), ("isic2017", "val", 1, "i2"),    # 13, 14: twin an official val image
        ("isic2017", "train", 0, "i3"), ("isic2017", "train", 1, "i4"),
    ]
    rec = _copy_records(rows)
    # Image-level duplicates (audit pairs) join the groups: copy -> original.
    pairs = pd.DataFrame({"a": [0, 3, 5, 13], "b": [1, 4, 6, 14]})
    kw = dict(train_sources=["kaggle", "ham10000", "isic2017"], val_fraction=0.2, seed=3)
    plain = make_split_table(rec, pairs, **kw)
    dropped = make_split_table(rec, pairs, **kw, drop_copies_from=["kaggle"])
    check_no_leak(dropped)
    changed = plain["split"] != dropped["split"]
    # Exactly the copies whose original another training source holds go, and the original of the
    # official-validation pair stays in validation (without the option it was the one dropped).
    assert set(dropped.loc[dropped["reason"].str.startswith("copy of a lesion"), "path"]) == {
        "p0.jpg", "p5.jpg", "p13.jpg"}
    assert (dropped.loc[[0, 5, 13], "split"] == "excluded").all()
    assert plain.loc[14, "split"] == "excluded" and dropped.loc[14, "split"] == "val"
    assert set(plain.loc[changed, "path"]) == {"p0.jpg", "p5.jpg", "p13.jpg", "p14.jpg"}
    assert dropped.loc[3, "split"] == "excluded" and "evaluation image" in dropped.loc[3, "reason"]
    # A named source that is not trained on (held out) is left as it is.
    held = make_split_table(rec, pairs, train_sources=["ham10000"], seed=3, drop_copies_from=["kaggle"])
    assert held.equals(make_split_table(rec, pairs, train_sources=["ham10000"], seed=3))
    # A twin in a held-out source's unused part holds nothing for training: the copy stays.
    unused = make_split_table(rec, pairs, train_sources=["kaggle", "ham10000"], seed=3, drop_copies_from=["kaggle"])
    assert unused.loc[14, "split"] == "unused" and unused.loc[13, "split"] in {"train", "val"}
    # Both sources named: no source holds the lesion but named ones, so nothing is dropped.
    both = make_split_table(rec, pairs, **kw, drop_copies_from=["kaggle", "ham10000", "isic2017"])
    assert both.equals(plain)


def test_carve_out_is_stratified_and_grouped():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    groups = np.arange(2000) // 2
    val = grouped_carve_out(labels, groups, 0.15, seed=1)
    assert 0.12 < val.mean() < 0.18
    assert abs(labels[val].mean() - labels.mean()) < 0.05
    assert not (pd.Series(val).groupby(groups).nunique() > 1).any()
    with pytest.raises(DataError):
        grouped_carve_out(labels, groups, 0.7, seed=1)


def test_split_table_one_class_training_is_an_error():
    rec = pd.DataFrame({"source": "a", "image_id": ["1", "2", "3"], "path": ["1", "2", "3"], "label": [1, 1, 1],
                        "diagnosis": "mel", "group": ["a:1", "a:2", "a:3"], "split": "train"})
    with pytest.raises(DataError, match="class"):
        make_split_table(rec)
    with pytest.raises(DataError, match="no images"):
        make_split_table(rec.iloc[:0])


def test_balance_weights():
    frame = pd.DataFrame({"source": ["a"] * 90 + ["b"] * 10, "label": [0] * 60 + [1] * 30 + [0] * 5 + [1] * 5,
                          "path": [str(i) for i in range(100)]})
    w = source_balanced_weights(frame)
    totals = pd.Series(w).groupby([frame["source"], frame["label"]]).sum()
    assert np.allclose(totals, totals.iloc[0]) and np.isclose(w.mean(), 1.0)
    wc = class_balanced_weights(frame)
    assert np.isclose(wc[frame["label"] == 0].sum(), wc[frame["label"] == 1].sum())


# --- the real shared data (CI has it) ----------------------------------------------------------

SHARED_COUNTS = {"kaggle": (10605, 5500, 5105), "ham10000": (10015, 8061, 1954), "isic2017": (2750, 2229, 521),
                 "pad_ufes_20": (515, 240, 275)}


@pytest.fixture(scope="module")
def real_shared_sources():
    found, missing = find_sources(tuple(SHARED_COUNTS))
    if missing:
        msg = f"shared data sources missing: {sorted(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the real-data tests: " + msg)
        pytest.skip(msg)
    return found


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(SHARED_COUNTS))
def test_real_sources_match_the_shared_readme(name, real_shared_sources):
    src = real_shared_sources[name]
    d = src.summary()
    assert (d["images"], d["benign"], d["malignant"]) == SHARED_COUNTS[name]
    assert d["problems"] == {}
    if name == "ham10000":
        assert d["groups"] == 7470
        assert d["diagnoses"]["nv"] == 6705 and d["diagnoses"]["mel"] == 1113
    if name == "isic2017":
        assert d["splits"]["test"] == {"benign": 483, "malignant": 117}
        assert d["splits"]["val"] == {"benign": 120, "malignant": 30}


def test_lesion_boxes_that_are_not_boxes_are_refused(tmp_path):
    from skinlesion.evaluation.localisation import BOX_CSV, ham10000_with_boxes

    root = make_ham(tmp_path / "ham", [("HAM_1", "ISIC_1", "mel"), ("HAM_2", "ISIC_2", "nv")])
    boxes = pd.DataFrame({"image_id": ["ISIC_1", "ISIC_2"], "top": [2, 10], "bottom": [30, 40],
                          "left": [5, 8], "right": [40, 44]})
    boxes.to_csv(root / BOX_CSV, index=False)
    frame, _ = ham10000_with_boxes(tmp_path, root=root)
    assert len(frame) == 2 and frame["bottom"].dtype.kind in "if"
    for bad in ({"top": 50}, {"right": 1}, {"left": "x"}, {"bottom": -3}):
        boxes.assign(**{k: [v, boxes[k][1]] for k, v in bad.items()}).to_csv(root / BOX_CSV, index=False)
        with pytest.raises(DataError, match="1 lesion boxes are not boxes.*ISIC_1"):
            ham10000_with_boxes(tmp_path, root=root)


def test_data_sources_prints_each_sets_licence(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from skinlesion.cli import main

    monkeypatch.setenv("SKINLESION_DATA_DIR", str(make_kaggle(tmp_path / "kaggle")))
    out = CliRunner().invoke(main, ["data", "sources"]).output
    assert "licence: see the Kaggle page (CC0 stated there)" in out

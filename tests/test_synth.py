"""Tests for the synthetic dataset generator (skinlesion.data.synth)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinlesion import CLASS_NAMES
from skinlesion.data import synth
from skinlesion.data.synth import (
    SYNTHETIC_MARKER,
    SynthError,
    generate_dataset,
    image_rng,
    is_synthetic,
    synth_image,
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_image_shape_and_dtype() -> None:
    for label in (0, 1):
        img = synth_image(label, np.random.default_rng(label), size=64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not a blank image


def test_synth_image_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label"):
        synth_image(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        synth_image(0, np.random.default_rng(0), size=8)


def test_synth_image_is_deterministic_in_the_rng() -> None:
    a = synth_image(1, np.random.default_rng(7), size=64)
    b = synth_image(1, np.random.default_rng(7), size=64)
    c = synth_image(1, np.random.default_rng(8), size=64)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_layout_counts_and_marker(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "ds", n_train_per_class=3, n_test_per_class=2, size=48)
    assert root == tmp_path / "ds"
    assert is_synthetic(root) and is_synthetic(root / "train") and is_synthetic(root / "test")
    marker = (root / SYNTHETIC_MARKER).read_text(encoding="utf-8")
    assert "SYNTHETIC" in marker and "seed: 0" in marker
    expected = {SYNTHETIC_MARKER}
    for split, n in (("train", 3), ("test", 2)):
        for cls in CLASS_NAMES:
            expected |= {f"{split}/{cls}/synth_{split}_{cls}_{i}.jpg" for i in range(n)}
    assert set(_files(root)) == expected
    with Image.open(root / "train" / "malignant" / "synth_train_malignant_0.jpg") as im:
        assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"
    # No temporary or backup folders are left beside the dataset.
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_real_folder_is_not_synthetic(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    assert not is_synthetic(tmp_path) and not is_synthetic(tmp_path / "train")


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(n_train_per_class=2, n_test_per_class=1, size=48)
    a = _files(generate_dataset(tmp_path / "a", seed=3, **kw))
    b = _files(generate_dataset(tmp_path / "b", seed=3, **kw))
    c = _files(generate_dataset(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert set(a) == set(c)
    images = [k for k in a if k != SYNTHETIC_MARKER]
    assert all(a[k] != c[k] for k in images)


def test_bigger_dataset_extends_smaller_one(tmp_path: Path) -> None:
    small = _files(generate_dataset(tmp_path / "s", n_train_per_class=2, n_test_per_class=1, size=48))
    big = _files(generate_dataset(tmp_path / "b", n_train_per_class=3, n_test_per_class=1, size=48))
    assert all(big[k] == v for k, v in small.items() if k != SYNTHETIC_MARKER)


def test_png_format(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "p", n_train_per_class=2, n_test_per_class=0, size=48, fmt="png")
    files = sorted((root / "train" / "benign").iterdir())
    assert [p.name for p in files] == ["synth_train_benign_0.png", "synth_train_benign_1.png"]
    with Image.open(files[0]) as im:
        assert im.format == "PNG"
    assert not (root / "test").exists()  # no empty split folders


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="fmt"):
        generate_dataset(tmp_path / "x", fmt="GIF")
    with pytest.raises(SynthError, match="n_train_per_class"):
        generate_dataset(tmp_path / "x", n_train_per_class=1)
    with pytest.raises(ValueError, match="split"):
        image_rng(0, "val", 0, 0)
    assert not (tmp_path / "x").exists()


def test_regenerating_a_synthetic_dataset_replaces_it(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    generate_dataset(root, n_train_per_class=3, n_test_per_class=1, size=48, seed=1)
    generate_dataset(root, n_train_per_class=2, n_test_per_class=1, size=48, seed=1)
    assert len(list((root / "train" / "benign").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def _real_looking(root: Path) -> Path:
    real = root / "train" / "benign" / "ISIC_0000001.jpg"
    real.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 150, 130)).save(real)
    return real


def test_refuses_a_link_before_writing_anything(tmp_path: Path) -> None:
    real = generate_dataset(tmp_path / "ds", n_train_per_class=2, n_test_per_class=0, size=32)
    before = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SynthError, match="is a symbolic link"):
        generate_dataset(tmp_path / "link", n_train_per_class=2, n_test_per_class=0, size=32)
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "link"])


def test_refuses_to_clobber_real_data(tmp_path: Path) -> None:
    root = tmp_path / "real"
    real = _real_looking(root)
    before = real.read_bytes()
    with pytest.raises(SynthError, match="refusing.*overwrite=True"):
        generate_dataset(root, n_train_per_class=2, n_test_per_class=1, size=48)
    assert real.read_bytes() == before
    assert not is_synthetic(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]


def test_refuses_a_synthetic_folder_someone_added_real_files_to(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "ds", n_train_per_class=2, n_test_per_class=1, size=48)
    extra = root / "train" / "benign" / "ISIC_0000001.jpg"
    extra.write_bytes(b"not ours")
    with pytest.raises(SynthError, match="refusing"):
        generate_dataset(root, n_train_per_class=2, n_test_per_class=1, size=48)
    assert extra.read_bytes() == b"not ours"


def test_overwrite_true_replaces_a_non_synthetic_folder(tmp_path: Path) -> None:
    root = tmp_path / "real"
    real = _real_looking(root)
    generate_dataset(root, n_train_per_class=2, n_test_per_class=1, size=48, overwrite=True)
    assert not real.exists() and is_synthetic(root)


def test_overwrite_never_replaces_a_project_folder(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\n")
    with pytest.raises(SynthError, match="project"):
        generate_dataset(root, n_train_per_class=2, n_test_per_class=1, size=48, overwrite=True)
    assert (root / "pyproject.toml").exists()


def test_interrupted_run_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_encode = synth._encode

    def failing_encode(img: np.ndarray, fmt: str) -> bytes:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
        return real_encode(img, fmt)

    monkeypatch.setattr(synth, "_encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "ds", n_train_per_class=4, n_test_per_class=1, size=48)
    assert list(tmp_path.iterdir()) == []

    # An interrupted regeneration keeps the previous complete dataset intact.
    monkeypatch.setattr(synth, "_encode", real_encode)
    root = generate_dataset(tmp_path / "ds", n_train_per_class=2, n_test_per_class=1, size=48)
    before = _files(root)
    calls["n"] = 0
    monkeypatch.setattr(synth, "_encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(root, n_train_per_class=4, n_test_per_class=1, size=48, seed=9)
    assert _files(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def _colour_features(img: np.ndarray) -> np.ndarray:
    """Simple colour statistics of the central half of the image, where the lesion is."""
    h, w, _ = img.shape
    centre = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).astype(np.float32) / 255
    lum = centre.mean(axis=1)
    dark = centre[lum < np.percentile(lum, 40)]
    return np.concatenate([centre.std(0), dark.std(0), dark.mean(0), np.percentile(lum, [5, 25, 50])])


def test_classes_are_learnable_but_not_trivially_separable() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = 150
    labels = np.repeat([0, 1], n)
    images = [synth_image(int(y), image_rng(11, "train", int(y), i % n), 64) for i, y in enumerate(labels)]
    feats = np.stack([_colour_features(img) for img in images])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    prob = cross_val_predict(model, feats, labels, cv=5, method="predict_proba")[:, 1]
    auc = roc_auc_score(labels, prob)
    assert 0.75 <= auc <= 0.999, auc


def test_generation_smoke_50_images() -> None:
    # Speed is measured by hand (about 200+ images/s at 128 px); CI machines vary too much to assert it.
    imgs = [synth_image(i % 2, image_rng(0, "test", i % 2, i), 128) for i in range(50)]
    assert len({im.tobytes() for im in imgs}) == 50

"""Tests for ITA skin-tone estimation and the skin-tone subgroup table (skinlesion.evaluation.skintone)."""
from __future__ import annotations

import importlib.util
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from skinlesion.data.synth import image_rng, synth_image
from skinlesion.evaluation.skintone import (
    ITA_CATEGORIES,
    UNKNOWN_CATEGORY,
    estimate_ita,
    estimate_ita_details,
    ita_category,
    ita_from_lab,
    skin_mask,
    subgroup_table,
)

SKIN_COLOURS = {  # RGB of flat patches, from pale to very dark skin
    "pale": (243, 214, 196),
    "fair": (226, 182, 150),
    "medium": (196, 146, 108),
    "brown": (141, 96, 66),
    "dark": (82, 56, 42),
}


def _flat(rgb: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), rgb, dtype=np.uint8)


def _hand_ita(rgb: tuple[int, int, int]) -> float:
    lightness, _, b = rgb2lab(np.array([[rgb]], dtype=np.uint8))[0, 0]
    return math.degrees(math.atan((lightness - 50.0) / b))


@pytest.mark.parametrize("name", list(SKIN_COLOURS))
def test_ita_of_flat_colour_matches_hand_computation(name: str) -> None:
    rgb = SKIN_COLOURS[name]
    assert estimate_ita(_flat(rgb)) == pytest.approx(_hand_ita(rgb), abs=1e-6)


def test_ita_from_lab_formula() -> None:
    assert ita_from_lab(50.0, 20.0) == pytest.approx(0.0)
    assert ita_from_lab(70.0, 20.0) == pytest.approx(45.0)
    assert ita_from_lab(30.0, 20.0) == pytest.approx(-45.0)
    out = ita_from_lab(np.array([60.0, 40.0]), np.array([10.0, 10.0]))
    assert out == pytest.approx([45.0, -45.0])
    # Past b* = 0 the angle continues smoothly instead of flipping sign.
    assert ita_from_lab(70.0, -1.0) > 90.0 and ita_from_lab(30.0, -1.0) < -90.0


def test_light_skin_orders_above_dark_skin_and_categories_follow() -> None:
    rng = np.random.default_rng(0)
    itas = []
    for rgb in SKIN_COLOURS.values():
        noisy = np.clip(_flat(rgb, 96) + rng.normal(0, 4, (96, 96, 3)), 0, 255).astype(np.uint8)
        itas.append(estimate_ita(noisy))
    assert itas == sorted(itas, reverse=True)
    ranks = [ITA_CATEGORIES.index(ita_category(v)) for v in itas]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    assert ita_category(itas[0]) in ("very light", "light") and ita_category(itas[-1]) in ("brown", "dark")


@pytest.mark.parametrize(
    ("ita", "expected"),
    [
        (70.0, "very light"), (55.01, "very light"), (55.0, "light"), (41.0, "intermediate"),
        (30.0, "intermediate"), (28.0, "tan"), (10.0, "brown"), (0.0, "brown"), (-30.0, "dark"),
        (-80.0, "dark"), (120.0, "very light"), (math.nan, "unknown"), (None, "unknown"),
    ],
)
def test_ita_category_bins(ita: float | None, expected: str) -> None:
    assert ita_category(ita) == expected


def test_categories_are_ordered_light_to_dark() -> None:
    assert ITA_CATEGORIES == ("very light", "light", "intermediate", "tan", "brown", "dark")
    assert UNKNOWN_CATEGORY == "unknown" and UNKNOWN_CATEGORY not in ITA_CATEGORIES


def _scene(size: int = 160) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Skin with a brown central lesion, a black round vignette and a hair; returns truth masks."""
    rng = np.random.default_rng(1)
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size
    r = np.hypot(xx - 0.5, yy - 0.5)
    img = np.empty((size, size, 3), np.float64)
    img[:] = SKIN_COLOURS["fair"]
    lesion = r < 0.17
    img[lesion] = (95, 60, 40)
    hair = (np.abs(yy - (0.3 + 0.4 * xx)) < 0.6 / size) & (r > 0.2)
    img[hair] = (30, 22, 20)
    vignette = r > 0.47
    img[vignette] = (6, 5, 5)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), {"lesion": lesion, "hair": hair, "vignette": vignette}


def test_skin_mask_excludes_lesion_vignette_and_hair() -> None:
    img, truth = _scene()
    mask = skin_mask(img)
    assert mask.shape == img.shape[:2] and mask.dtype == bool
    for name, region in truth.items():
        assert not (mask & region).any(), f"{name} pixels leaked into the skin mask"
    skin = ~truth["lesion"] & ~truth["hair"] & ~truth["vignette"]
    assert mask.sum() > 0.4 * skin.sum()  # most of the true skin survives the safety margins
    assert estimate_ita(img) == pytest.approx(_hand_ita(SKIN_COLOURS["fair"]), abs=2.0)


def test_skin_mask_on_synthetic_dermoscopy_images() -> None:
    for i in range(6):
        img = synth_image(i % 2, image_rng(21, "train", i % 2, i), 128)
        mask = skin_mask(img)
        lightness = rgb2lab(img)[..., 0]
        assert mask.mean() > 0.2
        assert not (mask & (lightness < 20)).any()  # vignette and hairs are out
        assert not mask[54:74, 54:74].any()  # the lesion sits near the centre
        # What is kept is the lighter skin, not the lesion.
        assert np.median(lightness[mask]) > np.median(lightness[~mask & (lightness > 20)])
        assert math.isfinite(estimate_ita(img))


def test_large_image_mask_matches_input_size() -> None:
    img, _ = _scene(size=400)
    wide = np.concatenate([img, img[:, :100]], axis=1)  # 400 x 500, shrunk internally
    mask = skin_mask(wide)
    assert mask.shape == (400, 500)
    assert estimate_ita(wide) == pytest.approx(_hand_ita(SKIN_COLOURS["fair"]), abs=2.0)


def test_nan_with_reason_when_no_skin_is_left() -> None:
    est = estimate_ita_details(np.zeros((64, 64, 3), np.uint8))
    assert math.isnan(est.ita) and est.category == "unknown"
    assert est.skin_fraction < 0.05 and "usable skin" in (est.note or "")


def test_blue_cast_gives_very_light_with_a_note() -> None:
    est = estimate_ita_details(_flat((190, 190, 215)))
    assert est.b_star < 0 and est.ita > 90 and est.category == "very light"
    assert "blue colour cast" in (est.note or "")


def test_input_types() -> None:
    rgb = SKIN_COLOURS["medium"]
    expected = estimate_ita(_flat(rgb))
    assert estimate_ita(_flat(rgb) / 255.0) == pytest.approx(expected, abs=1e-6)
    rgba = np.dstack([_flat(rgb), np.full((64, 64), 255, np.uint8)])
    assert estimate_ita(rgba) == pytest.approx(expected)
    assert estimate_ita(Image.fromarray(_flat(rgb))) == pytest.approx(expected)
    with pytest.raises(ValueError, match="colour image"):
        estimate_ita(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        estimate_ita(_flat(rgb).astype(np.float32))


# --- subgroup table --------------------------------------------------------------------------

needs_metrics = pytest.mark.skipif(
    importlib.util.find_spec("skinlesion.metrics.classification") is None, reason="skinlesion.metrics.classification not available yet"
)


def _cases() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    cats = ["very light"] * 120 + ["light"] * 10 + ["dark"] * 40 + [UNKNOWN_CATEGORY] * 5
    y = np.concatenate([rng.integers(0, 2, 120), [0, 1] * 5, np.zeros(40, int), rng.integers(0, 2, 5)])
    prob = np.clip(0.5 * y + rng.uniform(0.0, 0.6, y.size), 0.0, 1.0)
    return y, prob, cats


@needs_metrics
def test_subgroup_table_rows_counts_and_notes() -> None:
    y, prob, cats = _cases()
    rows = subgroup_table(y, prob, cats, threshold=0.5, min_n=30, n_resamples=200, seed=0)
    by = {r["category"]: r for r in rows}
    assert [r["category"] for r in rows] == [*ITA_CATEGORIES, UNKNOWN_CATEGORY]
    assert sum(r["n"] for r in rows) == y.size
    for r in rows:
        assert r["n"] == r["n_pos"] + r["n_neg"]
        for m in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            assert {m, f"{m}_low", f"{m}_high"} <= set(r)

    big = by["very light"]
    assert big["n"] == 120 and big["note"] == ""
    for m in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert big[f"{m}_low"] <= big[m] <= big[f"{m}_high"]
    assert 0.5 < big["roc_auc"] <= 1.0

    small = by["light"]
    assert small["n"] == 10 and small["note"] == "too small to judge (n=10)"
    assert math.isfinite(small["accuracy"]) and math.isfinite(small["roc_auc"])
    assert math.isnan(small["accuracy_low"]) and math.isnan(small["roc_auc_high"])

    one = by["dark"]
    assert one["n"] == 40 and one["n_pos"] == 0 and one["note"] == "only one class present"
    assert math.isfinite(one["specificity"]) and math.isfinite(one["accuracy"])
    assert math.isnan(one["sensitivity"]) and math.isnan(one["roc_auc"])

    assert by["tan"]["n"] == 0 and by["tan"]["note"] == "no images in this group"
    assert math.isnan(by["tan"]["accuracy"])
    assert "too small to judge (n=5)" in by[UNKNOWN_CATEGORY]["note"]


@needs_metrics
def test_subgroup_table_is_seeded_and_accepts_other_groupings() -> None:
    y, prob, _ = _cases()
    groups = np.where(np.arange(y.size) % 2 == 0, "site B", "site A")
    a = subgroup_table(y, prob, groups, 0.5, n_resamples=100, seed=3)
    b = subgroup_table(y, prob, groups, 0.5, n_resamples=100, seed=3)
    assert [r["category"] for r in a] == ["site B", "site A"]
    assert a == b


@needs_metrics
def test_subgroup_table_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one entry per image"):
        subgroup_table([0, 1, 0], [0.1, 0.9, 0.2], ["light", "light"], 0.5)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.realdata
def test_ita_on_real_benign_images() -> None:
    from skinlesion.config import shared_dataset

    folder = shared_dataset() / "train" / "benign"
    paths = sorted(folder.glob("*.jpg"))[:20] if folder.is_dir() else []
    if not paths:
        pytest.skip("the shared dataset (../shared/data/melanoma_cancer_dataset) is not present")
    itas = [estimate_ita(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    counts = Counter(ita_category(v) for v in itas)
    print("ITA categories of 20 real benign images:", dict(counts))
    assert sum(math.isfinite(v) for v in itas) >= 15
    # The dataset is known to be mostly light skin.
    assert counts["very light"] + counts["light"] + counts["intermediate"] >= 12

"""``skinlesion robustness``: the transforms, the report's shape, and dihedral TTA = mean of the 8 views."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.evaluation import robustness as rb
from skinlesion.models.features import VIEWS


def _image(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- transforms (no model) ------------------------------------------------------------------
def test_transform_names():
    assert list(rb.TRANSFORMS)[:8] == list(VIEWS)
    for name in ("jpeg_q75", "webp_q80", "downscale_0.5", "zoom_in_15", "zoom_out_15", "warmer", "brightness_1.15"):
        assert name in rb.TRANSFORMS
    with pytest.raises(ValueError, match="unknown transform"):
        rb.apply_transform("nope", _image())


def test_geometric_transforms():
    img = _image()
    assert rb.apply_transform("downscale_0.5", img).shape == (30, 40, 3)
    zi = rb.apply_transform("zoom_in_15", img)
    assert zi.shape == (52, 70, 3)
    np.testing.assert_array_equal(zi, img[4:56, 5:75])
    zo = rb.apply_transform("zoom_out_15", img)
    assert zo.shape == (69, 92, 3)
    assert (zo[0] == rb.DARK_BORDER).all() and (zo[:, -1] == rb.DARK_BORDER).all()
    np.testing.assert_array_equal(zo[4:64, 6:86], img)
    assert rb.apply_transform("r90", img).shape == (80, 60, 3)
    np.testing.assert_array_equal(rb.apply_transform("id", img), img)


def test_encodings_and_colour():
    img = _image()
    for name, fmt in (("jpeg_q75", "JPEG"), ("webp_q80", "WEBP")):
        data = rb.apply_transform(name, img)
        assert isinstance(data, bytes)
        assert Image.open(io.BytesIO(data)).format == fmt
    warm = rb.apply_transform("warmer", np.full((4, 4, 3), 100, np.uint8))
    assert tuple(warm[0, 0]) == (108, 100, 92)
    bright = rb.apply_transform("brightness_1.15", np.full((4, 4, 3), 240, np.uint8))
    assert (bright == 255).all()


def test_summarise_shape():
    import pandas as pd

    table = pd.DataFrame({"transform": ["id", "id", "r90", "r90", "webp_q80", "webp_q80"],
                          "dp": [0.0, 0.0, 0.1, -0.3, np.nan, 0.2], "flip": [0.0, 0.0, 1.0, 0.0, np.nan, 1.0],
                          "crosses_threshold": [0.0, 0.0, 0.0, 0.0, np.nan, 1.0]})
    s = rb.summarise(table)
    assert s["transforms"]["id"] == {"mean_abs_dp": 0.0, "p95_abs_dp": 0.0, "decision_flip_rate": 0.0,
                                     "threshold_cross_rate": 0.0, "mean_dp": 0.0, "mean_dp_ci": [0.0, 0.0], "n": 2}
    r90 = s["transforms"]["r90"]
    assert r90["mean_abs_dp"] == pytest.approx(0.2) and r90["mean_dp"] == pytest.approx(-0.1)
    assert r90["mean_dp_ci"][0] <= -0.1 <= r90["mean_dp_ci"][1]
    assert r90["decision_flip_rate"] == 0.5 and r90["threshold_cross_rate"] == 0.0
    assert s["transforms"]["webp_q80"]["n"] == 1 and s["transforms"]["webp_q80"]["threshold_cross_rate"] == 1.0
    # The pooled views count each image several times: no CI for them.
    assert s["groups"]["dihedral"]["n"] == 2 and "mean_dp_ci" not in s["groups"]["dihedral"]


def test_a_shift_every_image_shares_is_told_from_spread():
    import pandas as pd

    rng = np.random.default_rng(0)
    shift = 0.05 + rng.normal(0, 0.01, 200)  # most images move the same way
    spread = rng.normal(0, 0.05, 200)  # as large, but no direction
    table = pd.DataFrame({"transform": ["shift"] * 200 + ["spread"] * 200, "dp": np.r_[shift, spread],
                          "flip": 0.0, "crosses_threshold": 0.0})
    s = rb.summarise(table)["transforms"]
    assert s["shift"]["mean_dp_ci"][0] > 0.04
    assert s["spread"]["mean_dp_ci"][0] < 0 < s["spread"]["mean_dp_ci"][1]


# --- on the tiny trained bundle ---------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from skinlesion.serving.inference import Predictor

    return Predictor.from_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def lesions(predictor):
    """Generated lesion images at exactly the model's input size (the intake uses them as they are)."""
    from skinlesion.data.synth import synth_image

    rng = np.random.default_rng(3)
    return [synth_image(i % 2, rng, predictor.input_size) for i in range(6)]


@pytest.mark.slow
def test_identity_is_zero_and_dihedral_mean_is_tta(predictor, lesions):
    table = rb.measure(predictor, lesions, transforms=list(VIEWS), batch_size=4)
    assert len(table) == 8 * len(lesions)
    ident = table[table["transform"] == "id"]
    assert np.all(ident["dp"] == 0.0) and np.all(ident["flip"] == 0.0)
    # Dihedral TTA in the Predictor is the mean of the raw probabilities of the 8 views.
    mean_of_views = table.groupby("image", sort=False)["raw_probability"].mean().to_numpy()
    tta = np.array([p.raw_probability for p in predictor.predict_many(lesions, tta=True)])
    np.testing.assert_allclose(mean_of_views, tta, atol=1e-5)
    one = predictor.predict(lesions[0], tta=True)
    assert one.raw_probability == pytest.approx(mean_of_views[0], abs=1e-5)


@pytest.mark.slow
def test_robustness_command_writes_report(tiny_bundle, tmp_path):
    from skinlesion.cli import main

    out = tmp_path / "rob"
    res = CliRunner().invoke(main, ["robustness", str(tiny_bundle), "--n", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "robustness.json").read_text())
    assert set(doc["transforms"]) == set(rb.TRANSFORMS)
    for name, v in doc["transforms"].items():
        assert set(v) == {"mean_abs_dp", "p95_abs_dp", "decision_flip_rate", "threshold_cross_rate", "mean_dp",
                          "mean_dp_ci", "n"}, name
        assert isinstance(v["n"], int) and v["n"] == doc["n_images"] == 5
        assert 0.0 <= v["mean_abs_dp"] <= v["p95_abs_dp"] + 1e-12 <= 1.0 + 1e-12
        assert 0.0 <= v["decision_flip_rate"] <= 1.0 and 0.0 <= v["threshold_cross_rate"] <= 1.0
        assert abs(v["mean_dp"]) <= v["mean_abs_dp"] + 1e-12
        assert v["mean_dp_ci"][0] <= v["mean_dp"] <= v["mean_dp_ci"][1]
    assert doc["transforms"]["id"]["mean_abs_dp"] == 0.0
    assert doc["transforms"]["id"]["decision_flip_rate"] == 0.0
    assert (out / "robustness.png").stat().st_size > 1000
    assert "NaN" not in (out / "robustness.json").read_text()


@pytest.mark.slow
def test_robustness_on_a_folder(tiny_bundle, lesions, tmp_path):
    for i, img in enumerate(lesions):
        folder = tmp_path / "site" / ("malignant" if i % 2 else "benign")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    out = rb.run_robustness(tiny_bundle, str(tmp_path / "site"), n=4, out_dir=tmp_path / "out",
                            transforms=["id", "r90", "zoom_out_15"])
    doc = json.loads((out / "robustness.json").read_text())
    assert doc["n_images"] == 4 and set(doc["transforms"]) == {"id", "r90", "zoom_out_15"}

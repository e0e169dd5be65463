"""The lesion crop (`skinlesion.models.lesion`): the rule finds a dark central blob and ignores a vignette, the
crop stays in the frame; a bundle trained on crops serves crop views, its TTA is their mean, its maps are drawn
back onto the frame; the options that cannot go with it are refused. And the pilot's box arithmetic."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def rule():
    from skinlesion.models import lesion

    return lesion


@pytest.fixture(scope="module")
def pilot():
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location("lesion_crop_pilot", TOOLS / "lesion_crop_pilot.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path.remove(str(TOOLS))


def _skin(size: int = 224, lesion: tuple[float, float, float] | None = (112, 112, 30), vignette: float | None = None,
          seed: int = 0) -> np.ndarray:
    """Light skin with noise, a dark disc (centre y, x, radius) and optionally dark corners outside a circle."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (210, 170, 150), np.float32) + rng.normal(0, 6, (size, size, 3))
    y, x = np.ogrid[:size, :size]
    if lesion is not None:
        cy, cx, r = lesion
        img[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = (90, 55, 40)
    if vignette is not None:
        img[(y - size / 2) ** 2 + (x - size / 2) ** 2 > (vignette * size) ** 2] = 8
    return np.clip(img, 0, 255).astype(np.uint8)


def test_finds_a_central_dark_blob(rule):
    top, bottom, left, right = rule.lesion_box(_skin(lesion=(100, 120, 30)))
    assert abs(top - 70) <= 3 and abs(bottom - 131) <= 3 and abs(left - 90) <= 3 and abs(right - 151) <= 3


def test_a_vignette_is_not_the_lesion(rule):
    top, bottom, left, right = rule.lesion_box(_skin(lesion=(112, 112, 25), vignette=0.5))
    assert abs(top - 87) <= 3 and abs(bottom - 138) <= 3 and abs(left - 87) <= 3 and abs(right - 138) <= 3


def test_no_lesion_or_a_flat_image_keeps_the_frame(rule):
    assert rule.lesion_box(np.full((224, 224, 3), 128, np.uint8)) is None
    # dark, but nowhere near the centre: the threshold then splits plain skin, whose noise spans the frame
    off_centre = _skin(lesion=(20, 20, 12))
    assert rule.crop_of(off_centre) == (0, 0, 224)
    assert rule.apply_crop(off_centre, (0, 0, 224)) is off_centre
    np.testing.assert_array_equal(rule.lesion_crop(off_centre[None])[0], off_centre)
    assert rule.lesion_crop(off_centre[None][:0]).shape == (0, 224, 224, 3)


def test_crop_is_square_in_frame_and_never_too_tight(rule):
    assert rule.crop_square(None, 224) == (0, 0, 224)
    y0, x0, side = rule.crop_square((100, 110, 100, 110), 224)  # a tiny box: the floor applies
    assert side == round(rule.MIN_SIDE * 224) and y0 <= 100 and y0 + side >= 110
    y0, x0, side = rule.crop_square((0, 60, 150, 224), 224)  # at a corner: shifted inside, not padded
    assert min(y0, x0) >= 0 and y0 + side <= 224 and x0 + side <= 224
    assert side == round(74 * (1 + 2 * rule.MARGIN))
    skin = _skin(lesion=(112, 112, 30))
    y0, x0, side = rule.crop_of(skin)
    assert side < 224
    image = rule.lesion_crop(skin[None])[0]
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    assert image[112, 112].mean() < 100 and image[5, 5].mean() > 150  # zoomed in: skin only at the edge
    np.testing.assert_array_equal(image, rule.apply_crop(skin, (y0, x0, side)))


def test_box_overlap(pilot):
    assert pilot.iou((0, 10, 0, 10), (0, 10, 0, 10)) == 1.0
    assert pilot.iou((0, 10, 0, 10), (0, 10, 5, 15)) == pytest.approx(50 / 150)
    assert pilot.iou((0, 10, 0, 10), (20, 30, 20, 30)) == 0.0
    assert pilot._kept((0, 10, 0, 10), (0, 10, 5, 15)) == pytest.approx(0.5)
    assert pilot._kept((0, 10, 0, 10), (-5, 20, -5, 20)) == 1.0


def test_crop_views_are_the_crop_then_the_view(rule):
    from skinlesion.models.features import apply_view

    batch = np.stack([_skin(lesion=(100, 120, 30)), _skin(lesion=(112, 112, 20), seed=1)])
    with pytest.raises(ValueError, match="crop_from"):  # a crop is cut from the decoded image, not from an array
        apply_view(batch, "lc2_fh")
    assert rule.crop_views(("id", "fh"), True) == ("lc2_id", "lc2_fh") and rule.crop_views(["id"], False) == ("id",)
    assert rule.crop_views(("lc2_id", "fh"), True) == ("lc2_id", "lc2_fh")  # already behind the crop: kept
    assert rule.base_view("lc2_fh_r90") == "fh_r90" and rule.base_view("fh") == "fh" and not rule.is_crop_view("id")


def test_uncrop_map_puts_the_map_where_the_crop_was():
    from skinlesion.serving.explanation import uncrop_map

    out = uncrop_map(np.ones((7, 7), np.float32), (10, 20, 30), 64)
    assert out.shape == (64, 64) and out[10:40, 20:50].min() == pytest.approx(1.0)
    assert out.sum() == pytest.approx(30 * 30)


@pytest.fixture(scope="module")
def crop_bundle(synth_root, tmp_path_factory):
    """A synthetic stage-1 bundle trained on lesion crops and served with dihedral TTA."""
    from skinlesion.training.train import train

    from conftest import synth_train_config

    out = tmp_path_factory.mktemp("crop-model")
    return train(synth_train_config(synth_root, out, run_id="crop", views=("id", "fh"), tta=True, lesion_crop=True))


def test_a_crop_bundle_serves_the_mean_of_its_crop_views(crop_bundle, synth_root):
    from skinlesion.bundle.format import load
    from skinlesion.data.intake import read_image
    from skinlesion.models.features import VIEWS, apply_view
    from skinlesion.models.lesion import RULE, base_view, crop_from
    from skinlesion.serving.inference import Predictor

    b = load(crop_bundle)
    assert b.meta.lesion_crop and b.meta.served_views == tuple("lc2_" + v for v in VIEWS)
    assert b.meta.crop_rule == RULE and b.meta.training.config["lesion_crop"] == RULE
    predictor = Predictor.from_bundle(crop_bundle)
    files = sorted((synth_root / "test").rglob("*.jpg"))[:3]
    crops = np.stack([crop_from(read_image(f.read_bytes()), b.input_size)[0] for f in files])
    by_view = np.stack([np.asarray(b.model.predict(apply_view(crops, base_view(v)), verbose=0)).ravel()
                        for v in b.meta.served_views], axis=1)
    served = [p.raw_probability for p in predictor.predict_many([str(f) for f in files])]
    np.testing.assert_allclose(served, by_view.mean(axis=1), atol=1e-5)


def test_a_crop_bundles_map_lies_inside_its_crop(crop_bundle):
    from skinlesion.models.lesion import crop_of
    from skinlesion.serving.inference import Predictor

    predictor = Predictor.from_bundle(crop_bundle)
    size = predictor.input_size
    arr = _skin(size=size, lesion=(size / 2, size / 2, size / 8))
    y0, x0, side = crop_of(arr)
    assert side < size  # a real crop, so there is an outside to check
    heat = predictor.explain(arr, "gradcam").heatmap
    assert heat.shape == (size, size)
    outside = np.ones_like(heat, bool)
    outside[y0:y0 + side, x0:x0 + side] = False
    assert heat[outside].max() == 0.0 and heat[~outside].max() > 0.0


def test_cached_scores_and_an_ensemble_with_a_crop_member_match_the_predictor(crop_bundle, synth_root, tmp_path):
    from skinlesion.bundle.format import load
    from skinlesion.evaluation.generalise import cached_probabilities, stage1_probabilities
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.ensemble import make_ensemble
    from skinlesion.training.train import train

    from conftest import synth_train_config

    files = sorted((synth_root / "test").rglob("*.jpg"))[:6]
    served = Predictor.from_bundle(crop_bundle).predict_batch(files)
    cached = stage1_probabilities(crop_bundle, files)
    np.testing.assert_allclose(cached["probability"], served["probability"], atol=1e-5)
    plain = train(synth_train_config(synth_root, tmp_path, run_id="plain", views=("id", "fh"), tta=True))
    ens = make_ensemble([plain, crop_bundle], out_dir=tmp_path, run_id="ens")
    meta = load(ens).meta
    assert not meta.lesion_crop and meta.served_views[0] == "id"  # the ensemble itself does not crop
    served = Predictor.from_bundle(ens).predict_batch(files)
    cached = cached_probabilities(ens, files)
    np.testing.assert_allclose(cached["probability"], served["probability"], atol=1e-5)
    # Its card names the crop's weakness; a model without a crop member has no such line.
    from skinlesion.evaluation.model_card import CROP_LIMITATION, model_card

    assert CROP_LIMITATION in model_card(ens) and CROP_LIMITATION in model_card(crop_bundle)
    assert CROP_LIMITATION not in model_card(plain)


def test_the_crop_is_refused_with_fine_tuning_and_for_the_gate(crop_bundle, tmp_path):
    from click.testing import CliRunner

    from skinlesion.bundle.format import BundleError
    from skinlesion.cli import main
    from skinlesion.training.gate import attach_gate
    from skinlesion.training.train import TrainConfig, train

    with pytest.raises(ValueError, match="stage 1 only"):
        train(TrainConfig(lesion_crop=True, fine_tune=10, out_dir=str(tmp_path)))
    res = CliRunner().invoke(main, ["train", "--lesion-crop", "--fine-tune", "10", "--out-dir", str(tmp_path)])
    assert res.exit_code != 0 and "stage 1 only" in res.output
    with pytest.raises(BundleError, match="reads lesion crops"):
        attach_gate(crop_bundle)


def test_cached_crop_view_features_are_the_crop_then_the_view(synth_root, tmp_path):
    from skinlesion.data.intake import load_for_model, read_image
    from skinlesion.models.backbones import build_feature_extractor
    from skinlesion.models.features import apply_view, extract_features
    from skinlesion.models.lesion import base_view, crop_from, is_crop_view

    model = build_feature_extractor("efficientnet_lite0", None, 64)
    files = sorted((synth_root / "test").rglob("*.jpg"))[:4]
    views = ("id", "lc2_id", "lc2_fh_r90")
    feats, ok, _ = extract_features(model, files, backbone="lite0-test", weights_tag=None, views=views,
                                    cache_root=tmp_path / "cache", progress=False)
    assert ok.all()
    batch = np.stack([load_for_model(f.read_bytes(), 64) for f in files])
    crops = np.stack([crop_from(read_image(f.read_bytes()), 64)[0] for f in files])  # cut from the decoded files
    for v, view in enumerate(views):
        seen = apply_view(crops, base_view(view)) if is_crop_view(view) else apply_view(batch, view)
        np.testing.assert_allclose(feats[:, v], model.predict(seen, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_a_crop_bundles_tflite_export_crops_as_the_predictor_does(crop_bundle, synth_root, tmp_path):
    import json
    import shutil

    from skinlesion.serving.backends import MANIFEST_FILE, PARITY_FILE, export_folder
    from skinlesion.serving.export import export_bundle
    from skinlesion.serving.inference import Predictor

    copy = tmp_path / "bundle"
    shutil.copytree(crop_bundle, copy)
    export_bundle(copy, "tflite", parity_data=synth_root / "test", parity_n=8)
    folder = export_folder(copy, "tflite")
    parity = json.loads((folder / PARITY_FILE).read_text())
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert parity["passed"] is True and manifest["input"]["lesion_crop"] is True
    assert manifest["input"]["lesion_crop_rule"] == 2
    assert "cut from the decoded image" in manifest["input"]["values"]
    files = sorted((synth_root / "test").rglob("*.jpg"))[:4]
    keras = Predictor.from_bundle(copy).predict_batch(files)["probability"].to_numpy()
    lite = Predictor.from_bundle(copy, backend="tflite").predict_batch(files)["probability"].to_numpy()
    np.testing.assert_allclose(lite, keras, atol=1e-4)


def _striped(size: int, period: int) -> np.ndarray:
    """Light skin, a dark central disc of radius size / 8 striped every ``period`` pixels: detail a small
    reading blurs away."""
    y, x = np.ogrid[:size, :size]
    img = np.full((size, size, 3), (210, 170, 150), np.uint8)
    disc = (y + 0.5 - size / 2) ** 2 + (x + 0.5 - size / 2) ** 2 <= (size / 8) ** 2
    stripes = (x // (period // 2)) % 2 == 0
    img[disc & stripes] = (90, 55, 40)
    img[disc & ~stripes] = (60, 35, 25)
    return img


def test_the_crop_is_found_at_model_size_and_cut_from_the_decoded_pixels(rule):
    from PIL import Image

    from skinlesion.data.intake import square_crop, to_model_array

    big = Image.fromarray(_striped(896, 4))
    small = to_model_array(big, 224)
    fine, crop = rule.crop_from(big, 224)
    assert crop == rule.crop_of(small) and crop[2] < 224
    np.testing.assert_array_equal(fine, rule.cut(square_crop(big), crop, 224))
    coarse = rule.apply_crop(small, crop)  # the same square cut from the 224-px reading (rule 1)
    # 4-px stripes are 1 px at 224 (averaged away), 2.5 px in the crop of the decoded image.
    assert coarse[92:132, 92:132, 0].std() < 1 < 5 < fine[92:132, 92:132, 0].std()
    # Not square: the centre square is read, as the whole image would be.
    wide = Image.fromarray(_striped(896, 4)).crop((0, 98, 896, 798))
    out, where = rule.crop_from(wide, 224)
    assert where == rule.crop_of(to_model_array(wide, 224))
    np.testing.assert_array_equal(out, rule.cut(square_crop(wide), where, 224))
    # An image already at model size is its own original: the array and the decoded image crop alike.
    same = _skin(lesion=(100, 120, 30))
    np.testing.assert_array_equal(rule.crop_from(Image.fromarray(same), 224)[0], rule.lesion_crop(same[None])[0])
    # No lesion: the reading itself.
    flat = Image.new("RGB", (300, 300), (128, 128, 128))
    out, where = rule.crop_from(flat, 224)
    assert where == (0, 0, 224)
    np.testing.assert_array_equal(out, to_model_array(flat, 224))


def test_a_bundle_of_the_older_crop_rule_is_refused_when_served(crop_bundle, synth_root, tmp_path):
    import json
    import shutil

    from skinlesion.bundle.format import BUNDLE_FILE, BundleError
    from skinlesion.evaluation.generalise import stage1_probabilities
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.train import TrainConfig

    assert TrainConfig(lesion_crop=True).lesion_crop == 2 and TrainConfig().lesion_crop is False
    with pytest.raises(ValueError, match="True or False"):
        TrainConfig(lesion_crop=1)
    old = tmp_path / "rule1"
    shutil.copytree(crop_bundle, old)
    meta = json.loads((old / BUNDLE_FILE).read_text())
    meta["training"]["config"]["lesion_crop"] = True  # what a bundle of rule 1 records
    (old / BUNDLE_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="rule 1.*Retrain it"):
        Predictor.from_bundle(old)
    with pytest.raises(BundleError, match="rule 1"):
        stage1_probabilities(old, sorted((synth_root / "test").rglob("*.jpg"))[:2])

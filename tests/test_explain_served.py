"""Explanations of the served model (ensembles, TTA views, the logit), their wording, the
localisation scores and the artefact traps (skinlesion.serving.explanation,
skinlesion.evaluation.localisation, skinlesion.evaluation.traps)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.evaluation import localisation as loc
from skinlesion.evaluation import traps
from skinlesion.metrics.calibration import BENIGN_APPEARING, SUSPICIOUS, UNCERTAIN_REFER
from skinlesion.serving.explanation import (
    NO_STRONG_MALIGNANT_EVIDENCE,
    combine_maps,
    explained_model_text,
    explanation_caption,
    unview_map,
)

# --------------------------------------------------------------------------- wording


def test_benign_appearing_says_no_strong_malignant_evidence():
    c = explanation_caption(BENIGN_APPEARING, "gradcam")
    assert c.title == NO_STRONG_MALIGNANT_EVIDENCE and not c.evidence
    assert "benign-appearing" in c.text and "Grad-CAM" in c.text and "do not read them as suspicious" in c.text


@pytest.mark.parametrize("decision", [SUSPICIOUS, UNCERTAIN_REFER])
def test_other_decisions_present_the_map_as_malignant_evidence(decision):
    c = explanation_caption(decision, "gradcam++")
    assert c.evidence and c.title == "Grad-CAM++: evidence for malignant"
    assert NO_STRONG_MALIGNANT_EVIDENCE not in c.text


def test_benign_target_is_labelled_and_not_assessed_is_not_evidence():
    c = explanation_caption(BENIGN_APPEARING, "scorecam", target="benign")
    assert c.title == "Score-CAM: benign evidence" and c.evidence
    n = explanation_caption("not assessed", "gradcam")
    assert not n.evidence and "not assessed" in n.title
    with pytest.raises(ValueError, match="resolve 'predicted'"):
        explanation_caption(SUSPICIOUS, "gradcam", target="predicted")


def test_explained_model_text_lists_members_and_weights():
    assert explained_model_text("solo", ["solo"], [1.0]) == "solo"
    text = explained_model_text("ens", ["a", "b"], [0.25, 0.75])
    assert text.startswith("ens (ensemble") and "a 25%" in text and "b 75%" in text


# --------------------------------------------------------------------------- maps


@pytest.mark.parametrize("view", ["id", "r90", "r180", "r270", "fh", "fh_r90", "fh_r180", "fh_r270"])
def test_unview_map_undoes_the_dihedral_view(view):
    from skinlesion.models.features import apply_view

    x = np.random.default_rng(0).random((1, 6, 6, 3)).astype(np.float32)
    viewed = apply_view(x, view)[0, ..., 0]
    np.testing.assert_array_equal(unview_map(viewed, view), x[0, ..., 0])


def test_combine_maps_is_the_weighted_sum_at_the_served_size():
    a = np.zeros((4, 4), np.float32)
    a[:2, :2] = 1.0
    b = np.ones((8, 8), np.float32)
    out = combine_maps([a, b], [0.25, 0.75], 8)
    assert out.shape == (8, 8) and out.dtype == np.float32
    assert math.isclose(float(out[0, 0]), 1.0, abs_tol=1e-6) and math.isclose(float(out[7, 7]), 0.75, abs_tol=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        combine_maps([a, b], [0.5, 0.6], 8)
    with pytest.raises(ValueError, match="one weight per map"):
        combine_maps([a], [0.5, 0.5], 8)


# --------------------------------------------------------------------------- the served model


@pytest.fixture(scope="module")
def ensemble(synth_root, synth_bundles, tmp_path_factory):
    from skinlesion.training.ensemble import make_ensemble

    path = make_ensemble(list(synth_bundles), out_dir=tmp_path_factory.mktemp("ens-explain"), run_id="ens-explain")
    return synth_root, path


def test_ensemble_map_is_the_weighted_combination_of_member_maps(ensemble, synth_bundles, monkeypatch):
    from skinlesion.data.intake import load_for_model
    from skinlesion.explain.gradcam import compute_heatmap
    from skinlesion.serving.inference import Predictor

    root, path = ensemble
    predictor = Predictor.from_bundle(path)
    img = next((root / "test" / "malignant").glob("*.jpg"))
    members = [Predictor.from_bundle(b).members[0].bundle for b in synth_bundles]
    maps = [compute_heatmap(b.model, load_for_model(img, b.input_size), "gradcam",
                            layer_name=b.meta.last_conv_layer, target="malignant") for b in members]

    e = predictor.explain(img, "gradcam", tta=False)
    assert e.model == "ens-explain" and e.members == ("a", "b") and e.weights == (0.5, 0.5)
    assert "ens-explain (ensemble" in e.model_text and "a 50%" in e.model_text
    np.testing.assert_allclose(e.heatmap, combine_maps(maps, [0.5, 0.5], predictor.input_size), atol=1e-5)
    heat, png = e  # the (heatmap, overlay) shape callers unpack
    assert heat is e.heatmap and png.startswith(b"\x89PNG") and e[1] is png
    assert json.dumps(e.to_dict())  # JSON-ready

    # Weights recorded in bundle.json are honoured (normalised).
    monkeypatch.setitem(predictor.meta.raw, "member_weights", [1, 3])
    weighted = predictor.explain(img, "gradcam", tta=False)
    assert weighted.weights == (0.25, 0.75)
    np.testing.assert_allclose(weighted.heatmap, combine_maps(maps, [0.25, 0.75], predictor.input_size), atol=1e-5)


def test_tta_map_is_the_mean_of_the_views_mapped_back(synth_bundles):
    """Averaging over the dihedral group makes the map equivariant: the TTA map of a rotated or
    flipped image is the TTA map of the image, rotated or flipped the same way."""
    from skinlesion.models.features import VIEWS, apply_view
    from skinlesion.serving.inference import Predictor

    predictor = Predictor.from_bundle(synth_bundles[1])
    img = np.random.default_rng(1).integers(0, 255, (predictor.input_size,) * 2 + (3,), dtype=np.uint8)
    plain = predictor.explain(img, "gradcam", tta=False)
    tta = predictor.explain(img, "gradcam", tta=True)
    assert plain.views == ("id",) and tta.views == tuple(VIEWS)
    assert predictor.explain_views("gradcam") == ("id",)  # this bundle does not serve TTA
    for view in ("r90", "fh_r270"):
        moved = predictor.explain(apply_view(img[None], view)[0], "gradcam", tta=True).heatmap
        expected = apply_view(tta.heatmap[None, ..., None], view)[0, ..., 0]
        np.testing.assert_allclose(moved, expected, atol=1e-4)


def _manual_gradcam(model, layer_name: str, image: np.ndarray, *, logit: bool) -> np.ndarray:
    """Grad-CAM by hand on a clone of ``model`` whose output is the logit (or the probability)."""
    import keras
    import tensorflow as tf
    from scipy.ndimage import zoom

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if logit:
        clone.get_layer("malignant_probability").activation = keras.activations.linear
    extractor = keras.Model(clone.inputs[0], [clone.get_layer(layer_name).output, clone.outputs[0]])
    x = tf.convert_to_tensor(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        act, out = extractor(x, training=False)
        score = tf.reduce_sum(out)
    grads = tape.gradient(score, act).numpy()[0]
    cam = np.maximum((act.numpy()[0] * grads.mean(axis=(0, 1))).sum(-1), 0.0)
    cam = zoom(cam, (image.shape[0] / cam.shape[0], image.shape[1] / cam.shape[1]), order=1)
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


def test_explanations_differentiate_the_logit_not_the_saturated_sigmoid(synth_bundles):
    from skinlesion.serving.inference import Predictor

    predictor = Predictor.from_bundle(synth_bundles[1])
    bundle = predictor.members[0].bundle
    model, layer = bundle.model, bundle.meta.last_conv_layer
    img = np.random.default_rng(2).integers(0, 255, (bundle.input_size,) * 2 + (3,), dtype=np.uint8)
    e = predictor.explain(img, "gradcam", tta=False)
    assert "pre-activation of the sigmoid Dense output layer" in e.score
    np.testing.assert_allclose(e.heatmap, _manual_gradcam(model, layer, img, logit=True), atol=1e-4)

    # Saturate the output (p == 1.0 in float32): the probability's gradient vanishes, the logit's does not.
    dense = model.get_layer("malignant_probability")
    bias = dense.bias.numpy()
    try:
        dense.bias.assign(bias + 80.0)
        assert float(np.asarray(model(img[None].astype(np.float32))).ravel()[0]) == 1.0
        assert not _manual_gradcam(model, layer, img, logit=False).any()
        saturated = predictor.explain(img, "gradcam", tta=False)
        assert saturated.heatmap.max() > 0.5
        np.testing.assert_allclose(saturated.heatmap, e.heatmap, atol=1e-4)  # a bias shifts z, not dz/dA
    finally:
        dense.bias.assign(bias)


# --------------------------------------------------------------------------- localisation scores


def test_box_in_model_frame_follows_the_centre_square_crop():
    # A 200x150 image: the intake keeps columns 25..175, then 150 -> 300 px doubles everything.
    assert loc.box_in_model_frame((10, 100, 45, 125), (200, 150), 300) == (20.0, 200.0, 40.0, 200.0)
    # Parts outside the crop are clipped.
    assert loc.box_in_model_frame((0, 150, 0, 200), (200, 150), 150) == (0.0, 150.0, 0.0, 150.0)


def test_energy_pointing_and_baseline():
    size = 20
    box = (5.0, 15.0, 5.0, 15.0)
    inside = np.zeros((size, size), np.float32)
    inside[10, 10] = 1.0
    assert loc.energy_in_box(inside, box) == 1.0 and loc.pointing_hit(inside, box) == 1.0
    outside = np.zeros((size, size), np.float32)
    outside[2, 2] = 1.0
    assert loc.energy_in_box(outside, box) == 0.0 and loc.pointing_hit(outside, box) == 0.0
    assert loc.pointing_hit(outside, box, tolerance=4) == 1.0  # within 4 px of the box
    assert math.isnan(loc.energy_in_box(np.zeros((size, size)), box))
    assert loc.pointing_hit(np.ones((size, size)), box) == 0.0  # a constant map points nowhere
    g = loc.gaussian_baseline(size)
    assert g.max() == 1.0 and loc.pointing_hit(g, box) == 1.0 and loc.energy_in_box(g, box) > 0.25


# --------------------------------------------------------------------------- trap painters


@pytest.fixture(scope="module")
def skin() -> np.ndarray:
    from skinlesion.data.synth import synth_image

    return synth_image(0, np.random.default_rng(3), 128)


@pytest.mark.parametrize("name", list(traps.ARTEFACTS))
def test_painters_are_pure_reproducible_and_keep_the_centre(skin, name):
    before = skin.copy()
    a = traps.paint(name, skin, 7)
    assert a.shape == skin.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(skin, before)  # the input is not modified
    np.testing.assert_array_equal(a, traps.paint(name, skin, 7))  # same seed, same artefact
    changed = np.any(a != skin, axis=-1)
    assert changed.mean() > 0.001, "the artefact must be visible"
    assert not changed[traps.central_disk(skin.shape)].any(), "the lesion's centre must stay untouched"
    if name != "vignette":  # the vignette's circle radius is drawn, but may not change a pixel more or less
        assert not np.array_equal(a, traps.paint(name, skin, 8))


def test_painters_paint_what_they_say(skin):
    corners = np.zeros(skin.shape[:2], bool)
    corners[:8, :8] = corners[:8, -8:] = corners[-8:, :8] = corners[-8:, -8:] = True
    dark = traps.paint_vignette(skin, 0)
    assert dark[corners].mean() < 20 and skin[corners].mean() > 60
    ink = traps.paint_ink(skin, 0)
    changed = np.any(ink != skin, axis=-1)
    r, g, b = (ink[changed].astype(float).mean(axis=0))
    assert b > g and r > g  # violet
    hair = traps.paint_hair(skin, 0)
    assert hair[np.any(hair != skin, axis=-1)].mean() < skin.mean()  # dark strands


def test_painters_refuse_bad_input(skin):
    with pytest.raises(ValueError, match="RGB uint8"):
        traps.paint_ruler(skin.astype(np.float32), 0)
    with pytest.raises(ValueError, match="too small"):
        traps.paint_ink(skin[:16, :16], 0)
    with pytest.raises(ValueError, match="unknown artefact"):
        traps.paint("sticker", skin, 0)


# --------------------------------------------------------------------------- the traps command


def test_traps_cli_on_a_tiny_bundle(tiny_bundle, skin, tmp_path):
    from skinlesion.cli import main

    folder = tmp_path / "benign"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(skin, 9 * i, axis=1)).save(folder / f"b{i}.jpg", quality=92)
    out = tmp_path / "traps"
    r = CliRunner().invoke(main, ["traps", str(tiny_bundle), "--data", str(folder), "--n", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "vignette" in r.output and str(out) in r.output
    result = json.loads((out / "traps.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert result["n_images"] == 3 and set(result["artefacts"]) == set(traps.ARTEFACTS)
    for v in result["artefacts"].values():
        assert v["n"] == 3 and -1.0 <= v["mean_dp"] <= 1.0 and 0.0 <= v["decision_flip_rate"] <= 1.0
    assert (out / "per_image.csv").is_file() and (out / "examples.png").is_file()


def test_traps_cli_refuses_an_empty_folder(tiny_bundle, tmp_path):
    from skinlesion.cli import main

    r = CliRunner().invoke(main, ["traps", str(tiny_bundle), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no images found" in r.output and "Traceback" not in r.output


@pytest.mark.realdata
def test_localisation_cli_on_real_boxes(tiny_bundle, tmp_path):
    from skinlesion.cli import main
    from skinlesion.config import source_root

    if not (Path(source_root("ham10000")) / loc.BOX_CSV).is_file():
        pytest.skip("HAM10000 with lesion boxes is not here")
    out = tmp_path / "loc.json"
    r = CliRunner().invoke(main, ["explain-eval", "localisation", str(tiny_bundle), "--n", "2", "--methods",
                                  "gradcam", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["n_images"] == 2 and set(result["results"]) == {"gradcam", loc.BASELINE}
    assert 0.0 <= result["results"][loc.BASELINE]["all"]["pointing_game"]["mean"] <= 1.0


def test_report_tables_from_summaries():
    import pandas as pd

    rows = [{"method": m, "label": y, "energy_in_box": e, "pointing_hit": h, "pointing_hit_tol": h,
             "box_fraction": 0.4, "empty": False}
            for m in ("gradcam", loc.BASELINE) for y, e, h in ((1, 0.6, 1.0), (0, 0.5, 0.0), (1, 0.7, 1.0))]
    table = loc.results_table({"tolerance_px": 15, "results": loc._summary(pd.DataFrame(rows), 0)})
    assert list(table.index) == ["gradcam", loc.BASELINE] and table.loc["gradcam", "n"] == 3
    assert table.loc["gradcam", "energy in box"].startswith("0.600 [") and "pointing ±15 px" in table.columns
    assert loc.results_table({"tolerance_px": 15, "results": loc._summary(pd.DataFrame(rows), 0)},
                             "malignant").loc["gradcam", "n"] == 2

    trap_rows = pd.DataFrame([{"artefact": "ink", "dp": dp, "flip": f, "more_suspicious": f, "to_suspicious": 0.0,
                               "crosses_threshold": f} for dp, f in ((0.1, 1.0), (0.0, 0.0), (-0.02, 0.0))])
    summary = traps.summarise(trap_rows)
    assert summary["ink"]["n"] == 3 and math.isclose(summary["ink"]["mean_dp"], 0.08 / 3)
    t = traps.results_table({"artefacts": summary})
    assert t.loc["ink", "decision flips"] == "33.3%" and t.loc["ink", "n"] == 3


def test_web_app_and_dashboard_word_the_map_for_the_decision(tiny_bundle, dermoscopic_jpeg):
    import io

    from skinlesion.serving.dashboard import handle_upload
    from skinlesion.serving.inference import Predictor
    from webapp import create_app

    client = create_app({"SKINLESION_MODEL": str(tiny_bundle), "TESTING": True}).test_client()
    r = client.post("/api/v1/predict", data={"image": (io.BytesIO(dermoscopic_jpeg), "l.jpg"), "explain": "gradcam"},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.json
    expected = explanation_caption(body["decision"], "gradcam")
    assert body["explanation"]["caption"] == expected.text and body["explanation"]["evidence"] == expected.evidence
    run_id = Predictor.from_bundle(tiny_bundle).name
    assert body["explanation"]["model"] == run_id
    page = client.post("/predict", data={"image": (io.BytesIO(dermoscopic_jpeg), "l.jpg"), "explain": "gradcam"},
                       content_type="multipart/form-data").get_data(as_text=True)
    assert f"Model explained: {run_id}." in page and expected.title in page

    result = handle_upload(Predictor.from_bundle(tiny_bundle), dermoscopic_jpeg, "gradcam")
    assert result.caption == expected and result.explained_model == run_id

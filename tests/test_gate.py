"""The image-type gate: fitting, the non-skin set, splits, rates, and "not assessed" everywhere it shows."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.bundle.format import add_to_bundle, read_meta
from skinlesion.data.image_types import split_by_group
from skinlesion.data.nonskin import FAMILIES, generate, photo_group, write_nonskin
from skinlesion.metrics.rates import rate_with_ci
from skinlesion.models.gate import IMAGE_TYPES, ImageTypeGate, fit_gate
from skinlesion.training.gate import GATE_CANDIDATES


def _clusters(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, d))
    y = np.repeat(np.arange(3), n)
    return centres[y] + rng.normal(size=(3 * n, d)), y


# ------------------------------------------------------------------------------ the gate itself
def test_fit_gate_separates_clusters_and_round_trips(tmp_path):
    X, y = _clusters(60)
    X2, y2 = _clusters(30, seed=0)
    gate = fit_gate(X, y, X2, y2)
    assert gate.classes == IMAGE_TYPES
    assert 0 < gate.threshold <= 0.5 and gate.temperature > 0
    types, conf, p = gate.classify(X2)
    assert np.mean(np.array(types) == np.array(IMAGE_TYPES)[y2]) > 0.95
    assert np.allclose(p.sum(1), 1) and np.all((conf > 0) & (conf <= 1))
    gate.save(tmp_path / "gate.npz")
    back = ImageTypeGate.load(tmp_path / "gate.npz")
    assert back.classes == gate.classes
    assert np.allclose(back.probabilities(X2), gate.probabilities(X2))


def test_fit_gate_needs_every_class():
    X, y = _clusters(20)
    with pytest.raises(ValueError, match="no other images"):
        fit_gate(X[y < 2], y[y < 2], X, y)
    with pytest.raises(ValueError, match="validation set has no clinical"):
        fit_gate(X, y, X[y != 1], y[y != 1])


def test_two_class_gate_has_one_row_per_class():
    X, y = _clusters(40)
    keep = y != 1
    y2 = np.where(y[keep] == 2, 1, 0)
    gate = fit_gate(X[keep], y2, X[keep], y2, classes=("dermoscopic", "other"))
    assert gate.coef.shape[0] == 2
    types, _, _ = gate.classify(X[keep])
    assert np.mean(np.array(types) == np.array(["dermoscopic", "other"])[y2]) > 0.95


def test_threshold_caps_false_flags_on_validation():
    X, y = _clusters(200)
    gate = fit_gate(X, y, X, y, max_false_flag=0.01)
    p = gate.probabilities(X[y == 0])[:, 0]
    assert np.mean(p < gate.threshold) <= 0.011


# ------------------------------------------------------------------------------ data
@pytest.mark.parametrize("family", FAMILIES)
def test_nonskin_pictures_are_deterministic_rgb(family):
    a, b = generate(family, 3), generate(family, 3)
    assert a.image.shape == (300, 300, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and a.name == b.name and a.family == family
    assert not np.array_equal(a.image, generate(family, 4).image)


def test_nonskin_unknown_family_and_photo_groups(tmp_path):
    with pytest.raises(ValueError, match="unknown non-skin family"):
        generate("selfie", 0)
    assert photo_group("motorcycle_left") == photo_group("motorcycle_right") == "motorcycle"
    written = write_nonskin(tmp_path, per_family=2, families=("document", "pattern"))
    assert len(written) == 4 and all(p.is_file() and p.suffix == ".jpg" for p, _ in written)
    with Image.open(written[0][0]) as im:
        assert im.size == (300, 300)


def test_split_by_group_keeps_groups_whole():
    groups = pd.Series([f"p{i // 3}" for i in range(600)])
    split = split_by_group(groups, {"train": 0.5, "val": 0.2, "test": 0.3}, seed=1)
    frame = pd.DataFrame({"group": groups, "split": split})
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    share = frame.drop_duplicates("group")["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.5) < 0.1 and abs(share["test"] - 0.3) < 0.1


def test_rate_with_ci():
    r = rate_with_ci([True] * 3 + [False] * 7, groups=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8], n_resamples=500)
    assert r["n"] == 10 and r["rate"] == pytest.approx(0.3) and r["ci"][0] <= 0.3 <= r["ci"][1]
    assert "groups" in r["ci_method"]
    allflag = rate_with_ci(np.ones(200, bool))
    assert allflag["rate"] == 1.0 and allflag["ci"][0] > 0.97 and allflag["ci_method"].startswith("wilson")
    with pytest.raises(ValueError):
        rate_with_ci([])


# ------------------------------------------------------------------------------ "not assessed" end to end
def _always(kind: str, dim: int) -> ImageTypeGate:
    """A gate that calls every image ``kind`` (all weights zero, one large intercept)."""
    intercept = np.array([10.0 if c == kind else 0.0 for c in IMAGE_TYPES])
    return ImageTypeGate(IMAGE_TYPES, np.zeros(dim), np.ones(dim), np.zeros((3, dim)), intercept, 1.0, 0.5)


def _gated_copy(bundle: Path, tmp_path: Path, kind: str) -> Path:
    from skinlesion.bundle.format import load

    copy = tmp_path / f"gated-{kind}"
    shutil.copytree(bundle, copy)
    b = load(copy)
    dim = int(b.model.get_layer(b.meta.feature_layer).output.shape[-1])
    add_to_bundle(copy, {"gate.npz": _always(kind, dim).save},
                  {"gate": {"file": "gate.npz", "threshold": 0.5, "temperature": 1.0, "classes": list(IMAGE_TYPES)}})
    return copy


@pytest.fixture(scope="module")
def clinical_bundle(tiny_bundle, tmp_path_factory) -> Path:
    return _gated_copy(tiny_bundle, tmp_path_factory.mktemp("gate"), "clinical")


def test_gate_fit_says_where_it_looked_when_the_training_images_are_gone(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.io import read_json, write_json

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    meta = read_json(copy / "bundle.json")
    if meta["training"]["data_dir"] is None:
        pytest.skip("the tiny bundle was trained on registered sources, not one folder")
    # The recorded folder is absolute (where the run read), so another working folder finds it.
    assert Path(meta["training"]["data_dir"]).is_absolute()
    write_json(copy / "bundle.json", {**meta, "training": {**meta["training"], "data_dir": str(tmp_path / "moved")}})
    before = (copy / "bundle.json").read_bytes()
    r = CliRunner().invoke(main, ["gate", "fit", str(copy), "--quiet"])
    assert r.exit_code == 1 and "training images is under" in r.output and "--data-dir" in r.output
    assert "Traceback" not in r.output and (copy / "bundle.json").read_bytes() == before
    r = CliRunner().invoke(main, ["gate", "fit", str(copy), "--data-dir", str(tmp_path / "empty"), "--quiet"])
    assert r.exit_code == 2  # --data-dir must exist


def test_add_to_bundle_keeps_checksums_valid(clinical_bundle):
    meta = read_meta(clinical_bundle)   # raises on a checksum mismatch
    assert "gate.npz" in meta["files"] and meta["gate"]["file"] == "gate.npz"


def test_predictor_does_not_assess_a_clinical_photo(clinical_bundle, tiny_bundle, dermoscopic_jpeg):
    from skinlesion.serving.inference import NOT_ASSESSED, Predictor

    p = Predictor.from_bundle(clinical_bundle).predict(dermoscopic_jpeg)
    assert p.decision == NOT_ASSESSED and not p.assessed and p.image_type == "clinical"
    assert p.image_type_confidence is not None and p.image_type_confidence > 0.99
    assert "ordinary photo" in p.summary and "benign-appearing" not in p.summary
    d = p.to_dict()
    assert d["assessed"] is False and d["probability_meaningful"] is False and d["decision"] == NOT_ASSESSED
    json.dumps(d, allow_nan=False)
    plain = Predictor.from_bundle(tiny_bundle).predict(dermoscopic_jpeg)
    assert plain.assessed and plain.image_type == "unknown" and plain.image_type_confidence is None


def test_predict_batch_and_cli_have_image_type(clinical_bundle, dermoscopic_jpeg, tmp_path):
    from skinlesion.cli import main

    img = tmp_path / "x.jpg"
    img.write_bytes(dermoscopic_jpeg)
    r = CliRunner().invoke(main, ["predict", str(img), "--model", str(clinical_bundle)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(io.StringIO(r.stdout))
    assert df.loc[0, "image_type"] == "clinical" and df.loc[0, "decision"] == "not assessed"
    assert pd.isna(df.loc[0, "label"]) or df.loc[0, "label"] == ""


def test_webapp_never_shows_a_decision_for_a_clinical_photo(clinical_bundle, dermoscopic_jpeg):
    from webapp import create_app

    client = create_app({"SKINLESION_MODEL": str(clinical_bundle), "TESTING": True}).test_client()
    form = {"image": (io.BytesIO(dermoscopic_jpeg), "mole.jpg"), "explain": "gradcam"}
    r = client.post("/predict", data=form, content_type="multipart/form-data")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "not assessed" in html and "ordinary photo" in html
    for word in ("benign-appearing", "suspicious", "uncertain — refer"):
        assert f'id="decision">{word}' not in html
    assert 'id="overlay"' not in html
    form = {"image": (io.BytesIO(dermoscopic_jpeg), "mole.jpg"), "explain": "gradcam"}
    body = client.post("/api/v1/predict", data=form, content_type="multipart/form-data").get_json()
    assert body["decision"] == "not assessed" and body["image_type"] == "clinical" and body["assessed"] is False
    assert "overlay_png_base64" not in body


def test_dashboard_says_not_assessed(clinical_bundle, dermoscopic_jpeg):
    from skinlesion.serving.dashboard import handle_upload, render_result_html
    from skinlesion.serving.inference import Predictor

    result = handle_upload(Predictor.from_bundle(clinical_bundle), dermoscopic_jpeg, "gradcam", name="mole.jpg")
    html = render_result_html(result)
    assert "Not assessed" in html and "ordinary photo" in html and "Decision:" not in html
    assert result.overlay is None


def test_other_gate_says_not_a_lesion(tiny_bundle, tmp_path, dermoscopic_jpeg):
    from skinlesion.serving.inference import Predictor

    p = Predictor.from_bundle(_gated_copy(tiny_bundle, tmp_path, "other")).predict(dermoscopic_jpeg)
    assert p.decision == "not assessed" and "not look like a picture of a skin lesion" in p.summary


def test_predictor_gate_reads_the_mean_of_its_views_whatever_the_orientation(tiny_bundle, tmp_path, dermoscopic_jpeg):
    """A gate fitted on the 8-view mean reads exactly that, with or without TTA, and a rotated or
    flipped copy of the image gets the same image-type probabilities."""
    import keras

    from skinlesion.bundle.format import load
    from skinlesion.data.intake import load_for_model
    from skinlesion.models.features import VIEWS, apply_view
    from skinlesion.serving.inference import Predictor

    copy = tmp_path / "gated-views"
    shutil.copytree(tiny_bundle, copy)
    b = load(copy)
    extractor = keras.Model(b.model.input, b.model.get_layer(b.meta.feature_layer).output)
    x = load_for_model(dermoscopic_jpeg, b.meta.input_size)[None]
    feats = np.stack([extractor.predict(apply_view(x, v), verbose=0)[0] for v in VIEWS])
    dim = feats.shape[1]
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(3, dim))
    coef /= np.abs((feats - feats.mean(0)) @ coef.T).max()   # logits of single views within [-1, 1]
    gate = ImageTypeGate(IMAGE_TYPES, feats.mean(0), np.ones(dim), coef, np.zeros(3), 1.0, 0.5, tuple(VIEWS))
    add_to_bundle(copy, {"gate.npz": gate.save},
                  {"gate": {"file": "gate.npz", "threshold": 0.5, "temperature": 1.0, "classes": list(IMAGE_TYPES)}})
    expected = gate.probabilities(feats.mean(0))[0]
    single = gate.probabilities(feats[0])[0]
    assert not np.allclose(expected, single, atol=1e-3)   # the test would not see a plain-view read
    predictor = Predictor.from_bundle(copy)
    for tta in (True, False):
        got = predictor.predict(x[0], tta=tta).image_type_probabilities
        assert np.allclose([got[c] for c in IMAGE_TYPES], expected, atol=1e-4)
    for v in ("r180", "fh", "fh_r180"):   # exact views of the array (no resampling)
        got = predictor.predict(apply_view(x, v)[0], tta=True).image_type_probabilities
        assert np.allclose([got[c] for c in IMAGE_TYPES], expected, atol=1e-4)


def test_an_ensemble_is_gated_by_its_first_gated_member(clinical_bundle, tiny_bundle, tmp_path, dermoscopic_jpeg):
    """`skinlesion run` fits the gate on the default ensemble's first member: the served ensemble uses it
    and its model card says so."""
    from skinlesion.evaluation.model_card import model_card
    from skinlesion.serving.inference import NOT_ASSESSED, Predictor
    from skinlesion.training.ensemble import make_ensemble

    plain = tmp_path / "plain"
    shutil.copytree(tiny_bundle, plain)
    ens = make_ensemble([plain, clinical_bundle], out_dir=tmp_path, run_id="ens")
    assert Predictor.from_bundle(ens).predict(dermoscopic_jpeg).decision == NOT_ASSESSED
    card = model_card(ens)
    assert f"member `{Predictor.from_bundle(clinical_bundle).name}`'s gate" in card and "None in this bundle: every" not in card
    # Model details describe each member's recipe, not the first member's as the ensemble's.
    for member in (plain, clinical_bundle):
        assert f"| Member `{Predictor.from_bundle(member).name}` | efficientnet_lite0" in card
    assert "ensemble of 2 models" in card and "| Architecture |" not in card


def test_dermoscopic_gate_keeps_the_decision(tiny_bundle, tmp_path, dermoscopic_jpeg):
    from skinlesion.serving.inference import Predictor

    bundle = _gated_copy(tiny_bundle, tmp_path, "dermoscopic")
    p = Predictor.from_bundle(bundle).predict(dermoscopic_jpeg)
    assert p.assessed and p.image_type == "dermoscopic" and p.decision == Predictor.from_bundle(bundle).policy.decide(
        p.probability)


def test_evaluate_reports_set_aside_counts():
    from skinlesion.evaluation.evaluate import score_predictions

    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"y_true": np.tile([0, 1], n // 2), "probability": rng.uniform(size=n), "error": "",
                       "image_type": ["clinical"] * 20 + ["dermoscopic"] * (n - 20)})
    r = score_predictions(df, 0.5, n_resamples=50)
    assert r["gate"]["set_aside"] == 20 and r["gate"]["by_type"]["clinical"] == 20
    assert r["dermoscopic_only"]["n"] == n - 20 and r["n"] == n
    no_gate = score_predictions(df.assign(image_type="unknown"), 0.5, n_resamples=50)
    assert "gate" not in no_gate


# ------------------------------------------------------------------------------ real images
@pytest.mark.realdata
@pytest.mark.slow
def test_gate_on_real_images_of_each_type(tmp_path):
    """A gate fitted on a few real images of each type sorts held-out ones: a Kaggle dermoscopic
    image, a PAD-UFES-20 phone photo of another patient, and non-skin pictures it never saw."""
    from skinlesion.config import shared_data_dir
    from skinlesion.data.image_types import clinical_frame
    from skinlesion.models.backbones import build_feature_extractor
    from skinlesion.models.features import extract_features

    shared = shared_data_dir()
    if not (shared / "pad_ufes_20").is_dir():
        pytest.skip("needs ../shared/data (kaggle and pad_ufes_20)")
    derm = sorted((shared / "melanoma_cancer_dataset" / "train" / "benign").glob("*.jpg"))[:25] + \
        sorted((shared / "melanoma_cancer_dataset" / "train" / "malignant").glob("*.jpg"))[:25]
    derm_test = sorted((shared / "melanoma_cancer_dataset" / "test" / "benign").glob("*.jpg"))[:4]
    clin = clinical_frame()
    clin_train = clin[clin["split"] == "train"]["path"].tolist()[:50]
    clin_test = clin[clin["split"] == "test"]["path"].tolist()[:4]
    other = write_nonskin(tmp_path / "nonskin", per_family=10)
    other_train = [str(p) for p, item in other if item.family != "photo" and item.name.endswith(("0", "2", "4", "6"))]
    other_train += [str(p) for p, item in other if item.family == "photo" and item.group != "photo:chelsea"][:15]
    other_test = [str(p) for p, item in other if item.name.endswith("9") and item.family != "photo"]
    files = [*map(str, derm), *clin_train, *other_train, *map(str, derm_test), *clin_test, *other_test]
    kinds = [0] * len(derm) + [1] * len(clin_train) + [2] * len(other_train)
    model = build_feature_extractor("efficientnet_lite0", "imagenet")
    feats, ok, _ = extract_features(model, files, backbone="efficientnet_lite0", weights_tag=None, progress=False)
    assert ok.all()
    X = feats[:, 0]
    n = len(kinds)
    gate = fit_gate(X[:n], np.array(kinds), X[:n], np.array(kinds))
    types, _, _ = gate.classify(X[n:])
    expected = ["dermoscopic"] * len(derm_test) + ["clinical"] * len(clin_test)
    assert types[:len(expected)] == expected
    assert all(t != "dermoscopic" for t in types[len(expected):])


# ------------------------------------------------------------------------------ settings and selection
def _frame(n: int) -> pd.DataFrame:
    """Gate rows for ``_clusters(n)``: two dermoscopic sources, alternate rows train / val."""
    kinds = np.repeat(np.array(IMAGE_TYPES), n)
    source = np.where(kinds == "dermoscopic", np.where(np.arange(3 * n) % 4 < 2, "a", "b"), "x")
    return pd.DataFrame({"path": [f"p{i}" for i in range(3 * n)], "kind": kinds, "source": source,
                         "group": [f"g{i}" for i in range(3 * n)],
                         "split": np.where(np.arange(3 * n) % 2 == 0, "train", "val")})


@pytest.mark.parametrize("name", list(GATE_CANDIDATES))
def test_every_candidate_setting_fits(name):
    from skinlesion.training.gate import fit_on_frame

    X, _ = _clusters(40)
    frame = _frame(40)
    gate = fit_on_frame(frame, X, X + 0.01, np.ones(len(frame), bool), settings=name, views=("id", "fh"))
    types, _, _ = gate.classify(X)
    assert (np.array(types) == frame["kind"].to_numpy()).mean() > 0.95
    assert gate.views == ("id", "fh")


def test_fit_on_frame_trains_on_plain_and_calibrates_on_read_features():
    """Training rows use the plain view, validation rows only the read (view-mean) features:
    garbage in the read features of training rows, or in the plain features of validation rows,
    changes nothing."""
    from skinlesion.training.gate import fit_on_frame

    X, _ = _clusters(40)
    frame = _frame(40)
    ok = np.ones(len(frame), bool)
    train = (frame["split"] == "train").to_numpy()
    read = X + 0.3
    a = fit_on_frame(frame, X, read, ok, views=("id", "fh"))
    plain2, read2 = X.copy(), read.copy()
    plain2[~train], read2[train] = 1e3, -1e3
    b = fit_on_frame(frame, plain2, read2, ok, views=("id", "fh"))
    assert np.allclose(a.coef, b.coef) and a.temperature == b.temperature and a.threshold == b.threshold
    c = fit_on_frame(frame, X, X, ok, views=("id", "fh"))   # other validation features -> other calibration
    assert (c.temperature, c.threshold) != (a.temperature, a.threshold)


def test_fit_on_frame_rejects_mismatched_features_and_unknown_settings():
    from skinlesion.training.gate import fit_on_frame

    X, _ = _clusters(20)
    frame = _frame(20)
    with pytest.raises(ValueError, match="plain and read features"):
        fit_on_frame(frame, X, X[:, None, :], np.ones(len(frame), bool))
    with pytest.raises(ValueError, match="unknown gate settings"):
        fit_on_frame(frame, X, X, np.ones(len(frame), bool), settings="C=99")


def test_gate_views_round_trip_and_old_files_read_the_plain_view(tmp_path):
    X, y = _clusters(30)
    gate = fit_gate(X, y, X, y, views=("id", "r90", "fh"))
    gate.save(tmp_path / "g.npz")
    assert ImageTypeGate.load(tmp_path / "g.npz").views == ("id", "r90", "fh")
    with np.load(tmp_path / "g.npz") as z:   # a gate written before views were recorded
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files if k != "views"})
    assert ImageTypeGate.load(tmp_path / "old.npz").views == ("id",)


def test_balanced_error_counts_each_kind_once():
    from skinlesion.evaluation.gate import balanced_error

    frame = pd.DataFrame({
        "kind": ["dermoscopic"] * 4 + ["clinical"] * 2 + ["other"] * 2,
        "source": ["held"] * 3 + ["seen"] + ["pad"] * 2 + ["x"] * 2,
        "split": ["test"] * 3 + ["test"] + ["val", "test", "val", "val"],
    })
    flagged = np.array([True, False, False, True, False, True, True, True])
    err = balanced_error(flagged, frame, np.ones(len(frame), bool), "held")
    # 1 of 3 held-out dermoscopic flagged; the one validation phone photo missed; no non-skin missed.
    assert err["dermoscopic_flagged"] == pytest.approx(1 / 3)
    assert err["clinical_missed"] == 1.0 and err["other_missed"] == 0.0
    assert err["error"] == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)


def test_shipped_gate_settings_are_the_selected_ones():
    """The default gate (its first member's: `skinlesion run` fits it there) uses the settings its
    committed report selected by leave-one-source-out."""
    from skinlesion import config
    from skinlesion.training.gate import GATE_SETTINGS
    from skinlesion.training.train import DEFAULT_MEMBERS

    report = config.project_root() / "reports" / "gate" / next(iter(DEFAULT_MEMBERS)) / "gate.json"
    result = json.loads(report.read_text())
    assert result["selection"]["final"] == GATE_SETTINGS == result["settings"]

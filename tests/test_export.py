"""Exports (SavedModel, TFLite float and dynamic-range) and the Predictor's TFLite backends.

The core parity tests export the session's tiny trained bundle (a copy: fixtures are read-only) and
check it on the test images of the training data (real when present, generated otherwise), so
they run in CI without models/. A real-data test exports the default bundle when it exists.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from skinlesion import config
from skinlesion.bundle.format import BundleError
from skinlesion.cli import main
from skinlesion.io import read_json, write_json
from skinlesion.serving.backends import MANIFEST_FILE, PARITY_FILE, TFLITE_FILE, export_folder
from skinlesion.serving.export import FLOAT_TOLERANCE, ExportError, export_bundle
from skinlesion.serving.inference import Predictor


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} is not strict JSON ({name})")

    return json.loads(path.read_text(), parse_constant=refuse)


def _test_images(root: Path) -> Path:
    return root / "test" if (root / "test").is_dir() else root


@pytest.fixture(scope="module")
def exported(tiny_bundle, training_data_dir, tmp_path_factory) -> Path:
    """A copy of the tiny bundle with its float TFLite export in the default place."""
    copy = tmp_path_factory.mktemp("export") / "bundle"
    shutil.copytree(tiny_bundle, copy)
    export_bundle(copy, "tflite", parity_data=_test_images(training_data_dir), parity_n=40)
    return copy


@pytest.fixture(scope="module")
def images(training_data_dir) -> list[bytes]:
    files = sorted(_test_images(training_data_dir).rglob("*.jpg"))[:12]
    return [f.read_bytes() for f in files]


def test_float_tflite_export_matches_keras(exported):
    folder = export_folder(exported, "tflite")
    parity = _strict_json(folder / PARITY_FILE)
    manifest = _strict_json(folder / MANIFEST_FILE)
    assert parity["passed"] is True and parity["tolerance"] == FLOAT_TOLERANCE
    assert parity["n_images"] >= 20 and parity["max_abs_dp_served"] <= FLOAT_TOLERANCE
    assert parity["max_abs_dp_raw"] <= FLOAT_TOLERANCE and parity["max_rel_dfeature"] < 1e-3
    assert parity["decision_disagreements"] == 0 and parity["ood_flag_disagreements"] == 0
    assert manifest["input"]["dtype"] == "float32" and manifest["input"]["shape"] == [None, 96, 96, 3]
    assert manifest["input"]["lesion_crop"] is False  # a whole-image bundle (a crop bundle says so here)
    assert set(manifest["outputs"]) == {"features", "probability"}
    assert manifest["source_model_sha256"] == read_json(exported / "bundle.json")["files"]["model.keras"]
    assert manifest["files"][TFLITE_FILE] and 0.5 < manifest["size_ratio_vs_keras"] < 1.5
    assert not Path(manifest["bundle_path"]).is_absolute()


def test_tflite_backend_predicts_like_keras(exported, images):
    keras_p = Predictor.from_bundle(exported)
    lite_p = Predictor.from_bundle(exported, backend="tflite")
    assert lite_p.backend == "tflite" and lite_p.members[0].infer.name == "tflite"
    for tta in (False, True):
        a, b = keras_p.predict_many(images, tta=tta), lite_p.predict_many(images, tta=tta)
        for x, y in zip(a, b):
            assert abs(x.probability - y.probability) <= FLOAT_TOLERANCE
            assert abs(x.raw_probability - y.raw_probability) <= FLOAT_TOLERANCE
            assert x.decision == y.decision and x.out_of_distribution == y.out_of_distribution
            assert x.ood_distance == pytest.approx(y.ood_distance, rel=1e-3, abs=1e-4)
    # Explanations keep using the Keras model under the TFLite backend.
    heat, png = lite_p.explain(images[0])
    assert heat.shape == (96, 96) and png[:4] == b"\x89PNG"


def test_tflite_backend_batch_and_empty_batch(exported):
    backend = Predictor.from_bundle(exported, backend="tflite").members[0].infer
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    feats, prob = backend(batch)
    assert feats.shape == (5, backend.feature_dim) and prob.shape == (5,)
    one_feats, one_prob = backend(batch[:1])
    assert one_prob[0] == pytest.approx(prob[0], abs=1e-5)
    empty_feats, empty_prob = backend(batch[:0])
    assert empty_feats.shape == (0, backend.feature_dim) and empty_prob.shape == (0,)


def test_predict_cli_tflite_backend(exported, training_data_dir):
    folder = sorted(p for p in _test_images(training_data_dir).rglob("*") if p.is_dir())[0]
    runner = CliRunner()
    rows = {}
    for backend in ("keras", "tflite"):
        r = runner.invoke(main, ["predict", str(folder), "--model", str(exported), "--backend", backend,
                                 "--format", "json"])
        assert r.exit_code == 0, r.output
        rows[backend] = json.loads(r.stdout)
    assert len(rows["keras"]) == len(rows["tflite"]) > 0
    for a, b in zip(rows["keras"], rows["tflite"]):
        assert a["path"] == b["path"] and abs(a["probability"] - b["probability"]) <= FLOAT_TOLERANCE


def test_webapp_serves_the_tflite_backend(exported, images, monkeypatch):
    from webapp import create_app

    monkeypatch.setenv("SKINLESION_BACKEND", "tflite")
    app = create_app({"SKINLESION_MODEL": str(exported), "TESTING": True})
    assert app.config["SKINLESION_BACKEND"] == "tflite"
    r = app.test_client().post("/api/v1/predict", data={"image": (io.BytesIO(images[0]), "x.jpg")},
                               content_type="multipart/form-data")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert app.extensions["skinlesion_model"].get().backend == "tflite"
    expected = Predictor.from_bundle(exported).predict(images[0]).probability
    assert abs(r.json["probability"] - expected) <= FLOAT_TOLERANCE


def test_backend_setting_is_validated(monkeypatch):
    monkeypatch.setenv("SKINLESION_BACKEND", "TFLite ")
    assert config.backend() == "tflite"
    monkeypatch.setenv("SKINLESION_BACKEND", "onnx")
    with pytest.raises(ValueError, match="SKINLESION_BACKEND must be one of keras, tflite"):
        config.backend()
    monkeypatch.delenv("SKINLESION_BACKEND")
    assert config.backend() == "keras"


def test_missing_stale_or_failed_exports_are_refused(exported, tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="no tflite-dynamic export .*`skinlesion export .* --quantize dynamic`"):
        Predictor.from_bundle(exported, backend="tflite-dynamic")
    with pytest.raises(BundleError, match="unknown inference backend"):
        Predictor.from_bundle(exported, backend="onnx")
    copy = tmp_path / "b"
    shutil.copytree(exported, copy)
    folder = export_folder(copy, "tflite")
    manifest = read_json(folder / MANIFEST_FILE)
    write_json(folder / MANIFEST_FILE, {**manifest, "source_model_sha256": "0" * 64})
    with pytest.raises(BundleError, match="another model.keras"):
        Predictor.from_bundle(copy, backend="tflite")
    write_json(folder / MANIFEST_FILE, manifest)
    write_json(folder / PARITY_FILE, {**read_json(folder / PARITY_FILE), "passed": False})
    with pytest.raises(BundleError, match="did not pass its parity check"):
        Predictor.from_bundle(copy, backend="tflite")
    with open(folder / TFLITE_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="changed since export"):
        Predictor.from_bundle(copy, backend="tflite")


def test_tflite_backend_refuses_a_bundle_json_of_another_input_size(exported, tmp_path):
    # The interpreter would resize its input and score images at the wrong size, silently.
    copy = tmp_path / "b"
    shutil.copytree(exported, copy)
    meta = read_json(copy / "bundle.json")
    write_json(copy / "bundle.json", {**meta, "input_size": 2 * meta["input_size"]})
    with pytest.raises(BundleError, match=rf"input_size {2 * meta['input_size']}, but the tflite export takes "
                                          rf"{meta['input_size']}x{meta['input_size']} pixels"):
        Predictor.from_bundle(copy, backend="tflite")


def test_export_refuses_bad_requests(exported, training_data_dir):
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_bundle(exported, "tflite", parity_data=_test_images(training_data_dir), parity_n=5)
    with pytest.raises(ExportError, match="--format tflite only"):
        export_bundle(exported, "savedmodel", quantize="dynamic")
    with pytest.raises(ExportError, match="unknown export format"):
        export_bundle(exported, "onnx")
    r = CliRunner().invoke(main, ["export", str(exported), "--format", "tflite"])
    assert r.exit_code == 1 and "already exists" in r.output and "Traceback" not in r.output


def test_savedmodel_and_dynamic_exports(exported, training_data_dir, tmp_path):
    parity_data = _test_images(training_data_dir)
    saved = export_bundle(exported, "savedmodel", out=tmp_path / "sm", parity_data=parity_data, parity_n=20)
    assert saved.parity["passed"] and saved.parity["max_abs_dp_served"] <= FLOAT_TOLERANCE
    assert (tmp_path / "sm" / "saved_model" / "saved_model.pb").is_file()
    r = CliRunner().invoke(main, ["export", str(exported), "--format", "tflite", "--quantize", "dynamic",
                                  "--parity-data", str(parity_data), "--parity-n", "20"])
    assert r.exit_code == 0, r.output
    folder = export_folder(exported, "tflite-dynamic")
    parity = _strict_json(folder / PARITY_FILE)
    # Quantised: no bit-level tolerance, the figures are reported; the file is about 4x smaller.
    assert parity["tolerance"] is None and parity["passed"] is True and parity["max_abs_dp_served"] < 0.5
    float_size = (export_folder(exported, "tflite") / TFLITE_FILE).stat().st_size
    assert (folder / TFLITE_FILE).stat().st_size < 0.5 * float_size
    preds = Predictor.from_bundle(exported, backend="tflite-dynamic").predict_batch(
        sorted(parity_data.rglob("*.jpg"))[:4])
    assert preds["error"].eq("").all() and preds["probability"].between(0, 1).all()


def test_float_export_that_does_not_match_fails(exported, training_data_dir, tmp_path, monkeypatch):
    import skinlesion.serving.export as export_mod

    real = export_mod.TFLiteBackend

    class Off(real):  # type: ignore[misc,valid-type]
        def __call__(self, batch):
            feats, prob = super().__call__(batch)
            return feats, prob * 0.98 + 0.01  # off by up to 0.01, still a probability

    monkeypatch.setattr(export_mod, "TFLiteBackend", Off)
    with pytest.raises(ExportError, match="parity check failed"):
        export_bundle(exported, "tflite", out=tmp_path / "off", parity_data=_test_images(training_data_dir), parity_n=5)
    assert _strict_json(tmp_path / "off" / PARITY_FILE)["passed"] is False


@pytest.mark.realdata
@pytest.mark.slow
def test_default_bundle_float_export_parity_on_real_images(tmp_path):
    """The documented default bundle's members (an ensemble is exported member by member), when this
    checkout has them: 200 Kaggle test images, 8 views each."""
    from skinlesion.bundle.format import load

    bundle = config.project_root() / "models" / config.DEFAULT_MODEL
    if not (bundle / "bundle.json").is_file():
        pytest.skip(f"no default bundle at {bundle}")
    if not (config.source_root("kaggle") / "test").is_dir():
        pytest.skip("needs the Kaggle test split")
    for member in Predictor.member_bundles(load(bundle)):
        result = export_bundle(member.path, "tflite", out=tmp_path / member.meta.run_id)
        assert result.parity["n_images"] == 200 and len(result.parity["views"]) == 8
        assert result.parity["max_abs_dp_served"] <= FLOAT_TOLERANCE and result.parity["passed"], member.path


def _fake_bundle(models: Path) -> Path:
    """A bundle that loads (checksums, schema) but whose model is never read: enough for the
    checks export_bundle makes before it exports anything."""
    from skinlesion.bundle.format import write_bundle

    return write_bundle({"backbone": "x", "input_size": 32}, {"model.keras": b"never loaded"},
                        out_dir=models, run_id="b")


def test_force_never_replaces_what_is_not_an_export(tmp_path):
    """--force replaces a previous export only: never the bundle, a folder above it, data or a file."""
    bundle = _fake_bundle(tmp_path / "models")
    data = tmp_path / "images"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"precious")
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    refusals = {bundle: "is the bundle's folder or contains it", tmp_path / "models": "is the bundle's folder",
                tmp_path: "is the bundle's folder", data: "is not a previous export",
                notes: "is not a previous export", notes / "sub": "notes.txt is a file, not a folder"}
    for target, match in refusals.items():
        for force in (False, True):
            with pytest.raises(ExportError, match=match):
                export_bundle(bundle, "savedmodel", out=target, parity_data=data, force=force)
    r = CliRunner().invoke(main, ["export", str(bundle), "--format", "savedmodel", "--out", str(tmp_path / "models"),
                                  "--force", "--parity-data", str(data)])
    assert r.exit_code == 1 and "contains it" in r.output and "Traceback" not in r.output
    assert (data / "a.jpg").read_bytes() == b"precious" and notes.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "models", "notes.txt"]
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "model.keras"]


def test_force_replaces_a_previous_export(exported, training_data_dir, tmp_path):
    target = tmp_path / "lite"
    first = export_bundle(exported, "tflite", out=target, parity_data=_test_images(training_data_dir), parity_n=5)
    (target / "stale.txt").write_text("from the old export")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_bundle(exported, "tflite", out=target, parity_data=_test_images(training_data_dir), parity_n=5)
    second = export_bundle(exported, "tflite", out=target, parity_data=_test_images(training_data_dir), parity_n=5,
                           force=True)
    assert second.folder == first.folder == target and not (target / "stale.txt").exists()
    assert (target / MANIFEST_FILE).is_file() and (target / TFLITE_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lite"]  # no .tmp-/.old- folders left

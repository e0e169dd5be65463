"""Bundles are written atomically, verified on load, and refused when tampered with."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from skinlesion.bundle import format as bundle
from skinlesion.bundle.format import BundleError


def _write(tmp_path, run_id="r1", **meta):
    return bundle.write_bundle(
        {"backbone": "x", "input_size": 32, **meta},
        {"model.keras": b"not really a model", "history.csv": pd.DataFrame({"epoch": [1]})},
        out_dir=tmp_path, run_id=run_id,
    )


def test_roundtrip_and_checksums(tmp_path):
    path = _write(tmp_path)
    meta = bundle.read_meta(path)
    assert meta["schema_version"] == bundle.SCHEMA_VERSION
    assert meta["class_names"] == ["benign", "malignant"]
    assert set(meta["files"]) == {"model.keras", "history.csv"}
    assert "tensorflow" in meta["versions"]


def test_checksum_mismatch_refused(tmp_path):
    path = _write(tmp_path)
    (path / "model.keras").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="checksum mismatch for model.keras"):
        bundle.load(path)


def test_schema_mismatch_refused(tmp_path):
    path = _write(tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["schema_version"] = 999
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema version 999 is not supported"):
        bundle.load(path)


def test_missing_file_and_missing_bundle(tmp_path):
    path = _write(tmp_path)
    (path / "history.csv").unlink()
    with pytest.raises(BundleError, match="history.csv .* is missing"):
        bundle.load(path)
    with pytest.raises(BundleError, match=r"no model bundle at .*nothing-here \(nothing there\)\. The default model is trained by `make run`"):
        bundle.load(tmp_path / "nothing-here")
    with pytest.raises(BundleError, match="not a model bundle"):
        bundle.load(tmp_path)


def test_failed_write_leaves_nothing(tmp_path):
    def boom(p):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        bundle.write_bundle({"backbone": "x"}, {"model.keras": b"x", "bad": boom}, out_dir=tmp_path, run_id="r2")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_not_overwritten(tmp_path):
    _write(tmp_path)
    with pytest.raises(BundleError, match="already exists"):
        _write(tmp_path)


def test_served_views_follow_the_bundles_tta():
    """One rule for which views a served prediction computes (Predictor, gate, export, LOSO scoring)."""
    from skinlesion.bundle.meta import BundleMeta
    from skinlesion.models.features import VIEWS

    tta = BundleMeta.from_dict({"run_id": "a", "tta": "dihedral"})
    plain = BundleMeta.from_dict({"run_id": "b", "tta": None})
    assert tta.dihedral_tta and tta.served_views == tuple(VIEWS) and tta.served_views[0] == "id"
    assert not plain.dihedral_tta and plain.served_views == ("id",)


def _rewrite_meta(path, change):
    meta = json.loads((path / "bundle.json").read_text())
    change(meta)
    (path / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("content, match", [
    (b"[]", "expected a JSON object, found an array"),
    (b'"x"', "expected a JSON object, found a string"),
    (b"\xff\xfe\x00\x81garbage\x00", "not UTF-8 text"),
    (b"", "not valid JSON"),
])
def test_bundle_json_that_is_not_an_object_is_refused(tmp_path, content, match):
    path = _write(tmp_path)
    (path / "bundle.json").write_bytes(content)
    with pytest.raises(BundleError, match=match):
        bundle.load(path)


@pytest.mark.parametrize("files", [["model.keras"], None, "model.keras"])
def test_files_field_that_is_not_a_mapping_is_refused(tmp_path, files):
    path = _write(tmp_path)
    _rewrite_meta(path, lambda m: m.__setitem__("files", files))
    with pytest.raises(BundleError, match="'files' must map file names to checksums"):
        bundle.load(path)


def test_malformed_nested_field_is_a_bundle_error(tmp_path):
    path = _write(tmp_path)
    _rewrite_meta(path, lambda m: m.__setitem__("calibration", [1.5]))
    with pytest.raises(BundleError, match="malformed field: 'calibration' must be a JSON object, not list"):
        bundle.load(path)


@pytest.mark.parametrize("name", ["../outside.txt", "sub/../../outside.txt", "ABSOLUTE", ".", ""])
def test_files_outside_the_bundle_are_never_read(tmp_path, name):
    """A crafted bundle.json must not make the checksum check read (and vouch for) other files."""
    from skinlesion.io import sha256_file

    outside = tmp_path / "outside.txt"
    outside.write_text("not the bundle's")
    path = _write(tmp_path / "models")
    key = str(outside) if name == "ABSOLUTE" else name
    _rewrite_meta(path, lambda m: m["files"].__setitem__(key, sha256_file(outside)))
    with pytest.raises(BundleError, match="not a file inside the bundle folder"):
        bundle.load(path)


@pytest.mark.parametrize("run_id", ["../x", "/abs/x", "a/b", "a\\b", "", "  ", ".", "..", ".hidden"])
def test_bad_run_id_refused_before_anything_is_written(tmp_path, run_id):
    out = tmp_path / "models"
    with pytest.raises(BundleError, match="invalid run id"):
        bundle.check_run_id(run_id)
    with pytest.raises(BundleError, match="invalid run id"):
        _write(out, run_id=run_id)
    assert list(tmp_path.iterdir()) == []  # not even the models folder, nor anything beside it
    assert not (tmp_path.parent / "x").exists()


def test_good_run_id_passes():
    assert bundle.check_run_id("20240101-000000-efficientnet_lite0-abc123") == "20240101-000000-efficientnet_lite0-abc123"
    assert bundle.check_run_id("my.model v2") == "my.model v2"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"not really a model"])
def test_damaged_model_file_with_matching_checksum(tmp_path, content):
    """The checksum only says the file is what was written; Keras' "File not found" must not
    reach the user when the file is there but damaged."""
    path = bundle.write_bundle({"backbone": "x", "input_size": 32}, {"model.keras": content},
                               out_dir=tmp_path, run_id="r1")
    with pytest.raises(BundleError, match="model file is damaged"):
        _ = bundle.load(path).model


def test_zip_that_is_not_a_keras_model(tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    path = bundle.write_bundle({"backbone": "x", "input_size": 32}, {"model.keras": buf.getvalue()},
                               out_dir=tmp_path, run_id="r1")
    with pytest.raises(BundleError, match="model file is damaged"):
        _ = bundle.load(path).model


def test_damaged_ood_statistics(tmp_path):
    import numpy as np

    ood = {"file": "ood.npz", "threshold": 1.0, "quantile": 0.99}
    good = tmp_path / "good.npz"
    np.savez(good, mean=np.zeros(3), precision=np.eye(3), threshold=np.float64(1.0), quantile=np.float64(0.99))
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, mean=np.zeros(3), precision=np.eye(2), threshold=np.float64(1.0), quantile=np.float64(0.99))
    cases = {"garbage": b"garbage", "notzip": b"PK\x03\x04garbage", "empty": b"", "shape": wrong_shape.read_bytes()}
    for run_id, data in cases.items():
        path = bundle.write_bundle({"backbone": "x", "ood": ood}, {"model.keras": b"m", "ood.npz": data},
                                   out_dir=tmp_path, run_id=run_id)
        with pytest.raises(BundleError, match="out-of-distribution statistics are damaged"):
            bundle.load(path).ood_detector()
    path = bundle.write_bundle({"backbone": "x", "ood": ood}, {"model.keras": b"m", "ood.npz": good},
                               out_dir=tmp_path, run_id="ok")
    det = bundle.load(path).ood_detector()
    assert det is not None and det.precision.shape == (3, 3)
    assert bundle.load(_write(tmp_path, run_id="none")).ood_detector() is None
    escape = bundle.write_bundle({"backbone": "x", "ood": {**ood, "file": "../good.npz"}}, {"model.keras": b"m"},
                                 out_dir=tmp_path, run_id="escape")
    with pytest.raises(BundleError, match="not a file inside the bundle folder"):
        bundle.load(escape).ood_detector()


def _decision(**change):
    """A valid decision block (bundle.json's ``decision``), with ``change`` applied."""
    return {"threshold": 0.4, "band_low": 0.3, "band_high": 0.6, "target_sensitivity": 0.95,
            "temperature": 2.0, **change}


def _calibrated(tmp_path, **change):
    """A bundle with a decision policy and the matching calibration block."""
    return _write(tmp_path, decision=_decision(**change),
                  calibration={"method": "temperature", "temperature": change.get("temperature", 2.0)})


@pytest.mark.parametrize("change, field, value", [
    ({"threshold": 1.5, "band_low": 1.5, "band_high": 1.5}, "threshold", "1.5"),
    ({"threshold": -0.5, "band_low": -0.5, "band_high": -0.5}, "threshold", "-0.5"),
    ({"band_low": -0.1}, "band_low", "-0.1"),
    ({"band_high": 1.2}, "band_high", "1.2"),
    ({"threshold": float("nan")}, "threshold", "nan"),
    ({"threshold": "high"}, "threshold", "'high'"),
])
def test_decision_cut_points_outside_0_1_are_refused(tmp_path, change, field, value):
    """A threshold outside [0, 1] would give every image the same decision, silently."""
    path = _calibrated(tmp_path)
    _rewrite_meta(path, lambda m: m["decision"].update(change))
    with pytest.raises(BundleError, match=rf"'decision\.{field}' must be a probability in \[0, 1\], not {value}"):
        bundle.load(path)


@pytest.mark.parametrize("t", [0, -1.0, float("nan"), float("inf")])
def test_bad_calibration_temperature_is_refused_at_load(tmp_path, t):
    path = _calibrated(tmp_path)
    _rewrite_meta(path, lambda m: m["calibration"].update(temperature=t))
    with pytest.raises(BundleError, match=r"'calibration\.temperature' must be a finite number > 0"):
        bundle.load(path)


def test_calibration_and_decision_temperatures_must_agree(tmp_path):
    """Serving scales by calibration.temperature, the threshold was fitted at decision.temperature."""
    path = _calibrated(tmp_path, temperature=20.0)
    assert bundle.load(path).meta.temperature == 20.0
    _rewrite_meta(path, lambda m: m["calibration"].update(temperature=1.0))
    with pytest.raises(BundleError, match=r"'calibration\.temperature' \(1\.0\) differs from 'decision\.temperature' "
                                          r"\(20\.0\)"):
        bundle.load(path)
    # An uncalibrated bundle (no calibration block) serves raw outputs; still loads.
    uncalibrated = _write(tmp_path, run_id="raw", decision=_decision(temperature=1.0))
    assert not bundle.load(uncalibrated).meta.calibrated


@pytest.mark.parametrize("size", [0, -32, 64.5, True, "abc"])
def test_bad_input_size_is_refused_at_load(tmp_path, size):
    path = _write(tmp_path)
    _rewrite_meta(path, lambda m: m.__setitem__("input_size", size))
    with pytest.raises(BundleError, match="'input_size' must be"):
        bundle.load(path)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fail_halfway(path):
    path.write_bytes(b"partial")
    raise RuntimeError("disk full")


@pytest.mark.parametrize("files, error", [
    ({"history.csv": b"epoch\n9\n", "gate.npz": _fail_halfway}, RuntimeError),      # fails while writing
    ({"history.csv": b"epoch\n9\n", "notes.txt": "/no/such/file"}, FileNotFoundError),
    ({"history.csv": b"epoch\n9\n", "notes.txt": 42}, TypeError),                    # refused before writing
    ({"history.csv": b"epoch\n9\n", "../outside.txt": b"x"}, BundleError),
    ({"history.csv": b"epoch\n9\n", "model.keras": b"x"}, BundleError),
])
def test_add_to_bundle_is_all_or_nothing(tmp_path, files, error):
    """A failing entry must not leave earlier entries written (history.csv replaced, the bundle then
    refused on its checksum) nor temporaries behind."""
    path = _write(tmp_path / "models")
    before = _snapshot(path)
    with pytest.raises(error):
        bundle.add_to_bundle(path, files, {"note": "x"})
    assert _snapshot(path) == before
    assert list(tmp_path.iterdir()) == [tmp_path / "models"]
    bundle.load(path)


def test_add_to_bundle_refuses_a_meta_update_that_would_not_load(tmp_path):
    path = _write(tmp_path)
    before = _snapshot(path)
    with pytest.raises(BundleError, match="'input_size' must be"):
        bundle.add_to_bundle(path, {"history.csv": b"epoch\n9\n"}, {"input_size": 0})
    assert _snapshot(path) == before


def test_add_to_bundle_takes_write_bundles_writers(tmp_path):
    import numpy as np

    path = _write(tmp_path)
    log = tmp_path / "train.log"
    log.write_text("epoch 1\n")
    bundle.add_to_bundle(path, {
        "history.csv": pd.DataFrame({"epoch": [1, 2]}),
        "train.log": str(log),
        "notes.txt": b"notes",
        "gate.npz": lambda p: np.savez(p, a=np.zeros(2)),
    }, {"gate": {"file": "gate.npz"}})
    b = bundle.load(path)  # every checksum matches
    assert set(b.meta.files) == {"model.keras", "history.csv", "train.log", "notes.txt", "gate.npz"}
    assert b.meta.raw["gate"] == {"file": "gate.npz"}
    assert (path / "train.log").read_text() == "epoch 1\n"
    assert pd.read_csv(path / "history.csv")["epoch"].tolist() == [1, 2]
    assert not [p.name for p in path.iterdir() if p.name.startswith(".tmp")]

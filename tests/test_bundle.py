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
    with pytest.raises(BundleError, match="Train one"):
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

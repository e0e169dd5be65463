"""``skinlesion calibrate``: a new bundle re-fitted on a site, the parent untouched; the learning curve."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.data.datasets import DataError
from skinlesion.evaluation import site as site_mod


def _write_site(root: Path, n_benign: int, n_malignant: int, size: int = 96, seed: int = 0) -> Path:
    from skinlesion.data.synth import synth_image

    rng = np.random.default_rng(seed)
    for label, name, count in ((0, "benign", n_benign), (1, "malignant", n_malignant)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(synth_image(label, rng, size)).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


def _tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    return _write_site(tmp_path_factory.mktemp("site") / "clinic_a", 30, 30)


# --- no model -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("labels", "message"), [
    ([0] * 40, "only benign"),
    ([1] * 40, "only malignant"),
    ([0] * 8 + [1] * 8, "too small"),
    ([0] * 30 + [1] * 4, "too small"),
])
def test_check_site_set_rejects(labels, message):
    with pytest.raises(DataError, match=message):
        site_mod.check_site_set(labels)


def test_check_site_set_accepts_minimum():
    site_mod.check_site_set([0] * 15 + [1] * 5)


def test_stratified_sample_keeps_five_per_class():
    labels = np.array([0] * 190 + [1] * 10)
    for seed in range(5):
        idx = site_mod.stratified_sample(labels, 25, np.random.default_rng(seed))
        assert len(idx) == 25 and len(set(idx)) == 25
        assert labels[idx].sum() >= 5 and (labels[idx] == 0).sum() >= 5
    assert len(site_mod.stratified_sample(labels, 500, np.random.default_rng(0))) == 200


def test_site_fingerprint_follows_content(site_dir, tmp_path):
    import shutil

    from skinlesion.data.sources import read_folder

    a = site_mod.site_fingerprint(read_folder(site_dir))
    copy = shutil.copytree(site_dir, tmp_path / "copy")
    assert site_mod.site_fingerprint(read_folder(copy)) == a  # location does not matter
    (copy / "benign" / "benign_0.jpg").write_bytes(b"x" * 10)
    assert site_mod.site_fingerprint(read_folder(copy)) != a
    assert len(a) == 64


def test_curve_runs_shape_without_a_model():
    from skinlesion.metrics.calibration import DecisionPolicy

    rng = np.random.default_rng(0)
    y = np.array([0] * 150 + [1] * 50)
    raw = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0.01, 0.99)
    scored = pd.DataFrame({"path": [f"{i}.jpg" for i in range(200)], "label": y, "raw_probability": raw})
    parent = DecisionPolicy(threshold=0.5, band_low=0.4, band_high=0.6, target_sensitivity=0.9)
    runs = site_mod.curve_runs(scored, parent, sizes=(25, 50, 100), repeats=4, seed=1)
    assert len(runs) == 12
    assert (runs.groupby("n")["n_held_out"].first() == [175, 150, 100]).all()
    again = site_mod.curve_runs(scored, parent, sizes=(25, 50, 100), repeats=4, seed=1)
    pd.testing.assert_frame_equal(runs, again)
    curve = site_mod.summarise_curve(runs)
    assert list(curve["n"]) == [25, 50, 100]
    for col in ("sensitivity_mean", "sensitivity_std", "specificity_mean", "specificity_std",
                "sensitivity_p10", "specificity_p90", "repeats"):
        assert col in curve
    assert curve["sensitivity_mean"].between(0, 1).all() and (curve["repeats"] == 4).all()
    # Too large for the site: skipped (needs >= 5 held-out images per class); when no size is left,
    # a clear error before any report is written.
    assert 190 not in set(site_mod.curve_runs(scored, parent, sizes=(25, 190), repeats=2)["n"])
    with pytest.raises(DataError, match=r"none of the curve sizes \[190\]"):
        site_mod.curve_runs(scored, parent, sizes=(190,), repeats=2)
    with pytest.raises(DataError, match="repeats must be at least 1"):
        site_mod.curve_runs(scored, parent, sizes=(25,), repeats=0)
    with pytest.raises(DataError, match="below the minimum"):
        site_mod.curve_runs(scored, parent, sizes=(10,), repeats=2)


# --- with the tiny trained bundle ---------------------------------------------------------------------
@pytest.mark.slow
def test_calibrate_writes_new_bundle_and_never_touches_parent(tiny_bundle, site_dir, tmp_path):
    from skinlesion.bundle.format import load_meta
    from skinlesion.io import sha256_file
    from skinlesion.metrics.calibration import build_decision_policy
    from skinlesion.serving.inference import Predictor

    before = _tree_digest(tiny_bundle)
    parent_json_sha = sha256_file(tiny_bundle / "bundle.json")
    out = site_mod.calibrate_site(tiny_bundle, site_dir, n=40, seed=3, out_dir=tmp_path / "models", run_id="site-a")
    assert _tree_digest(tiny_bundle) == before
    assert out == tmp_path / "models" / "site-a"

    parent, child = load_meta(tiny_bundle), load_meta(out)  # load_meta verifies every checksum
    prov = child.raw["provenance"]
    assert prov["parent_run_id"] == parent.run_id
    assert prov["parent_bundle_json_sha256"] == parent_json_sha
    assert prov["n"] == 40 and prov["seed"] == 3 and prov["file"] == "site_calibration.csv"
    assert prov["site"]["fingerprint"] == site_mod.site_fingerprint(site_mod.read_site(site_dir))
    assert prov["parent_decision"] == parent.raw["decision"]
    used = pd.read_csv(out / "site_calibration.csv")
    assert len(used) == 40 and set(used["label"]) == {0, 1}
    assert used["path"].is_unique

    # The model is the parent's, byte for byte; only the policy changed, and it is the one
    # build_decision_policy fits on the recorded raw probabilities.
    assert child.files["model.keras"] == parent.files["model.keras"]
    refit = build_decision_policy(used["label"], used["raw_probability"], parent.decision.target_sensitivity)
    assert child.decision.threshold == pytest.approx(refit.threshold)
    assert child.temperature == pytest.approx(refit.temperature)

    # It serves: same raw output as the parent, probability through the new temperature.
    img = (site_dir / used["path"].iloc[0]).read_bytes()
    p_new, p_old = Predictor.from_bundle(out).predict(img), Predictor.from_bundle(tiny_bundle).predict(img)
    assert p_new.raw_probability == pytest.approx(p_old.raw_probability, abs=1e-6)
    assert p_new.probability == pytest.approx(child.decision.calibrate(p_new.raw_probability), abs=1e-6)
    assert p_new.threshold == pytest.approx(child.decision.threshold)


@pytest.mark.slow
def test_calibrate_an_ensemble_refits_its_own_policy_and_keeps_its_members(synth_bundles, site_dir, tmp_path):
    """An ensemble's site calibration re-fits the temperature and policy on top of its members' mean;
    the members are the parent's (named from the new folder), and nothing of the parent changes."""
    from skinlesion.bundle.format import load_meta
    from skinlesion.serving.inference import Predictor
    from skinlesion.training.ensemble import make_ensemble

    ens = make_ensemble(list(synth_bundles), out_dir=tmp_path / "models", run_id="ens")
    before = {p: _tree_digest(p) for p in (ens, *synth_bundles)}
    out = site_mod.calibrate_site(ens, site_dir, n=40, seed=1, out_dir=tmp_path / "models" / "site" / "deeper",
                                  run_id="ens-site")
    assert {p: _tree_digest(p) for p in before} == before
    child = load_meta(out)
    assert child.raw["kind"] == "ensemble" and "members' calibrated" in child.raw["provenance"]["probabilities"]
    served, parent = Predictor.from_bundle(out), Predictor.from_bundle(ens)
    assert [m.bundle.path.resolve() for m in served.members] == [p.resolve() for p in synth_bundles]
    img = (site_dir / "malignant" / "malignant_0.jpg").read_bytes()
    p_new, p_old = served.predict(img), parent.predict(img)
    # The ensemble's raw output is the mean of its calibrated members, the quantity its temperature scales.
    members = [Predictor.from_bundle(b).predict(img).probability for b in synth_bundles]
    assert p_old.raw_probability == pytest.approx(np.mean(members), abs=1e-6)
    assert p_new.raw_probability == pytest.approx(p_old.raw_probability, abs=1e-6)
    assert p_new.probability == pytest.approx(child.decision.calibrate(p_new.raw_probability), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("counts", "message"), [((30, 0), "only benign"), ((0, 25), "only malignant"),
                                                 ((8, 8), "too small"), ((30, 3), "too small")])
def test_calibrate_rejects_bad_site_sets(tiny_bundle, tmp_path, counts, message):
    site = _write_site(tmp_path / "bad", *counts)
    before = _tree_digest(tiny_bundle)
    with pytest.raises(DataError, match=message):
        site_mod.calibrate_site(tiny_bundle, site, n=100, out_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert _tree_digest(tiny_bundle) == before


@pytest.mark.slow
def test_unreadable_site_images_are_replaced_by_readable_ones(tiny_bundle, tmp_path):
    site = _write_site(tmp_path / "clinic", 30, 30)
    for i in range(10):  # a third of the benign files are not images
        (site / "benign" / f"benign_{i}.jpg").write_text("not a JPEG")
    path = site_mod.calibrate_site(tiny_bundle, site, n=40, out_dir=tmp_path / "models", run_id="r")
    used = pd.read_csv(path / site_mod.SITE_FILE)
    assert len(used) == 40 and used["path"].is_unique
    assert not any(p.endswith(tuple(f"benign_{i}.jpg" for i in range(10))) for p in used["path"])
    assert int((used["label"] == 0).sum()) == 20  # the drawn class balance is kept


def test_calibrate_refuses_a_small_n_before_reading_the_site(tmp_path):
    # The site folder does not exist: the --n error must come first, before any file is read.
    with pytest.raises(DataError, match="--n 5 is too small"):
        site_mod.calibrate_site(tmp_path / "no-bundle", tmp_path / "no-site", n=5, out_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_calibrate_command(tiny_bundle, site_dir, tmp_path):
    from skinlesion.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["calibrate", str(tiny_bundle), "--site", str(site_dir), "--n", "30",
                               "--out-dir", str(tmp_path / "m"), "--run-id", "r1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "threshold" in res.output and (tmp_path / "m" / "r1" / "bundle.json").is_file()
    bad = _write_site(tmp_path / "one", 25, 0)
    res = runner.invoke(main, ["calibrate", str(tiny_bundle), "--site", str(bad), "--out-dir", str(tmp_path / "m")])
    assert res.exit_code == 1
    assert "only benign" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_learning_curve(tiny_bundle, site_dir, tmp_path):
    from skinlesion.cli import main
    from skinlesion.data.sources import read_folder

    curve = site_mod.site_learning_curve(tiny_bundle, read_folder(site_dir), sizes=(20, 30), repeats=3, seed=0)
    assert list(curve["n"]) == [20, 30] and (curve["repeats"] == 3).all()
    assert curve[["sensitivity_mean", "specificity_mean"]].apply(lambda c: c.between(0, 1)).all().all()

    res = CliRunner().invoke(main, ["calibrate", str(tiny_bundle), "--site", str(site_dir), "--curve",
                                    "--sizes", "20,30", "--repeats", "3", "--out-dir", str(tmp_path / "rep"),
                                    "--run-id", "c1", "--quiet"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "rep" / "c1"
    doc = json.loads((folder / "curve.json").read_text())
    assert [r["n"] for r in doc["curve"]] == [20, 30]
    assert doc["frozen"]["n"] == 60 and doc["site"]["n_scored"] == 60
    assert len(pd.read_csv(folder / "curve.csv")) == 2 and len(pd.read_csv(folder / "runs.csv")) == 6
    assert (folder / "curve.png").stat().st_size > 1000
    pd.testing.assert_frame_equal(pd.read_csv(folder / "curve.csv"), curve, check_dtype=False)


def test_read_site_accepts_one_split_of_a_source(tmp_path, monkeypatch):
    from test_sources import make_isic

    from skinlesion.data.datasets import DataError
    from skinlesion.evaluation.site import read_site

    root = make_isic(tmp_path / "isic", {"train": [("ISIC_1", 1.0, 0.0), ("ISIC_2", 0.0, 0.0)],
                                         "test": [("ISIC_3", 0.0, 1.0)]})
    monkeypatch.setenv("SKINLESION_ISIC2017_DIR", str(root))
    site = read_site("isic2017:test")
    assert list(site.records["image_id"]) == ["ISIC_3"] and site.name == "isic2017:test"
    with pytest.raises(DataError, match="no 'val' split"):
        read_site("isic2017:val")

"""The command line: every user error is one clear line and a non-zero exit."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from skinlesion.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_commands(runner):
    out = runner.invoke(main, ["--help"]).output
    for cmd in ("data", "train", "evaluate", "predict", "info", "run"):
        assert cmd in out


def test_info_verifies_bundle(runner, tiny_bundle):
    r = runner.invoke(main, ["info", str(tiny_bundle)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backbone"] == "efficientnet_lite0"


def test_evaluate_writes_the_model_card_beside_its_report(runner, tiny_bundle, training_data_dir, tmp_path):
    """A re-evaluated model never leaves an older model's card beside its new report."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text("a card of some older model")
    r = runner.invoke(main, ["evaluate", str(tiny_bundle), "--data-dir", str(training_data_dir), "--out", str(out),
                             "--resamples", "20", "--no-skin-tone", "--quiet"])
    assert r.exit_code == 0, r.output
    card = (out / "MODEL_CARD.md").read_text()
    assert f"model card: {out / 'MODEL_CARD.md'}" in r.output and "older model" not in card
    assert "## Evaluation" in card and (out / "metrics.json").is_file()


def test_info_refuses_tampered_bundle(runner, tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "model.keras", "ab") as f:
        f.write(b"x")
    r = runner.invoke(main, ["info", str(copy)])
    assert r.exit_code == 1 and "checksum mismatch" in r.output and "Traceback" not in r.output


def test_predict_files_and_folders_with_bad_files(runner, tiny_bundle, tmp_path):
    import numpy as np
    from PIL import Image

    from skinlesion.data.synth import synth_image

    from hostile import real_dermoscopic_jpeg

    data = real_dermoscopic_jpeg()
    good = tmp_path / "imgs" / "lesion.jpg"
    good.parent.mkdir()
    if data:
        good.write_bytes(data)
    else:
        Image.fromarray(synth_image(1, np.random.default_rng(0), 96)).save(good)
    (tmp_path / "imgs" / "fake.jpg").write_text("this is text, not a JPEG")
    r = runner.invoke(main, ["predict", str(tmp_path / "imgs"), "--model", str(tiny_bundle), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["path"].split("/")[-1]: row for row in json.loads(r.stdout)}
    assert 0.0 <= rows["lesion.jpg"]["probability"] <= 1.0
    assert rows["lesion.jpg"]["decision"] in {"suspicious", "benign-appearing", "uncertain — refer"}
    assert "not a supported image type" in rows["fake.jpg"]["error"]
    assert "not a medical device" in r.stderr


def test_predict_without_any_bundle(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(tmp_path / "empty"))
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(img)
    r = runner.invoke(main, ["predict", str(img)])
    assert r.exit_code == 1 and "no trained model found" in r.output and "make run" in r.output


@pytest.mark.parametrize("args,message", [
    (["train", "--backbone", "alexnet", "--data-dir", "."], "unknown backbone"),
    (["train", "--data-dir", "/nonexistent/ds"], "no dataset at /nonexistent/ds"),
    (["train", "--views", "id,sideways", "--data-dir", "."], "unknown view"),
    (["evaluate", "/nonexistent/bundle"], "no model bundle at"),
    (["train", "--harmonise", "4", "--data-dir", "."], "at least 8 pixels"),
    (["train", "--l2", "-1", "--data-dir", "."], "--l2"),
])
def test_user_errors_are_one_clear_line(runner, args, message):
    r = runner.invoke(main, args)
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output


def test_data_download_offline(runner, tmp_path, monkeypatch):
    from skinlesion.data import datasets as data

    monkeypatch.setattr(data, "_online", lambda *a, **k: False)
    r = runner.invoke(main, ["data", "download", "--dest", str(tmp_path / "d")])
    assert r.exit_code == 1 and "Download it by hand" in r.output


def test_data_synth_then_audit(runner, tmp_path):
    out = tmp_path / "syn"
    r = runner.invoke(main, ["data", "synth", "--out", str(out), "--n-train", "6", "--n-test", "3", "--size", "64"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["data", "audit", "--data-dir", str(out), "--out", str(tmp_path / "audit")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "audit" / "dedup_test.csv").is_file()


def test_train_options_reach_the_recipe(runner, monkeypatch):
    """--harmonise and --l2 land in the TrainConfig (and so in bundle.json and the LOSO config)."""
    import skinlesion.training.train as train_mod

    seen = []
    monkeypatch.setattr(train_mod, "train", lambda cfg: seen.append(cfg) or "bundle")
    for args in (["--harmonise", "150", "--l2", "0.01"], []):
        r = runner.invoke(main, ["train", *args, "--data-dir", "."])
        assert r.exit_code == 0, r.output
    assert (seen[0].harmonise, seen[0].l2) == (150, 0.01)
    assert (seen[1].harmonise, seen[1].l2) == (None, train_mod.TrainConfig().l2)

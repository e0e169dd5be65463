"""The command line: every user error is one clear line and a non-zero exit."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

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


@pytest.mark.parametrize("change", [{"kind": "banana"}, {"input_size": "abc"}, {"decision": [1, 2]}])
def test_info_refuses_what_predict_would_refuse(runner, tiny_bundle, tmp_path, change):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**meta, **change}))
    r = runner.invoke(main, ["info", str(copy)])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert next(iter(change)) in r.output


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
    assert "not a medical device" in r.stderr and "1 of 2 row(s) could not be scored" in r.stderr
    # Nothing scored: the table is still written, and the exit status says so.
    r = runner.invoke(main, ["predict", str(tmp_path / "imgs" / "fake.jpg"), "--model", str(tiny_bundle)])
    assert r.exit_code == 1 and "none of the 1 row(s) could be scored" in r.stderr
    assert "not a supported image type" in r.stdout and "Traceback" not in r.output


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
    # The rule is recorded beside the list, so an audit made with other thresholds says so.
    r = runner.invoke(main, ["data", "audit", "--data-dir", str(out), "--out", str(tmp_path / "audit"),
                             "--max-distance", "8", "--min-correlation", "0.95"])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert record["rule"] == {"max_phash_distance": 8, "min_thumb_correlation": 0.95}


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

    r = runner.invoke(main, ["train", "--sources", "kaggle,ham10000", "--drop-copies-from", "kaggle"])
    assert r.exit_code == 0, r.output
    assert seen[2].drop_copies_from == ("kaggle",) and seen[2].to_dict()["drop_copies_from"] == ["kaggle"]
    assert seen[1].drop_copies_from == ()
    r = runner.invoke(main, ["train", "--sources", "kaggle", "--drop-copies-from", "kagle"])
    assert r.exit_code != 0 and "unknown data source" in r.output and "Traceback" not in r.output


def test_drop_copies_from_needs_sources(runner, tmp_path):
    r = runner.invoke(main, ["train", "--data-dir", str(tmp_path), "--drop-copies-from", "kaggle"])
    assert r.exit_code != 0 and "--drop-copies-from needs --sources" in r.output and "Traceback" not in r.output


# --- bad input: one clear line, nothing lost ------------------------------------------------

def _image(path):
    import numpy as np
    from PIL import Image

    from skinlesion.data.synth import synth_image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synth_image(1, np.random.default_rng(0), 96)).save(path)
    return path


def test_predict_output_never_destroys_an_input_or_the_bundle(runner, tiny_bundle, tmp_path, monkeypatch):
    """--output that is an input, the group CSV, or a file in the bundle is refused; a table
    is written whole or not at all; a full disk or a folder is one line naming the path."""
    import errno
    import os
    from pathlib import Path

    img = _image(tmp_path / "img.jpg")
    before = img.read_bytes()
    model = ["--model", str(tiny_bundle)]
    (tmp_path / "link.csv").symlink_to(img)
    for output in (img, f"{tmp_path}/./img.jpg", tmp_path / "link.csv"):
        r = runner.invoke(main, ["predict", str(img), *model, "--output", str(output)])
        assert r.exit_code != 0 and "one of the input files" in r.output and "Traceback" not in r.output
    assert img.read_bytes() == before
    groups = tmp_path / "groups.csv"
    groups.write_text("path,lesion_id\nimg.jpg,L1\n")
    for output in (groups, img):
        r = runner.invoke(main, ["predict", "--group-by", str(groups), *model, "--output", str(output)])
        assert r.exit_code != 0 and "one of the input files" in r.output, r.output
    assert groups.read_text() == "path,lesion_id\nimg.jpg,L1\n" and img.read_bytes() == before

    r = runner.invoke(main, ["predict", str(img), *model, "--output", str(tiny_bundle / "predictions.csv")])
    assert r.exit_code != 0 and "inside the model bundle" in r.output
    assert not (tiny_bundle / "predictions.csv").exists()
    r = runner.invoke(main, ["predict", str(img), *model, "--output", str(tmp_path)])
    assert r.exit_code != 0 and "is a folder" in r.output
    r = runner.invoke(main, ["predict", str(img), *model, "--output", str(img / "sub" / "x.csv")])
    assert r.exit_code != 0 and "is a file, not a folder" in r.output and "Traceback" not in r.output

    # An interrupted write (here: the rename fails as on a full disk) leaves the old table whole.
    out = tmp_path / "out.csv"
    out.write_text("the previous table\n")
    import skinlesion.io

    real_replace = os.replace

    def full(src, dst, **kw):
        if str(dst).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(skinlesion.io.os, "replace", full)
        r = runner.invoke(main, ["predict", str(img), *model, "--output", str(out)])
    assert r.exit_code == 1 and f"cannot write {out}: No space left on device" in r.output, r.output
    assert "Traceback" not in r.output and out.read_text() == "the previous table\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    r = runner.invoke(main, ["predict", str(img), *model, "--output", str(out)])
    assert r.exit_code == 0 and out.read_text().startswith("path,probability")
    if Path("/dev/full").exists():
        r = runner.invoke(main, ["predict", str(img), *model, "--output", "/dev/full"])
        assert r.exit_code == 1 and "/dev/full: No space left on device" in r.output and "Traceback" not in r.output


def test_predict_batch_refuses_huge_and_endless_files_alone(runner, tiny_bundle, tmp_path, monkeypatch):
    """A file over intake's limit (sparse: no disk used) or a link to /dev/zero is an error row;
    nothing reads a whole file, and the other images are still predicted."""
    import os
    from pathlib import Path

    from skinlesion.data.intake import MAX_BYTES

    folder = tmp_path / "imgs"
    _image(folder / "good.jpg")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(8 * 1024**3)
    paths = [str(folder)]
    if Path("/dev/zero").exists():
        os.symlink("/dev/zero", tmp_path / "zero.jpg")
        paths.append(str(tmp_path / "zero.jpg"))

    real_read_bytes = Path.read_bytes

    def whole_file(self):
        assert not str(self).startswith(str(tmp_path)), f"read the whole of {self}"
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", whole_file)
    r = runner.invoke(main, ["predict", *paths, "--model", str(tiny_bundle), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["path"].split("/")[-1]: row for row in json.loads(r.stdout)}
    assert 0.0 <= rows["good.jpg"]["probability"] <= 1.0 and not rows["good.jpg"]["error"]
    assert f"{MAX_BYTES // 2**20} MB limit" in rows["huge.jpg"]["error"]
    if "zero.jpg" in rows:
        assert "not a regular file" in rows["zero.jpg"]["error"]


def test_os_errors_are_one_line_naming_the_path(runner):
    """friendly() turns any OSError into '<path>: <reason>' and exit 1, not a traceback."""
    import errno
    import os

    import click

    from skinlesion.cli.base import friendly

    cases = [
        (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "reports/out"), "reports/out: Is a directory"),
        (NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "reports/f/x"), "reports/f/x: Not a directory"),
        (FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), "reports/f"), "reports/f: File exists"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/dev/full"), "/dev/full: No space left on device"),
        (FileNotFoundError("weights file not found: w.pth"), "weights file not found: w.pth"),
    ]
    for exc, message in cases:
        @click.command()
        @friendly
        def cmd(exc=exc):
            raise exc

        r = runner.invoke(cmd, [])
        assert r.exit_code == 1 and r.output == f"Error: {message}\n", r.output


def test_data_synth_errors_are_one_line(runner, tmp_path):
    """SynthError (the generator's own refusals) is a user error."""
    target = tmp_path / "a-file"
    target.write_text("keep me")
    r = runner.invoke(main, ["data", "synth", "--out", str(target), "--n-train", "2", "--n-test", "1", "--size", "32"])
    assert r.exit_code == 1 and "exists and is not a folder" in r.output and "Traceback" not in r.output
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("args,option", [
    (["data", "synth", "--n-train", "-1"], "--n-train"),
    (["data", "synth", "--n-test", "0"], "--n-test"),
    (["data", "synth", "--size", "0"], "--size"),
    (["data", "audit", "--max-distance", "-1"], "--max-distance"),
    (["data", "audit", "--min-correlation", "1.5"], "--min-correlation"),
    (["train", "--max-train-per-class", "0"], "--max-train-per-class"),
    (["train", "--max-eval-per-class", "-5"], "--max-eval-per-class"),
    (["train", "--head-units", "-1"], "--head-units"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--input-size", "0"], "--input-size"),
    (["evaluate", "b", "--resamples", "0"], "--resamples"),
    (["compare", ".", "--resamples", "0"], "--resamples"),
    (["robustness", ".", "--n", "0"], "--n"),
    (["traps", ".", "--n", "0"], "--n"),
    (["calibrate", ".", "--site", "x", "--n", "19"], "--n"),  # MIN_SITE_IMAGES: refused before any file is read
    (["calibrate", ".", "--site", "x", "--curve", "--repeats", "0"], "--repeats"),
    (["calibrate", ".", "--site", "x", "--curve", "--max-images", "-1"], "--max-images"),
    (["explain-eval", "localisation", ".", "--n", "0"], "--n"),
    (["explain-eval", "sanity", ".", "--n", "-3"], "--n"),
])
def test_numbers_out_of_range_are_refused_up_front(runner, args, option):
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and f"'{option}'" in r.output and "is not in the range" in r.output, r.output
    assert "Traceback" not in r.output


def test_every_default_is_in_its_own_range():
    """The ranges above must not refuse a command's own defaults."""
    import click

    def commands(group):
        for cmd in group.commands.values():
            yield from commands(cmd) if isinstance(cmd, click.Group) else [cmd]

    for cmd in commands(main):
        ctx = click.Context(cmd)
        for param in cmd.params:
            if isinstance(param.type, (click.IntRange, click.FloatRange)):
                value = param.get_default(ctx)
                if isinstance(value, (int, float)):
                    param.type_cast_value(ctx, value)  # raises BadParameter when out of range


def test_train_refuses_a_file_that_is_not_weights_before_training(runner, tmp_path, monkeypatch):
    import skinlesion.training.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda cfg: pytest.fail("trained with bad weights"))
    junk = tmp_path / "weights.pth"
    junk.write_text("not a weights file")
    r = runner.invoke(main, ["train", "--weights", str(junk), "--data-dir", "."])
    assert r.exit_code == 2 and "--weights" in r.output and "does not hold efficientnet_lite0 weights" in r.output
    assert "Traceback" not in r.output


def test_run_refuses_a_data_dir_that_does_not_exist(runner, tmp_path, monkeypatch):
    """A typo in --data-dir is an error, never a download and a model trained on SYNTHETIC data."""
    from skinlesion.data import datasets, synth

    monkeypatch.setattr(datasets, "download", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(synth, "generate_dataset", lambda *a, **k: pytest.fail("made synthetic data"))
    r = runner.invoke(main, ["run", "--data-dir", str(tmp_path / "typo"), "--quiet"])
    assert r.exit_code == 1 and f"no dataset at {tmp_path / 'typo'}" in r.output and "Traceback" not in r.output


def test_run_ids_must_be_plain_names_and_new(runner, tmp_path, monkeypatch):
    """--run-id ../x would write outside --out-dir; a taken one is refused before any training."""
    import skinlesion.training.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda cfg: pytest.fail("trained"))
    bundle = tmp_path / "parent"
    bundle.mkdir()
    for args in (["train", "--data-dir", "."], ["calibrate", str(bundle), "--site", "x"],
                 ["ensemble", str(bundle), str(bundle)]):
        for bad in ("../x", "a/b", ".hidden", ""):
            r = runner.invoke(main, [*args, "--run-id", bad])
            assert r.exit_code == 2 and "'--run-id'" in r.output and "Traceback" not in r.output, (args, bad)
    (tmp_path / "models" / "taken").mkdir(parents=True)
    for args in (["train", "--data-dir", "."], ["calibrate", str(bundle), "--site", "x"]):
        r = runner.invoke(main, [*args, "--out-dir", str(tmp_path / "models"), "--run-id", "taken"])
        assert r.exit_code == 2 and "already exists" in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_predict_group_by_a_folder_says_so(runner, tmp_path):
    r = runner.invoke(main, ["predict", "--group-by", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output and "does not exist" not in r.output


def test_package_logs_are_printed_once(runner):
    """Libraries (absl, under TF's SavedModel writer in `export`) give the root logger a handler;
    the package's messages must still be printed once, as [skinlesion] lines."""
    import io
    import logging

    seen = io.StringIO()
    root_handler = logging.StreamHandler(seen)
    logging.getLogger().addHandler(root_handler)
    try:
        runner.invoke(main, ["info", "/nonexistent/bundle"])  # any command configures logging
        logging.getLogger("skinlesion.serving.export").info("exported")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert seen.getvalue() == ""


def test_a_missing_bundle_is_one_line_without_tensorflows_start_up_lines(tmp_path):
    """TensorFlow prints native start-up lines when it is imported; handling the error must not import
    it (it did: the CLI's error handler imported Keras for BackboneError)."""
    import subprocess
    import sys

    argv = ["evaluate", str(tmp_path / "no-bundle")]
    r = subprocess.run([sys.executable, "-m", "skinlesion.cli", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"Error: no model bundle at {tmp_path / 'no-bundle'} (nothing there). "
                                             "The default model is trained by `make run` (or `skinlesion run`)."]
    # predict with no model at all: the default is resolved before anything imports TensorFlow.
    image = tmp_path / "lesion.png"
    Image.new("RGB", (32, 32), (180, 120, 110)).save(image)
    env = {**os.environ, "SKINLESION_MODEL": "", "SKINLESION_MODELS_DIR": str(tmp_path / "models")}
    r = subprocess.run([sys.executable, "-m", "skinlesion.cli", "predict", str(image)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("Error: no trained model found at ")

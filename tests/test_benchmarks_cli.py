"""The benchmarks and development scripts fail with one clear line, not a traceback, when what they
need is missing (a trained model, images, LOSO bundles or reports), and the long ones never start
by accident. Every script runs in its own process, as a user runs it; all of this takes seconds:
each check happens before TensorFlow loads.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The benchmarks that time a trained model, and the benchmarks that need none.
NEED_MODEL = ("webapp_load", "tta_cost", "gate_cost", "export_backends")
MODEL_FREE = ("augment_pipeline", "explain_latency", "feature_pipeline", "feature_backends")


def _run(script: str, *args: str, models_dir: Path) -> subprocess.CompletedProcess[str]:
    """``python <script> <args>`` from the repository root with ``models_dir`` as the models folder."""
    env = {**os.environ, "SKINLESION_MODELS_DIR": str(models_dir)}
    for name in ("SKINLESION_MODEL", "SKINLESION_NB_MODEL"):
        env.pop(name, None)  # the default model, as on a fresh clone
    return subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def _one_line_failure(r: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a run that must fail cleanly (non-zero, nothing on stdout, no traceback)."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("name", NEED_MODEL)
def test_a_benchmark_without_a_model_says_so_in_one_line(name: str, tmp_path: Path) -> None:
    line = _one_line_failure(_run(f"benchmarks/{name}.py", models_dir=tmp_path))
    assert line.startswith(f"{name}.py: no trained model found at {tmp_path}")
    assert "make run" in line and "--model BUNDLE_DIR" in line


@pytest.mark.parametrize("name", NEED_MODEL)
def test_a_benchmark_given_a_folder_that_is_not_a_bundle_says_so(name: str, tmp_path: Path) -> None:
    line = _one_line_failure(_run(f"benchmarks/{name}.py", "--model", str(tmp_path / "nope"), models_dir=tmp_path))
    assert "is not a model bundle" in line and "make run" in line


def test_make_benchmark_stops_before_the_model_benchmarks_with_one_line(tmp_path: Path) -> None:
    line = _one_line_failure(_run("benchmarks/_common.py", models_dir=tmp_path))
    assert line.startswith("make benchmark:") and "make run" in line
    assert all(name in line for name in NEED_MODEL)


def test_make_benchmark_runs_the_model_free_ones_first() -> None:
    recipe = (REPO_ROOT / "Makefile").read_text().split("\nbenchmark:", 1)[1].split("\n\n", 1)[0]
    order = [line.split("benchmarks/")[1].removesuffix(".py") for line in recipe.splitlines()
             if "benchmarks/" in line and line.startswith("\t")]
    check = order.index("_common")
    assert set(order[:check]) == set(MODEL_FREE) and set(order[check + 1:]) == set(NEED_MODEL)


@pytest.mark.parametrize("name", ("feature_pipeline", "feature_backends"))
def test_a_benchmark_without_images_says_how_to_get_them(name: str, tmp_path: Path) -> None:
    line = _one_line_failure(_run(f"benchmarks/{name}.py", "--data-dir", str(tmp_path), models_dir=tmp_path))
    assert f"no images under {tmp_path}" in line and "skinlesion data download" in line


@pytest.mark.parametrize("name", NEED_MODEL + MODEL_FREE)
def test_benchmark_help_says_what_it_needs(name: str, tmp_path: Path) -> None:
    r = _run(f"benchmarks/{name}.py", "--help", models_dir=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr
    if name in NEED_MODEL:  # in --help itself
        assert "Needs a trained model" in " ".join(r.stdout.split())  # argparse wraps lines
    else:  # in the docstring
        doc = " ".join((REPO_ROOT / "benchmarks" / f"{name}.py").read_text().split('"""')[1].split())
        assert re.search(r"Needs (no|neither a) trained model", doc), doc


# In process, with the runner replaced: were the refusal ever to break, a test run must not rewrite
# the committed notebooks.
def test_notebooks_run_all_refuses_on_the_full_data_without_the_default_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import notebooks

    ran: list[Path] = []
    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(tmp_path))
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    monkeypatch.delenv("SKINLESION_NB_MODEL", raising=False)
    monkeypatch.setattr(notebooks, "run_notebook", lambda path, **_: ran.append(path))
    assert notebooks.main(["run-all"]) == 1 and ran == []
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert f"no default model at {tmp_path}" in err and "make run" in err and "--sample" in err


def test_notebooks_run_all_with_a_sample_or_without_04_runs_without_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import notebooks

    ran: list[tuple[str, int | None]] = []

    def fake_run(path: Path, *, sample: int | None = None) -> float:
        ran.append((path.name, sample))
        return 0.0

    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(tmp_path))
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    monkeypatch.delenv("SKINLESION_NB_MODEL", raising=False)
    monkeypatch.setattr(notebooks, "run_notebook", fake_run)
    monkeypatch.setattr(notebooks, "notebooks_dir", lambda: tmp_path)  # fake_run touches nothing; stat does
    for name in notebooks.NOTEBOOKS:
        (tmp_path / name).write_text("{}")
    assert notebooks.main(["run-all", "--only", "04"]) == 1 and ran == []
    assert notebooks.main(["run-all", "--only", "01"]) == 0 and ran == [("01_data_exploration.ipynb", 0)]
    ran.clear()
    assert notebooks.main(["run-all", "--sample", "40", "--only", "04"]) == 0
    assert ran == [("04_gradcam_explanations.ipynb", 40)]


# In process, with the pilot replaced: were the usage check ever to break, a test must not start it.
def test_top_block_pilot_without_arguments_prints_its_usage(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import top_block_pilot

    calls: list[str] = []
    monkeypatch.setattr(top_block_pilot, "pilot", lambda held, *rest: calls.append(held))
    monkeypatch.setattr(sys, "argv", ["top_block_pilot.py"])
    with pytest.raises(SystemExit) as stop:
        top_block_pilot.main()
    assert stop.value.code == 2 and calls == []
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--held" in out


def test_top_block_pilot_takes_the_readme_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import top_block_pilot

    calls: list[str] = []
    monkeypatch.setattr(top_block_pilot, "pilot", lambda held, *rest: calls.append(held))
    top_block_pilot.main(["--held", "isic2017,kaggle"])
    top_block_pilot.main(["--held", "ham10000"])
    assert calls == ["isic2017", "kaggle", "ham10000"]
    with pytest.raises(SystemExit):
        top_block_pilot.main(["--held", "nowhere"])
    assert calls == ["isic2017", "kaggle", "ham10000"]


@pytest.mark.parametrize("command", [
    ("tools/framing_tta_pilot.py", "lite0-s1-idfhzio-linear-tta"),
    ("tools/label_free_adaptation.py", "--recipe", "lite0-s1-idfh"),
])
def test_loso_pilots_without_the_fold_bundles_name_the_command_that_trains_them(
        command: tuple[str, ...], tmp_path: Path) -> None:
    line = _one_line_failure(_run(*command, models_dir=tmp_path))
    assert "no LOSO fold bundle" in line and "`skinlesion generalise --recipe " in line


@pytest.mark.parametrize("command", [
    ("tools/per_diagnosis.py", "no-such-recipe"),
    ("tools/loso_ensemble_pilot.py", "lite0-s1-idfhzio-linear-tta", "no-such-recipe"),
])
def test_report_pilots_without_the_predictions_name_the_command_that_writes_them(
        command: tuple[str, ...], tmp_path: Path) -> None:
    line = _one_line_failure(_run(*command, models_dir=tmp_path))
    assert "no LOSO predictions of 'no-such-recipe'" in line
    assert "skinlesion generalise --recipe no-such-recipe" in line


def test_the_ensemble_pilot_reads_a_pilots_predictions_file(tmp_path: Path) -> None:
    # A pilot's held-out outputs in a LOSO report's columns, here the recipe's own: the "ensemble"
    # of a model with itself is that model, so every difference is zero.
    recipe = "lite0-s1-idfhzio-linear-tta"
    own = tmp_path / "pilot.csv"
    own.write_bytes((REPO_ROOT / "reports" / "generalisation" / recipe / "predictions.csv").read_bytes())
    r = _run("tools/loso_ensemble_pilot.py", recipe, str(own), models_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{recipe} + {own}" in r.stdout and "mean 0.793 -> 0.793; worst 0.696 -> 0.696" in r.stdout
    line = _one_line_failure(_run("tools/loso_ensemble_pilot.py", recipe, str(tmp_path / "missing.csv"),
                                  models_dir=tmp_path))
    assert "missing.csv" in line
    elsewhere = tmp_path / "absolute.csv"  # the same images under paths no report writes
    frame = pd.read_csv(own)
    frame.assign(path="/" + frame["path"]).to_csv(elsewhere, index=False)
    line = _one_line_failure(_run("tools/loso_ensemble_pilot.py", recipe, str(elsewhere), models_dir=tmp_path))
    assert "none of the held-out images" in line


def test_the_strata_tool_splits_by_dark_corners(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    # Six images, three with a dark vignette; model A ranks by the label, B by the corners.
    rows = []
    for i, (label, vignette) in enumerate([(0, False), (1, False), (0, True), (1, True), (0, False), (1, True)]):
        pixels = np.full((40, 40, 3), 180, np.uint8)
        if vignette:
            for sl in ((slice(0, 6), slice(0, 6)), (slice(0, 6), slice(-6, None)), (slice(-6, None), slice(0, 6)),
                       (slice(-6, None), slice(-6, None))):
                pixels[sl] = 5
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "y_true": label, "error": None,
                     "a": 0.2 + 0.6 * label + 0.01 * i, "b": 0.1 + 0.8 * vignette + 0.01 * i})
    frame = pd.DataFrame(rows)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        frame.rename(columns={name: "probability"})[["path", "probability", "y_true", "error"]].to_csv(
            tmp_path / name / "predictions_test_kaggle.csv", index=False)
    r = _run("tools/auc_strata.py", str(tmp_path / "a"), str(tmp_path / "b"), "--images", str(tmp_path),
             models_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "AUC of the dark-corner fraction alone: 0.667" in r.stdout
    table = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in r.stdout.splitlines()
             if line.split()[:1] in (["a"], ["b"])}
    assert table["a"] == [1.0, 1.0, 1.0, 1.0]  # all, no vignette, vignette, within strata
    assert table["b"][0] < 1.0 and table["b"][3] < table["b"][0]  # B ranks by the corners: less left within
    assert "A - B (no vignette): too few images of a class to compare" in r.stdout  # 1 malignant there
    line = _one_line_failure(_run("tools/auc_strata.py", str(tmp_path / "a"), str(tmp_path / "nowhere"),
                                  models_dir=tmp_path))
    assert "no predictions_test_kaggle.csv in" in line and "skinlesion evaluate" in line


def test_stratified_auc_counts_only_pairs_within_a_stratum() -> None:
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        from auc_strata import stratified_auc
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    y = np.array([0, 1, 0, 1])
    # Across strata the ranking is wrong (stratum 1's benign above stratum 0's malignant), within right.
    score = np.array([0.1, 0.2, 0.8, 0.9])
    assert stratified_auc(y, score, np.array([0, 0, 1, 1])) == 1.0
    assert stratified_auc(y, score, np.array([0, 0, 0, 0])) == 0.75
    assert np.isnan(stratified_auc(y, score, np.array([0, 1, 0, 1])))  # no stratum holds both classes


def test_the_strata_tool_splits_by_the_lesion_crop(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    # A small dark disc in the middle is cropped at the floor; a flat image has no lesion.
    rows = []
    yy, xx = np.mgrid[:224, :224]
    for i, (label, lesion) in enumerate([(0, True), (1, True), (0, True), (0, False), (1, False), (1, False)]):
        pixels = np.full((224, 224, 3), 200, np.uint8)
        if lesion:
            pixels[(yy - 112) ** 2 + (xx - 112) ** 2 < 20 ** 2] = 60
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "y_true": label, "error": None, "a": 0.3 + 0.4 * label, "b": 0.5})
    frame = pd.DataFrame(rows)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        frame.rename(columns={name: "probability"})[["path", "probability", "y_true", "error"]].to_csv(
            tmp_path / name / "predictions_test_kaggle.csv", index=False)
    r = _run("tools/auc_strata.py", str(tmp_path / "a"), str(tmp_path / "b"), "--by", "crop", "--images",
             str(tmp_path), models_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    counts = {line.rsplit(None, 2)[0].strip(): line.split()[-2:] for line in r.stdout.splitlines()
              if line.startswith(("floor", "no lesion found"))}
    assert counts == {"floor (0.4)": ["2", "1"], "no lesion found": ["1", "2"]}, r.stdout
    assert "A - B (all): +0.5000" in r.stdout and "dark-corner" not in r.stdout

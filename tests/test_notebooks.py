"""The research notebooks: conventions of the committed files, and the helpers they call.

Executing them is nbval's job (`make test` runs `pytest --nbval-lax notebooks dashboards`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from skinlesion import notebooks as nb
from skinlesion.config import project_root

NB_DIR = project_root() / "notebooks"
PATHS = [NB_DIR / name for name in nb.NOTEBOOKS]


@pytest.fixture(params=PATHS, ids=[p.stem for p in PATHS])
def notebook(request) -> nbformat.NotebookNode:
    return nbformat.read(request.param, as_version=4)


def test_numbered_notebooks_exist():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == sorted(nb.NOTEBOOKS)


def test_first_cell_explains_purpose_and_how_to_run(notebook):
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "make notebooks" in first.source and "not a medical device" in first.source


def test_parameters_cell_comes_first_and_reads_the_environment(notebook):
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "env_param(" in code[0].source
    for name in ("DATA_DIR", "SAMPLE", "SEED"):
        assert re.search(rf"^{name} = env_param\(", code[0].source, re.M), name


def test_notebooks_stay_thin(notebook):
    """Logic lives in skinlesion: no function or class definitions, imports from the project."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert not re.search(r"^\s*(def|class) ", cell.source, re.M), cell.source[:80]
        for mod in re.findall(r"^\s*(?:from|import) ([\w.]+)", cell.source, re.M):
            assert mod.split(".")[0] in {"skinlesion", "IPython", "pandas", "logging"}, mod


def test_output_checks_are_marked(notebook):
    assert any("# NBVAL_CHECK_OUTPUT" in c.source for c in notebook.cells if c.cell_type == "code")


def test_committed_outputs_are_real_clean_and_small():
    for path in PATHS:
        assert path.stat().st_size <= nb.MAX_NOTEBOOK_BYTES, path.name
        nbk = nbformat.read(path, as_version=4)
        assert "papermill" not in nbk.metadata and "widgets" not in nbk.metadata
        code = [c for c in nbk.cells if c.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), path.name
        assert sum(bool(c.outputs) for c in code) >= len(code) - 1, f"{path.name} has no committed outputs"
        text = json.dumps([c.outputs for c in code])
        assert "SYNTHETIC" not in text, f"{path.name} outputs come from synthetic data"
        assert "sample per class: all images" in text, f"{path.name} outputs are not from the full data"
        assert '"ename"' not in text, f"{path.name} has an error output"
        assert "I0000 " not in text  # absolute paths: tests/test_report_hygiene.py scans every file


def test_env_param_casts_to_the_default_type(monkeypatch):
    monkeypatch.setenv("SKINLESION_NB_SAMPLE", "40")
    monkeypatch.setenv("SKINLESION_NB_BACKBONES", "resnet50, efficientnet_lite0")
    monkeypatch.setenv("SKINLESION_NB_FLAG", "yes")
    monkeypatch.setenv("SKINLESION_NB_EMPTY", "")
    assert nb.env_param("sample", 0) == 40
    assert nb.env_param("backbones", ["x"]) == ["resnet50", "efficientnet_lite0"]
    assert nb.env_param("flag", False) is True
    assert nb.env_param("empty", 7) == 7
    assert nb.env_param("missing", "d") == "d"
    assert nb.sample_or_none(0) is None and nb.sample_or_none(5) == 5


def test_clean_notebook_strips_run_metadata_and_tf_noise(tmp_path):
    cell = nbformat.v4.new_code_cell("print(1)", execution_count=3)
    cell.metadata["papermill"] = {"duration": 1.0}
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=(
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1795909753.825888   23401 port.cc:153] oneDNN custom operations are on.\n")),
        nbformat.v4.new_output("stream", name="stderr", text="[skinlesion] kept\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "1"}, execution_count=3),
    ]
    book = nbformat.v4.new_notebook(cells=[cell])
    book.metadata["papermill"] = {"parameters": {}}
    path = tmp_path / "x.ipynb"
    nbformat.write(book, path)
    nb.clean_notebook(path)
    out = nbformat.read(path, as_version=4)
    c = out.cells[0]
    assert c.execution_count == 1 and "papermill" not in c.metadata and "papermill" not in out.metadata
    assert [o.get("text") for o in c.outputs if o.output_type == "stream"] == ["[skinlesion] kept\n"]
    assert c.outputs[-1]["execution_count"] == 1


def test_overview_and_file_table_on_synthetic(training_data_dir):
    counts = nb.overview(training_data_dir)
    files = nb.file_table(training_data_dir)
    assert list(counts.index) == ["train", "test"]
    assert counts["total"].sum() == len(files)
    assert set(files["class"]) == {"benign", "malignant"}
    sample = nb.stratified_sample(files, 2, seed=0)
    assert len(sample) == 8 and sample.groupby(["split", "label"]).size().eq(2).all()
    stats = nb.image_statistics(training_data_dir, sample)
    assert {"width", "height", "mean_r", "bytes"} <= set(stats.columns) and len(stats) == 8


def test_overview_rejects_a_wrong_folder(tmp_path):
    with pytest.raises(nb.DataError, match="train"):
        nb.overview(tmp_path)


def _preds() -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"p{i}" for i in range(8)],
        "y_true": [1, 1, 1, 0, 0, 0, 1, 0],
        "probability": [0.99, 0.6, 0.05, 0.01, 0.3, 0.95, np.nan, 0.2],
        "error": ["", "", "", "", "", "", "unreadable", ""],
    })


def test_pick_examples_finds_confident_correct_and_wrong_per_class():
    ex = nb.pick_examples(_preds(), threshold=0.5)
    assert dict(zip(ex["group"], ex["path"])) == {
        "malignant, correct": "p0", "malignant, wrong": "p2", "benign, correct": "p3", "benign, wrong": "p5"}


def test_most_confident_mistakes_skip_unreadable_rows():
    m = nb.most_confident_mistakes(_preds(), threshold=0.5, k=5)
    assert list(m["path"]) == ["p2", "p5"]


def test_metrics_table_formats_intervals():
    res = {"m": {"sets": {"test": {"n": 10, "threshold": 0.3, "at_threshold": {
        "roc_auc": {"value": 0.9, "low": 0.8, "high": 0.95}, "sensitivity": 0.5}}}}}
    t = nb.metrics_table(res, "test", keys=("roc_auc", "sensitivity"))
    assert t.loc["m", "roc_auc"] == "0.900 [0.800, 0.950]" and t.loc["m", "sensitivity"] == "0.500"
    assert nb.metrics_table(res, "test_dedup").empty


def test_duplicate_summary_counts_distinct_test_images():
    pairs = pd.DataFrame({"test_path": ["a", "a", "b"], "kind": ["exact", "exact", "near"],
                          "test_label": [0, 0, 1], "train_label": [0, 1, 1]})
    s = nb.duplicate_summary(pairs, n_test=10, n_dedup=8)["value"]
    assert s["with an exact duplicate in train"] == 1 and s["with a near duplicate in train"] == 1
    assert s["pairs whose labels disagree"] == 1 and s["de-duplicated test images"] == 8


def test_show_path_is_relative_to_the_project():
    assert nb.show_path(project_root() / "models" / "x") == "models/x"
    assert not nb.show_path(Path("/")).startswith(project_root().as_posix())

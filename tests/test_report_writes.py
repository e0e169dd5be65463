"""Report folders are written whole: a crash part-way leaves the previous folder as it was.

Also: ``skinlesion evaluate`` uses the duplicate audit only when it was made from the test images
it scores, and refuses a test split with files missing under the given folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from skinlesion.data.datasets import DataError
from skinlesion.io import check_replaceable, replacing_folder


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Temporary or set-aside folders left in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".tmp-", ".old-")))


class Boom(RuntimeError):
    pass


def boom(*args, **kwargs):
    raise Boom("simulated crash")


# --- the context manager ----------------------------------------------------------------------
def test_replacing_folder_replaces_whole_and_keeps_what_it_is_told(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "a.json").write_text("old")
    (out / "figures" / "old.png").write_text("old")
    (out / "cache.csv").write_text("cache")
    (out / ".gitkeep").write_text("")
    with replacing_folder(out, owns=("a.json", "b.csv", "figures"), keep=("cache.csv",)) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".tmp-out-")
        assert sorted(p.name for p in tmp.iterdir()) == ["cache.csv"]  # kept, nothing else (.gitkeep comes at the end)
        (tmp / "a.json").write_text("new")
        (tmp / "b.csv").write_text("new")
        assert (out / "a.json").read_text() == "old"  # untouched until the end
    assert sorted(p.name for p in out.iterdir()) == [".gitkeep", "a.json", "b.csv", "cache.csv"]
    assert (out / "a.json").read_text() == "new" and not (out / "figures").exists()
    assert leftovers(tmp_path) == []
    with replacing_folder(tmp_path / "new" / "folder") as tmp:  # a folder not there yet
        (tmp / "x").write_text("x")
    assert (tmp_path / "new" / "folder" / "x").read_text() == "x" and leftovers(tmp_path / "new") == []


def test_replacing_folder_failure_leaves_the_old_folder_byte_identical(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.json").write_text("old")
    (out / "sub" / "b.bin").write_bytes(bytes(range(256)))
    before = snapshot(out)
    with pytest.raises(Boom), replacing_folder(out, keep=("sub",)) as tmp:
        (tmp / "a.json").write_text("half")
        boom()
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_carried_entries_are_taken_as_they_are_at_the_end(tmp_path):
    """Another command's sub-folder (data audit --sources) written while this run works survives it."""
    out = tmp_path / "audit"
    (out / "sources").mkdir(parents=True)
    (out / "sources" / "pairs.csv").write_text("old")
    (out / "duplicates.csv").write_text("old")
    with replacing_folder(out, owns=("duplicates.csv",), carry=("sources",)) as tmp:
        (tmp / "duplicates.csv").write_text("new")
        (out / "sources" / "pairs.csv").write_text("newer, written meanwhile")
    assert (out / "sources" / "pairs.csv").read_text() == "newer, written meanwhile"
    assert (out / "duplicates.csv").read_text() == "new" and leftovers(tmp_path) == []


def test_two_runs_never_share_a_temporary_folder(tmp_path):
    out = tmp_path / "out"
    with replacing_folder(out) as first, replacing_folder(out) as second:
        assert first != second
        (first / "a").write_text("first")
        (second / "a").write_text("second")
    assert (out / "a").read_text() == "first" and leftovers(tmp_path) == []  # the last to finish wins, whole


def test_a_folder_that_cannot_be_renamed_is_updated_file_by_file(tmp_path, monkeypatch):
    """A mount point, or a folder in a read-only parent (a bind-mounted --out in a container)."""
    import skinlesion.io as io_mod

    monkeypatch.setattr(io_mod, "_swappable", lambda path: False)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "a.json").write_text("old")
    (out / "cache.csv").write_text("cache")
    with replacing_folder(out, owns=("a.json", "b.csv", "figures"), keep=("cache.csv",)) as tmp:
        assert tmp.parent == out
        (tmp / "a.json").write_text("new")
        (tmp / "b.csv").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.csv", "cache.csv"]
    assert (out / "a.json").read_text() == "new"
    with pytest.raises(Boom), replacing_folder(out, owns=("a.json", "b.csv"), keep=("cache.csv",)) as tmp:
        (tmp / "a.json").write_text("half")
        boom()
    assert (out / "a.json").read_text() == "new" and sorted(p.name for p in out.iterdir()) == ["a.json", "b.csv", "cache.csv"]


def test_a_folder_with_other_files_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"`writer` did not write \(notes\.txt\)"), \
            replacing_folder(out, owns=("a.json",), what="`writer`"):
        pytest.fail("the body must not run")
    assert snapshot(out) == {"a.json": hashlib.sha1(b"old").hexdigest(),
                             "notes.txt": hashlib.sha1(b"mine").hexdigest()}
    assert leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_replaceable(tmp_path / "file", owns=("*",))


# --- evaluate's report folder -----------------------------------------------------------------
def _results(name: str, sets: list[str]) -> tuple[dict, dict]:
    preds = {s: pd.DataFrame({"path": [f"{s}/{i}.jpg" for i in range(3)], "y_true": [0, 1, 1],
                              "probability": [0.1, 0.7, 0.9], "error": ""}) for s in sets}
    return {"bundle": name, "sets": {s: {"n": 3} for s in sets}}, preds


def _good_report(out: Path) -> None:
    from skinlesion.evaluation.evaluate import save_results

    save_results(*_results("m", ["test", "test_dedup"]), out)
    (out / "figures").mkdir()
    (out / "figures" / "roc_test.png").write_bytes(b"png")
    (out / "report.md").write_text("# good report")
    (out / "MODEL_CARD.md").write_text("# good card")
    (out / "ita.csv").write_text("set,path,ita\n")


def test_save_results_crash_half_way_leaves_the_previous_report(tmp_path, monkeypatch):
    from skinlesion.evaluation.evaluate import save_results

    out = tmp_path / "keep"
    _good_report(out)
    before = snapshot(out)
    real = pd.DataFrame.to_csv
    calls = []

    def second_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Boom("disk gone")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", second_fails)
    with pytest.raises(Boom):
        save_results(*_results("m", ["external:good", "external:other"]), out)
    assert snapshot(out) == before and leftovers(tmp_path) == []
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)

    # Success: the new set only; the old report, card and figures go (they describe the old
    # metrics), the ITA cache stays.
    save_results(*_results("m", ["external:good"]), out)
    assert sorted(p.name for p in out.iterdir()) == ["ita.csv", "metrics.json", "predictions_external_good.csv"]
    assert json.loads((out / "metrics.json").read_text())["sets"] == {"external:good": {"n": 3}}
    assert leftovers(tmp_path) == []


def test_save_results_refuses_a_folder_of_other_files(tmp_path):
    from skinlesion.evaluation.evaluate import save_results

    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=r"thesis\.tex"):
        save_results(*_results("m", ["test"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


# --- robustness and traps ---------------------------------------------------------------------
def _fake_predictor() -> SimpleNamespace:
    return SimpleNamespace(name="m", meta=SimpleNamespace(synthetic=True), policy=SimpleNamespace(threshold=0.5))


def _old_folder(out: Path, files: tuple[str, ...]) -> dict[str, str]:
    out.mkdir(parents=True)
    for f in files:
        (out / f).write_text(f"old {f}")
    return snapshot(out)


def test_robustness_crash_half_way_leaves_the_previous_results(tmp_path, monkeypatch):
    from skinlesion.evaluation import robustness as rb
    from skinlesion.serving import inference

    monkeypatch.setattr(inference.Predictor, "from_bundle", staticmethod(lambda path: _fake_predictor()))
    monkeypatch.setattr(rb, "select_images", lambda *a, **k: ([Path("a.png")], pd.DataFrame({"path": ["a.png"]}),
                                                               "one image"))
    monkeypatch.setattr(rb, "decode", lambda files: ([np.zeros((40, 40, 3), np.uint8)], [0]))
    table = pd.DataFrame({"image": "0", "transform": ["id", "r90"], "dp": [0.0, 0.1], "flip": [0.0, 1.0],
                          "crosses_threshold": [0.0, 0.0]})
    monkeypatch.setattr(rb, "measure", lambda *a, **k: table)
    out = tmp_path / "rob"
    before = _old_folder(out, rb.ROBUSTNESS_FILES)
    monkeypatch.setattr(rb, "plot", boom)  # after robustness.json and per_image.csv are written
    with pytest.raises(Boom):
        rb.run_robustness("bundle", out_dir=out)
    assert snapshot(out) == before and leftovers(tmp_path) == []

    monkeypatch.setattr(rb, "plot", lambda summary, path, title="": Path(path).write_bytes(b"png"))
    assert rb.run_robustness("bundle", out_dir=out) == out
    assert json.loads((out / "robustness.json").read_text())["n_images"] == 1
    assert leftovers(tmp_path) == []


def test_traps_crash_half_way_leaves_the_previous_results(tmp_path, monkeypatch):
    from skinlesion.evaluation import robustness as rb
    from skinlesion.evaluation import traps
    from skinlesion.serving import inference

    monkeypatch.setattr(inference.Predictor, "from_bundle", staticmethod(lambda path: _fake_predictor()))
    monkeypatch.setattr(traps, "benign_images", lambda *a, **k: ([Path("a.png")], "one image"))
    monkeypatch.setattr(rb, "decode", lambda files: ([np.zeros((40, 40, 3), np.uint8)], [0]))
    row = {"image": "a.png", "ref_probability": 0.2, "probability": 0.3, "dp": 0.1, "ref_decision": "benign-appearing",
           "decision": "benign-appearing", "flip": 0.0, "more_suspicious": 0.0, "to_suspicious": 0.0,
           "crosses_threshold": 0.0}
    monkeypatch.setattr(traps, "measure", lambda *a, **k: pd.DataFrame([{**row, "artefact": k} for k in traps.ARTEFACTS]))
    out = tmp_path / "traps"
    before = _old_folder(out, traps.TRAPS_FILES)
    monkeypatch.setattr(traps, "plot_examples", boom)  # after traps.json and per_image.csv are written
    with pytest.raises(Boom):
        traps.run_traps("bundle", out_dir=out)
    assert snapshot(out) == before and leftovers(tmp_path) == []
    # Another command's output folder is refused before anything is scored.
    monkeypatch.setattr(traps, "measure", lambda *a, **k: pytest.fail("scored"))
    _old_folder(tmp_path / "rob", rb.ROBUSTNESS_FILES)
    with pytest.raises(FileExistsError, match=r"robustness\.json"):
        traps.run_traps("bundle", out_dir=tmp_path / "rob")
    with pytest.raises(FileExistsError, match=r"traps\.json"):
        rb.run_robustness("bundle", out_dir=out)


# --- the duplicate audit ----------------------------------------------------------------------
@pytest.fixture
def small_dataset(tmp_path, monkeypatch) -> Path:
    from skinlesion.data.synth import generate_dataset

    monkeypatch.setenv("SKINLESION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path / "reports"))
    return generate_dataset(tmp_path / "ds", n_train_per_class=4, n_test_per_class=3, size=48, seed=0)


def _audit_into(root: Path, out: Path | None = None) -> Path:
    from skinlesion.data.audit import audit, write_audit
    from skinlesion.data.datasets import build_splits

    pairs, test = audit(root, build_splits(root), progress=False)
    return write_audit(pairs, test, out)


def test_write_audit_crash_half_way_leaves_the_previous_audit_and_keeps_sources(small_dataset, tmp_path, monkeypatch):
    from skinlesion import config
    from skinlesion.data import audit as audit_mod

    out = _audit_into(small_dataset)
    assert out == config.reports_dir() / "audit"
    record = json.loads((out / "audit.json").read_text())
    assert record["n_test"] == 6 and len(record["test_md5"]) == 6 and record["dataset_fingerprint"]
    (out / "sources").mkdir()
    (out / "sources" / "pairs.csv").write_text("a,b\n")  # the cross-source audit's
    before = snapshot(out)
    monkeypatch.setattr(audit_mod, "write_json", boom)  # after duplicates.csv and dedup_test.csv
    with pytest.raises(Boom):
        _audit_into(small_dataset)
    assert snapshot(out) == before and leftovers(out.parent) == []
    monkeypatch.undo()
    monkeypatch.setenv("SKINLESION_CACHE_DIR", str(tmp_path / "cache"))
    _audit_into(small_dataset, out)
    assert (out / "sources" / "pairs.csv").read_text() == "a,b\n" and leftovers(out.parent) == []


def _fake_bundle(folder: Path, root: Path) -> tuple[SimpleNamespace, Path]:
    """What evaluation_sets reads of a single-root bundle: its training folder and splits.csv."""
    from skinlesion.data.datasets import build_splits

    folder.mkdir(parents=True, exist_ok=True)
    build_splits(root).to_csv(folder / "splits.csv", index=False)
    meta = SimpleNamespace(training=SimpleNamespace(sources={}, data_dir=str(root), splits_file="splits.csv"))
    return meta, folder


def test_dedup_list_of_another_dataset_is_ignored_with_a_warning(small_dataset, tmp_path, caplog):
    from skinlesion.data import audit as audit_mod
    from skinlesion.evaluation.evaluate import evaluation_sets

    meta, bundle = _fake_bundle(tmp_path / "bundle", small_dataset)
    dedup = _audit_into(small_dataset) / "dedup_test.csv"
    names = [s.name for s in evaluation_sets(meta, bundle, dedup_file=dedup)]  # type: ignore[arg-type]
    assert names == ["test", "test_dedup"]

    # The audit of a copy where two test images were replaced by training images (repro 06).
    other = tmp_path / "other"
    shutil.copytree(small_dataset, other)
    for label in ("benign", "malignant"):
        shutil.copy(other / "train" / label / f"synth_train_{label}_0.jpg", other / "test" / label / f"synth_test_{label}_0.jpg")
    dedup = _audit_into(other, tmp_path / "audit-other") / "dedup_test.csv"
    assert len(pd.read_csv(dedup)) == 4
    with caplog.at_level(logging.WARNING, logger="skinlesion"):
        sets = evaluation_sets(meta, bundle, dedup_file=dedup)  # type: ignore[arg-type]
    assert [s.name for s in sets] == ["test"]
    assert "duplicate audit of another dataset" in caplog.text and "2 of the 6 test images here differ from the files it audited" in caplog.text
    assert "re-run `skinlesion data audit --data-dir" in caplog.text

    # An audit of other test images altogether.
    caplog.clear()
    record = json.loads((dedup.parent / "audit.json").read_text())
    record["test_md5"] = {"test/benign/elsewhere.jpg": None}
    (dedup.parent / "audit.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="skinlesion"):
        assert [s.name for s in evaluation_sets(meta, bundle, dedup_file=dedup)] == ["test"]  # type: ignore[arg-type]
    assert "6 of the 6 test images here are not in it" in caplog.text

    # A damaged record: left out the same way, not an error that stops the evaluation.
    caplog.clear()
    (dedup.parent / "audit.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="skinlesion"):
        assert [s.name for s in evaluation_sets(meta, bundle, dedup_file=dedup)] == ["test"]  # type: ignore[arg-type]
    assert "test_dedup) is left out" in caplog.text

    # An audit written before audit.json existed: used as before (by path), with a warning once.
    caplog.clear()
    audit_mod._warned_unrecorded.clear()
    (dedup.parent / "audit.json").unlink()
    with caplog.at_level(logging.WARNING, logger="skinlesion"):
        for _ in range(2):
            sets = evaluation_sets(meta, bundle, dedup_file=dedup)  # type: ignore[arg-type]
            assert [s.name for s in sets] == ["test", "test_dedup"] and len(sets[1].paths) == 4
    assert caplog.text.count("cannot be checked") == 1


def test_test_images_missing_under_the_folder_are_refused(small_dataset, tmp_path):
    from skinlesion.evaluation.evaluate import evaluation_sets

    meta, bundle = _fake_bundle(tmp_path / "bundle", small_dataset)
    half = tmp_path / "half"
    shutil.copytree(small_dataset, half)
    shutil.rmtree(half / "test" / "malignant")
    with pytest.raises(DataError, match=r"3 of the 6 test images of this bundle are missing under .*half "
                                        r"\(e\.g\. test/malignant/synth_test_malignant_\d\.jpg"):
        evaluation_sets(meta, bundle, data_dir=half)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"test images of this bundle are not under .*nowhere \(none of its 6"):
        evaluation_sets(meta, bundle, data_dir=tmp_path / "nowhere")  # type: ignore[arg-type]
    # Present but unreadable: still scored as unreadable, as before.
    (half / "test" / "malignant").mkdir()
    for p in (small_dataset / "test" / "malignant").iterdir():
        (half / "test" / "malignant" / p.name).write_bytes(b"not an image")
    assert [len(s.paths) for s in evaluation_sets(meta, bundle, data_dir=half)] == [6]  # type: ignore[arg-type]


# --- the command, end to end (one trained bundle) -----------------------------------------------
def test_evaluate_command_crash_keeps_the_previous_report(tiny_bundle, training_data_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.evaluation import model_card

    monkeypatch.setenv("SKINLESION_REPORTS_DIR", str(tmp_path / "reports"))  # no audit: no test_dedup
    out = tmp_path / "keep"
    args = ["evaluate", str(tiny_bundle), "--data-dir", str(training_data_dir), "--resamples", "20",
            "--no-skin-tone", "--quiet", "--out", str(out)]
    runner = CliRunner()
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"model card: {out / 'MODEL_CARD.md'}" in r.output
    card = (out / "MODEL_CARD.md").read_text()
    assert ".tmp-" not in card and "keep" in card  # names the final folder, not the temporary one
    assert {"metrics.json", "predictions_test.csv", "report.md", "MODEL_CARD.md", "figures"} <= {
        p.name for p in out.iterdir()}
    before = snapshot(out)

    # The last step fails: everything before it was written into the temporary folder only.
    monkeypatch.setattr(model_card, "model_card", boom)
    r = runner.invoke(main, args)
    assert r.exit_code != 0 and isinstance(r.exception, Boom)
    assert snapshot(out) == before and leftovers(tmp_path) == []

    # A folder of other files is refused before anything is scored.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    r = runner.invoke(main, [*args[:-1], str(tmp_path / "mine")])
    assert r.exit_code == 1 and "notes.txt" in r.output and "Traceback" not in r.output
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]

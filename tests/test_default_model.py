"""One default model: ``resolve_default_bundle`` decides, and every front end asks it.

The default is ``SKINLESION_MODEL`` when set, else ``models/<config.DEFAULT_MODEL>`` — the bundle
``skinlesion run`` (``make run``) writes; never "the newest bundle". Nothing here trains a model.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from skinlesion import config
from skinlesion.bundle import format as bundle_format
from skinlesion.bundle.format import BundleError, resolve_default_bundle

ROOT = Path(__file__).resolve().parents[1]


def _fake_bundle(models: Path, name: str, created: str = "2026-01-01T00:00:00+00:00") -> Path:
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({"run_id": name, "created": created}))
    return folder


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(folder))
    return folder


# ----------------------------------------------------------------------------- the rule


def test_the_named_default_wins_over_a_newer_bundle(models) -> None:
    default = _fake_bundle(models, config.DEFAULT_MODEL, created="2020-01-01T00:00:00+00:00")
    _fake_bundle(models, "20990101-000000-efficientnet_lite0-abcdef", created="2099-01-01T00:00:00+00:00")
    assert resolve_default_bundle() == default
    assert resolve_default_bundle(models) == default


def test_skinlesion_model_wins_and_may_name_bundle_json(models, tmp_path, monkeypatch) -> None:
    _fake_bundle(models, config.DEFAULT_MODEL)
    chosen = _fake_bundle(tmp_path / "elsewhere", "chosen")
    monkeypatch.setenv("SKINLESION_MODEL", str(chosen / "bundle.json"))
    assert resolve_default_bundle() == chosen


def test_a_missing_default_is_a_clear_error_naming_what_is_there(models) -> None:
    _fake_bundle(models, "20260101-000000-other")
    with pytest.raises(BundleError) as err:
        resolve_default_bundle()
    message = str(err.value)
    assert config.DEFAULT_MODEL in message and "make run" in message and "SKINLESION_MODEL" in message
    assert "20260101-000000-other" in message
    # Without must_exist the path is returned anyway (e.g. to name the default's report folder).
    assert resolve_default_bundle(must_exist=False) == models / config.DEFAULT_MODEL


def test_a_wrong_skinlesion_model_is_a_clear_error(models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKINLESION_MODEL", str(tmp_path / "nothing-here"))
    with pytest.raises(BundleError, match="SKINLESION_MODEL=.*nothing-here.*not a model bundle"):
        resolve_default_bundle()


def test_the_pointer_names_the_published_recipe_and_make_run_trains_it() -> None:
    """config.DEFAULT_MODEL, the recipe published by `skinlesion generalise --publish` and the
    README's default agree."""
    summary = json.loads((ROOT / "reports" / "generalisation" / "summary.json").read_text())
    assert summary["recipe"] == config.DEFAULT_MODEL
    assert f"models/{config.DEFAULT_MODEL}" in (ROOT / "README.md").read_text()
    assert not hasattr(bundle_format, "latest_bundle") and not hasattr(bundle_format, "default_bundle")


def test_make_run_trains_the_recipe_that_was_published() -> None:
    """`skinlesion run` on the three sources trains the ensemble the LOSO run published: the same
    member recipes, each with the configuration its own LOSO run published."""
    from skinlesion.data.sources import DERMOSCOPIC_SOURCES
    from skinlesion.training.train import TrainConfig, default_members

    loso = ROOT / "reports" / "generalisation"
    details = json.loads((loso / config.DEFAULT_MODEL / "details.json").read_text())
    members = default_members(sources=DERMOSCOPIC_SOURCES)
    assert details["config"] == {"ensemble_of": list(members), "sources": list(DERMOSCOPIC_SOURCES)}
    where = {"progress", "run_id", "out_dir", "data_dir", "splits_file"}  # where and how, not what
    for name, cfg in members.items():
        published = json.loads((loso / name / "details.json").read_text())["config"]
        ours = json.loads(json.dumps(cfg.to_dict()))
        # Options added to TrainConfig after the LOSO run must keep their defaults, which it then had.
        later = json.loads(json.dumps({k: v for k, v in TrainConfig().to_dict().items() if k not in published}))
        assert {k: v for k, v in ours.items() if k not in where} == {
            **{k: v for k, v in published.items() if k not in where}, **later}, name


# ----------------------------------------------------------------------------- who asks it


class _Asked(Exception):
    """Raised by the stand-in resolver, so a test sees the front end asked it."""


def _spy(monkeypatch, module: str, result: Path | None = None) -> list[dict]:
    """Replace ``module.resolve_default_bundle`` by a recorder returning ``result`` (or raising)."""
    calls: list[dict] = []

    def fake(models_dir=None, *, must_exist=True):
        calls.append({"models_dir": models_dir, "must_exist": must_exist})
        if result is None:
            raise BundleError("asked the resolver: no default here")
        return result

    monkeypatch.setattr(f"{module}.resolve_default_bundle", fake)
    return calls


def test_predictor_and_cli_predict_use_the_resolver(models, tmp_path, monkeypatch) -> None:
    from PIL import Image

    from skinlesion.cli import main

    calls = _spy(monkeypatch, "skinlesion.serving.inference")
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    r = CliRunner().invoke(main, ["predict", str(image)])
    assert r.exit_code == 1 and "asked the resolver" in r.output
    assert calls == [{"models_dir": None, "must_exist": True}]


def test_web_app_serves_what_the_resolver_names(models, monkeypatch) -> None:
    from webapp import create_app

    sentinel = models / "whatever-the-resolver-says"
    calls = _spy(monkeypatch, "webapp.model", result=sentinel)
    _spy(monkeypatch, "skinlesion.serving.inference")  # the load itself: no model here
    app = create_app({"TESTING": True})
    assert app.extensions["skinlesion_model"].candidate() == sentinel
    assert calls and calls[-1]["must_exist"] is False
    r = app.test_client().get("/api/v1/model")
    assert r.status_code == 503 and "asked the resolver" in r.get_data(as_text=True)


def test_dashboard_offers_the_default_first_and_says_so(models, monkeypatch) -> None:
    from skinlesion.serving.dashboard import build_dashboard, list_bundles

    _fake_bundle(models, "20990101-000000-newest", created="2099-01-01T00:00:00+00:00")
    default = _fake_bundle(models, config.DEFAULT_MODEL, created="2020-01-01T00:00:00+00:00")
    choices = list_bundles(models)
    assert [c.path for c in choices] == [default, models / "20990101-000000-newest"]
    assert choices[0].label.endswith("— default") and "default" not in choices[1].label

    calls = _spy(monkeypatch, "skinlesion.serving.dashboard", result=models / "20990101-000000-newest")
    dash = build_dashboard(models_dir=models, predictor_factory=lambda path: pytest.fail("nothing loads"))
    assert calls == [{"models_dir": models, "must_exist": False}]
    assert dash.bundle.value == str(models / "20990101-000000-newest")
    assert "default" in dash.bundle.options[0][0]


def test_dashboard_without_the_default_marks_nothing_default(models) -> None:
    from skinlesion.serving.dashboard import list_bundles

    _fake_bundle(models, "20260101-000000-other")
    assert [("default" in c.label) for c in list_bundles(models)] == [False]


def test_notebooks_name_the_default_through_the_resolver() -> None:
    text = (ROOT / "notebooks" / "03_evaluation.ipynb").read_text()
    assert "resolve_default_bundle(must_exist=False)" in text
    assert f'"{config.DEFAULT_MODEL}"' not in text.replace(f'\\"{config.DEFAULT_MODEL}\\"', "")


# ----------------------------------------------------------------------------- make run


@pytest.fixture
def fake_run(models, tmp_path, monkeypatch):
    """`skinlesion run` with the three sources "found" and training/evaluation stubbed out."""
    import skinlesion.data.sources as sources
    import skinlesion.evaluation.evaluate as evaluate
    import skinlesion.training.ensemble as ensemble
    import skinlesion.training.train as train

    found = {n: SimpleNamespace(root=tmp_path / n) for n in sources.DERMOSCOPIC_SOURCES}
    monkeypatch.setattr(sources, "find_sources", lambda names: (found, {}))
    trained: list = []

    def fake_train(cfg):
        trained.append(cfg)
        if cfg.run_id == "fail":
            raise RuntimeError("training failed")
        return _fake_bundle(Path(cfg.out_dir or config.models_dir()), cfg.run_id or "20260101-000000-x")

    monkeypatch.setattr(train, "train", fake_train)

    def fake_ensemble(paths, out_dir, run_id):
        trained.append(SimpleNamespace(run_id=run_id, members=[Path(p).name for p in paths], sources=True))
        if run_id == "fail":
            raise RuntimeError("ensemble failed")
        return _fake_bundle(Path(out_dir), run_id)

    monkeypatch.setattr(ensemble, "make_ensemble", fake_ensemble)
    monkeypatch.setattr(evaluate, "evaluate_bundle", lambda path, progress: ({"sets": {}}, {}))
    monkeypatch.setattr(evaluate, "write_evaluation", lambda results, preds, bundle: tmp_path / "reports")
    monkeypatch.setattr(evaluate, "format_results", lambda results: "")
    return trained


def test_make_run_writes_the_default_model_and_replaces_it_safely(fake_run, models, monkeypatch) -> None:
    from skinlesion.cli import main

    old = _fake_bundle(models, config.DEFAULT_MODEL)
    (old / "marker").write_text("old")
    r = CliRunner().invoke(main, ["run", "--quiet"])
    assert r.exit_code == 0, r.output
    from skinlesion.training.train import DEFAULT_MEMBERS

    # Each member recipe on the three sources under its own name, then their ensemble: the default.
    assert [c.run_id for c in fake_run] == [*DEFAULT_MEMBERS, config.DEFAULT_MODEL]
    assert all(c.sources for c in fake_run) and fake_run[-1].members == list(DEFAULT_MEMBERS)
    assert "replacing" in r.output and not (old / "marker").exists()
    assert sorted(p.name for p in models.iterdir()) == sorted([config.DEFAULT_MODEL, *DEFAULT_MEMBERS])  # nothing aside
    assert resolve_default_bundle() == models / config.DEFAULT_MODEL

    # A failure anywhere (here: the ensemble) leaves the previous default and its members as they were.
    for name in DEFAULT_MEMBERS:
        (models / name / "marker").write_text("old")
    monkeypatch.setattr(config, "DEFAULT_MODEL", "fail")
    (models / config.DEFAULT_MODEL).mkdir()
    ((models / "fail") / "marker").write_text("old")
    r = CliRunner().invoke(main, ["run", "--quiet"])
    assert r.exit_code != 0
    assert (models / "fail" / "marker").read_text() == "old"
    assert all((models / name / "marker").read_text() == "old" for name in DEFAULT_MEMBERS)
    assert not any(p.name.startswith(".") for p in models.iterdir())  # no staging or aside folder left


def test_make_run_with_another_backbone_is_not_the_default(fake_run, models) -> None:
    from skinlesion.cli import main

    r = CliRunner().invoke(main, ["run", "--quiet", "--backbone", "efficientnet_lite2"])
    assert r.exit_code == 0, r.output
    assert fake_run[-1].run_id is None and "not the default model" in r.output
    assert "SKINLESION_MODEL=" in r.output


def test_the_container_files_serve_the_default() -> None:
    """compose.yaml's default bundle and the Dockerfile's example are the documented default."""
    compose = (ROOT / "compose.yaml").read_text()
    assert f"${{SKINLESION_BUNDLE:-{config.DEFAULT_MODEL}}}" in compose
    assert f"SKINLESION_MODEL=/models/{config.DEFAULT_MODEL}" in (ROOT / "Dockerfile").read_text()

"""The Voila dashboard's logic (skinlesion.serving.dashboard), its notebook and its Voila config, without a browser.

Uploads are simulated the way ipywidgets 8 delivers them (``FileUpload.value`` = tuple of dicts
with a memoryview ``content``), so the real ``observe`` callback runs.
"""
from __future__ import annotations

import html
import io
import json
import re
import shlex
import signal
import time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from skinlesion import DISCLAIMER, config
from skinlesion.data.intake import MAX_BYTES
from skinlesion.explain.common import METHODS
from skinlesion.serving.dashboard import (
    UploadResult,
    build_dashboard,
    handle_upload,
    list_bundles,
    render_result_html,
    upload_bytes,
)
from skinlesion.serving.inference import Predictor

from dashboard_helpers import sample_image, upload_value
from hostile import text_renamed_jpg

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "dashboards" / "lesion_uploader.ipynb"
STUB_TAG = "voila-hide"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictor(tiny_bundle) -> Predictor:
    return Predictor.from_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def image(dermoscopic_jpeg) -> tuple[str, bytes]:
    return "lesion.jpg", dermoscopic_jpeg


@pytest.fixture
def dashboard(tiny_bundle, predictor, monkeypatch):
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    bundle = Path(tiny_bundle)

    def factory(path: Path) -> Predictor:
        # The model is loaded once per module; the dashboard must ask for the preselected bundle.
        assert Path(path) == bundle
        return predictor

    return build_dashboard(models_dir=bundle.parent, predictor_factory=factory, model=bundle)


# ------------------------------------------------------------------------------ uploads


def test_upload_shows_exactly_the_predictor_summary(dashboard, predictor, image) -> None:
    name, data = image
    dashboard.upload.value = upload_value(name, data)

    result = dashboard.last_result
    expected = predictor.predict(data)
    assert result.ok, result.error
    assert result.summary == expected.summary
    assert result.decision == expected.decision
    assert DISCLAIMER in result.summary
    assert html.escape(expected.summary, quote=False) in dashboard.result.value
    # <img> elements with text alternatives (the Image widget cannot have one), JPEG photo, PNG map.
    photo, overlay = dashboard.image.value, dashboard.overlay.value
    assert photo.startswith('<img src="data:image/jpeg;base64,/9j/') and f'alt="Your photo: {name}"' in photo
    assert overlay.startswith('<img src="data:image/png;base64,iVBORw0KGgo') and 'alt="Grad-CAM heat map over' in overlay
    assert '<h2' in dashboard.status.value and 'role="alert"' in dashboard.result.value
    assert dashboard.images.layout.display == "flex"


def test_handle_upload_takes_a_memoryview_like_the_widget_gives(predictor, image) -> None:
    name, data = image
    result = handle_upload(predictor, memoryview(data), "gradcam", name=name)
    assert result.ok and result.explain_error is None
    assert result.summary == predictor.predict(data).summary
    overlay = Image.open(io.BytesIO(result.overlay))
    assert overlay.size == (predictor.input_size, predictor.input_size)


@pytest.mark.slow
def test_every_explanation_method_gives_an_overlay(predictor, image) -> None:
    _, data = image
    for method in METHODS:
        result = handle_upload(predictor, data, method)
        assert result.explain_error is None, result.explain_error
        assert result.overlay.startswith(PNG_MAGIC), method


def test_changing_the_method_re_explains_the_current_image(dashboard, image) -> None:
    dashboard.upload.value = upload_value(*image)
    dashboard.method.value = "gradcam++"
    assert dashboard.last_result.method == "gradcam++"
    assert dashboard.last_result.ok
    assert "Grad-CAM++" in dashboard.overlay_caption.value


class _SlowExplainer:
    """The real predictor, with an explanation that takes ``seconds`` (and records the threads
    that used the model at the same time)."""

    def __init__(self, predictor: Predictor, seconds: float) -> None:
        self.inner, self.seconds, self.busy, self.overlaps = predictor, seconds, 0, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _use(self, fn, *args, **kwargs):
        self.busy += 1
        self.overlaps += self.busy > 1
        try:
            return fn(*args, **kwargs)
        finally:
            self.busy -= 1

    def predict(self, data):
        return self._use(self.inner.predict, data)

    def explain(self, data, method, **kwargs):
        def slow():
            time.sleep(self.seconds)
            return self.inner.explain(data, "gradcam", **kwargs)
        return self._use(slow)


def test_a_slow_heat_map_past_the_budget_leaves_the_prediction_and_says_why(predictor, image) -> None:
    from skinlesion.serving.dashboard import ExplainBudget, handle_uploads

    slow = _SlowExplainer(predictor, seconds=1.5)
    budget = ExplainBudget(budget_s=0.3)
    started = time.monotonic()
    result = handle_upload(slow, image[1], "scorecam", budget=budget)
    assert time.monotonic() - started < 1.2  # answered at the budget, not after the computation
    assert result.ok and result.overlay is None and result.summary == predictor.predict(image[1]).summary
    assert "Score-CAM heat map did not finish within the dashboard's 0.3 s time budget" in result.explain_error
    assert "SKINLESION_EXPLAIN_TIME_BUDGET_S" in render_result_html(result)
    time.sleep(1.5)  # let the abandoned map end

    # Several photos: all are predicted first, then one deadline covers their maps, so the answer
    # comes at the budget and no prediction waits for an abandoned map.
    flipped = io.BytesIO()
    Image.open(io.BytesIO(image[1])).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped, "JPEG")
    third = io.BytesIO()
    Image.open(io.BytesIO(image[1])).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(third, "JPEG")
    files = [("a.jpg", image[1]), ("b.jpg", flipped.getvalue()), ("c.jpg", third.getvalue())]
    started = time.monotonic()
    group = handle_uploads(slow, files, "smoothgrad", budget=budget)
    assert time.monotonic() - started < 1.2
    assert [r.ok for r in group.results] == [True, True, True] and group.combined is not None
    assert all("did not finish" in r.explain_error for r in group.results)
    assert slow.overlaps == 0
    # Grad-CAM is not budgeted.
    assert budget.deadline("gradcam") is None and budget.deadline("gradcam++") is None


def test_a_malformed_budget_setting_costs_only_the_slow_heat_map(dashboard, image, monkeypatch) -> None:
    monkeypatch.setenv("SKINLESION_EXPLAIN_TIME_BUDGET_S", "abc")
    dashboard.method.value = "scorecam"
    dashboard.upload.value = upload_value(*image)
    result = dashboard.last_result
    assert result.ok and result.overlay is None
    assert "SKINLESION_EXPLAIN_TIME_BUDGET_S must be a number of seconds > 0, got 'abc'" in result.explain_error
    dashboard.method.value = "gradcam"
    assert dashboard.last_result.ok and dashboard.last_result.overlay is not None


def test_unknown_method_is_refused(predictor, image) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        handle_upload(predictor, image[1], "lime")


def test_hostile_upload_shows_the_intake_message(dashboard) -> None:
    case = text_renamed_jpg()
    dashboard.upload.value = upload_value(case.name, case.data)

    result = dashboard.last_result
    assert not result.ok and result.prediction is None
    assert result.status == 415
    assert "text file" in result.error and "JPEG" in result.error
    assert "skinlesion-error" in dashboard.result.value
    assert "Image not accepted" in dashboard.result.value
    assert html.escape(result.error, quote=False) in dashboard.result.value
    assert dashboard.images.layout.display == "none"


def test_reset_clears_upload_and_result(dashboard, image) -> None:
    dashboard.upload.value = upload_value(*image)
    assert dashboard.last_result.ok

    dashboard.reset_button.click()

    assert dashboard.upload.value == ()
    assert dashboard.last_result is None
    assert dashboard.result.value == ""
    assert dashboard.image.value == "" and dashboard.overlay.value == ""
    assert dashboard.images.layout.display == "none"
    assert "Upload image" in dashboard.status.value
    dashboard.method.value = "gradcam++"  # nothing on screen, so nothing is re-analysed
    assert dashboard.last_result is None


def test_notice_is_always_visible(dashboard) -> None:
    assert "<b>Research tool, not a medical device.</b>" in dashboard.header.value
    assert html.unescape(re.sub(r"<[^>]+>", "", dashboard.header.value)) == DISCLAIMER
    assert dashboard.header in dashboard.children


# ------------------------------------------------------------------------------ models


def test_no_bundle_says_how_to_train_one(tmp_path, monkeypatch, image) -> None:
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)

    def never(path):
        raise AssertionError("no model should be loaded")

    dash = build_dashboard(models_dir=tmp_path / "models", predictor_factory=never)
    assert not dash.has_model
    assert dash.upload.disabled and dash.bundle.disabled
    # The folder as the project shows paths (relative to its root), the commands as code.
    assert config.display_path(tmp_path / "models") in dash.status.value
    assert "<code>make run</code>" in dash.status.value and "`" not in dash.status.value

    dash.upload.value = upload_value(*image)  # what the hidden notebook cell does
    assert "make run" in dash.last_result.error
    assert "make run" in dash.result.value


def test_a_broken_bundle_is_reported_not_raised(tmp_path, monkeypatch, image) -> None:
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    broken = tmp_path / "20260101-000000-broken"
    broken.mkdir()
    (broken / "bundle.json").write_text(json.dumps({"schema_version": 999, "created": "2026"}))

    dash = build_dashboard(models_dir=tmp_path)
    dash.upload.value = upload_value(*image)

    assert "Could not load the model" in dash.last_result.error
    assert "schema version" in dash.last_result.error
    assert "skinlesion-error" in dash.result.value


def _fake_bundle(root: Path, name: str, created: str, **meta) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({"run_id": name, "created": created, **meta}))
    return folder


def test_list_bundles_newest_first_with_skinlesion_model_on_top(tmp_path, monkeypatch) -> None:
    models = tmp_path / "models"
    old = _fake_bundle(models, "old", "2026-01-01T00:00:00+00:00")
    new = _fake_bundle(models, "new", "2026-02-01T00:00:00+00:00", synthetic=True, backbone="b0", input_size=96)
    _fake_bundle(models, ".tmp-half-written", "2027-01-01T00:00:00+00:00")
    (models / "splits").mkdir()
    elsewhere = _fake_bundle(tmp_path / "other", "chosen", "2025-01-01T00:00:00+00:00")

    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    choices = list_bundles(models)
    assert [c.path for c in choices] == [new, old]
    assert "[SYNTHETIC]" in choices[0].label and "96px" in choices[0].label

    monkeypatch.setenv("SKINLESION_MODEL", str(elsewhere))
    assert [c.path for c in list_bundles(models)] == [elsewhere, new, old]
    assert "SKINLESION_MODEL" in list_bundles(models)[0].label
    # The same bundle named twice is listed once.
    assert [c.path for c in list_bundles(models, model=old / "bundle.json")] == [old, new]
    assert list_bundles(tmp_path / "missing", model="") == []


def test_dropdown_preselects_the_newest_bundle_when_the_default_is_not_trained(tmp_path, monkeypatch) -> None:
    # With models/<DEFAULT_MODEL> present it comes first instead: tests/test_default_model.py.
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    _fake_bundle(tmp_path, "old", "2026-01-01T00:00:00+00:00")
    new = _fake_bundle(tmp_path, "new", "2026-02-01T00:00:00+00:00")
    dash = build_dashboard(models_dir=tmp_path)
    assert dash.bundle.value == str(new)
    assert len(dash.bundle.options) == 2


# ------------------------------------------------------------------------------ helpers


def test_upload_bytes_copies_the_widget_memoryview() -> None:
    name, data = upload_bytes(upload_value("a.jpg", b"abc"))
    assert (name, data) == ("a.jpg", b"abc") and type(data) is bytes
    assert upload_bytes(()) is None


def test_render_result_html_escapes_messages() -> None:
    out = render_result_html(UploadResult(error="<script>alert(1)</script>", status=415))
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_sample_image_is_a_jpeg() -> None:
    name, data = sample_image()
    assert name.endswith(".jpg") and data.startswith(JPEG_MAGIC)


# ------------------------------------------------------------------------------ notebook and Voila config


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_committed_notebook_is_clean_and_tagged() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "Research tool, not a medical device" in nb.cells[0].source
    # How to run it is for developers: a markdown cell Voila removes (people using the page never see it).
    assert "make dashboard" not in nb.cells[0].source
    notes = [c for c in nb.cells if c.cell_type == "markdown" and STUB_TAG in _tags(c)]
    assert len(notes) == 1 and "make dashboard" in notes[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"
    assert set(nb.metadata) <= {"kernelspec", "language_info", "title"}
    assert "not a medical device" in nb.metadata["title"]  # Voila's page title
    parameters = [i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)]
    assert parameters == [next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")]
    assert "SKINLESION_MODEL" in nb.cells[parameters[0]].source
    stub = [c for c in code if STUB_TAG in _tags(c)]
    assert len(stub) == 1 and "upload_value" in stub[0].source
    assert "build_dashboard" in code[1].source


def _make_dashboard_args() -> list[str]:
    """The arguments `make dashboard` passes to voila, as make expands them (`make -n`)."""
    import subprocess

    shown = subprocess.run(["make", "-n", "--no-print-directory", "dashboard"], cwd=ROOT, capture_output=True,
                           text=True, check=True, timeout=60).stdout
    recipe = next(line for line in shown.splitlines() if "voila " in line)
    words = shlex.split(recipe.strip())
    return words[next(i for i, w in enumerate(words) if w.endswith("voila")) + 1:]


def test_make_dashboard_loads_voila_json(monkeypatch) -> None:
    from nbconvert.preprocessors import TagRemovePreprocessor
    from voila.app import Voila

    args = _make_dashboard_args()
    assert "dashboards/lesion_uploader.ipynb" in args
    monkeypatch.chdir(ROOT)  # make runs in the repository root
    saved = signal.getsignal(signal.SIGTERM)  # Voila.initialize installs its own handler
    try:
        app = Voila()
        app.initialize(args)
    finally:
        signal.signal(signal.SIGTERM, saved)

    # Tornado's default is 10 MiB; a 15 MB phone photo (and anything intake would refuse
    # with a clear 413 message) must get through the kernel websocket.
    assert app.tornado_settings["websocket_max_message_size"] >= MAX_BYTES
    nb = nbformat.read(NOTEBOOK, as_version=4)
    before = len(nb.cells)
    kept, _ = TagRemovePreprocessor(config=app.config).preprocess(nb, {})
    assert [c for c in kept.cells if STUB_TAG in _tags(c)] == []
    assert len(kept.cells) == before - 2  # the headless check and the developers' note
    assert "Research tool, not a medical device" in kept.cells[0].source


def test_notebook_offers_the_default_model_when_none_is_named(monkeypatch) -> None:
    """The dashboard cell must pass model=None (the default model, marked first) when SKINLESION_MODEL
    is unset: "" would mean no default, and the newest bundle would be served instead."""
    import skinlesion.serving.dashboard as dash_mod

    seen: dict = {}
    monkeypatch.setattr(dash_mod, "build_dashboard", lambda **kw: seen.update(kw))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "build_dashboard(" in c.source)
    exec(cell.source, {"MODEL": None, "MODELS_DIR": None})
    assert seen == {"models_dir": None, "model": None}

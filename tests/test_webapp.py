"""The Flask web app through its test client: pages, API, hostile uploads, headers, no disk writes."""
from __future__ import annotations

import base64
import builtins
import dataclasses
import io
import json
import os
import re
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

from skinlesion import DISCLAIMER
from skinlesion.bundle.format import BundleError
from skinlesion.data.intake import MAX_BYTES
from skinlesion.metrics.calibration import DECISIONS
from skinlesion.serving.inference import OOD_MESSAGE
from tools.webapp_server import gunicorn_server
from webapp import MAX_CONTENT_LENGTH, SECURITY_HEADERS, create_app
from webapp.model import ModelHolder, ModelUnavailable

from hostile import HOSTILE_CASES, Case, huge_bytes

NOTICE = "Research tool, not a medical device"
API_EXPLAIN_METHODS = ("gradcam", "gradcam++", "scorecam")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def app(tiny_bundle):
    """One app for the module, so the model loads once (as in a server process)."""
    return create_app({"SKINLESION_MODEL": str(tiny_bundle), "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def predictor(app):
    return app.extensions["skinlesion_model"].get()


@pytest.fixture
def no_model_app(tmp_path, monkeypatch):
    monkeypatch.delenv("SKINLESION_MODEL", raising=False)
    monkeypatch.setenv("SKINLESION_MODELS_DIR", str(tmp_path / "no-models"))
    return create_app({"TESTING": True})


def _form(data: bytes, name: str = "lesion.jpg", **fields: str) -> dict:
    return {"image": (io.BytesIO(data), name), **fields}


def _api_predict(client, data: bytes, name: str = "lesion.jpg", **fields: str):
    return client.post("/api/v1/predict", data=_form(data, name, **fields), content_type="multipart/form-data")


def _ui_predict(client, data: bytes, name: str = "lesion.jpg", **fields: str):
    return client.post("/predict", data=_form(data, name, **fields), content_type="multipart/form-data")


def _assert_serves_good_request(client, image: bytes) -> None:
    r = _api_predict(client, image)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["decision"] in DECISIONS


def _data_uri_bytes(html: str, element_id: str, mime: str) -> bytes:
    match = re.search(rf'<img id="{element_id}" src="data:{mime};base64,([A-Za-z0-9+/=]+)"', html)
    assert match, f"no {mime} data: URI in <img id={element_id}>"
    return base64.b64decode(match.group(1))


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def _noise_png(side: int = 700) -> bytes:
    """A valid image over Werkzeug's 500 kB spool-to-disk threshold."""
    rgb = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    assert buf.tell() > 600_000
    return buf.getvalue()


# ------------------------------------------------------------------------------ pages


@pytest.mark.parametrize("path", ["/", "/model"])
def test_pages_render_with_notice(client, path):
    r = client.get(path)
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert r.mimetype == "text/html"
    assert NOTICE in html and DISCLAIMER in html
    assert '<html lang="en">' in html


def test_index_has_accessible_upload_form(client, app):
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'<label for="image">', html) and re.search(r'<input type="file" id="image" name="image"', html)
    assert '<label for="explain">' in html and '<select id="explain" name="explain">' in html
    for method in app.config["EXPLAIN_METHODS"]:
        assert f'<option value="{method}"' in html
    assert 'enctype="multipart/form-data"' in html
    # Drag and drop is a static script; inline scripts would be blocked by the CSP.
    assert '<script src="/static/upload.js" defer></script>' in html
    assert client.get("/static/upload.js").status_code == 200


def test_model_card_shows_the_cli_model_card_sections(client, tiny_bundle):
    from skinlesion.evaluation.model_card import model_card

    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    html = client.get("/model").get_data(as_text=True)
    cli = model_card(tiny_bundle)
    headings = re.findall(r"^## (.+)$", cli, re.M)
    assert len(headings) >= 10
    for heading in headings:  # the same sections, in the same order, as `skinlesion model-card`
        assert f"<h2>{escape(heading)}</h2>" in html, heading
    assert re.findall(r"<h2>(.+?)</h2>", html) == [str(escape(h)) for h in headings]
    for text in (meta["run_id"], meta["backbone"], "ROC AUC", "temperature scaling on validation",
                 f"threshold {meta['decision']['threshold']:.3f}", "Duplicates across splits"):
        assert text in html, text
    assert "<code>" in html and "**" not in html  # inline markdown rendered, not shown raw


def test_api_model_is_bundle_json(client, tiny_bundle):
    r = client.get("/api/v1/model")
    assert r.status_code == 200
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert r.json["run_id"] == meta["run_id"] and r.json["decision"] == meta["decision"]


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok" and isinstance(r.json["model_loaded"], bool)


def test_get_predict_goes_back_to_the_form(client):
    r = client.get("/predict")
    assert r.status_code == 302 and r.headers["Location"].endswith("/")


def test_unknown_page_is_friendly(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.mimetype == "text/html" and "Back to the upload form" in r.get_data(as_text=True)
    assert "<title>Page not found (error 404) ·" in r.get_data(as_text=True)  # the heading names the tab too
    r = client.get("/api/v1/nothing")
    assert r.status_code == 404 and r.json["error"]["status"] == 404


# ------------------------------------------------------------------------- prediction


def test_form_predict_shows_full_result(client, dermoscopic_jpeg, predictor):
    r = _ui_predict(client, dermoscopic_jpeg, explain="gradcam")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    expected = predictor.predict(dermoscopic_jpeg)
    assert f'<span class="decision" id="decision">{expected.decision}</span>' in html
    assert f"{100 * expected.probability:.1f}%</strong> probability" in html
    assert f"Operating threshold: <strong>{100 * expected.threshold:.1f}%" in html
    verdict = html[html.index('id="decision-heading"'):html.index('aria-label="Images"')]
    assert DISCLAIMER in verdict, "the notice must sit next to the result, not only in the footer"
    Image.open(io.BytesIO(_data_uri_bytes(html, "uploaded", "image/jpeg"))).verify()
    size = _png_size(_data_uri_bytes(html, "overlay", "image/png"))
    assert size == (predictor.input_size, predictor.input_size)
    assert 'href="/model"' in html
    assert re.search(r'<img id="overlay" src="[^"]+"\s+alt="Grad-CAM heat map', html)
    assert 'name="image_b64"' in html and '<option value="gradcam" selected>' in html


def test_result_page_reruns_with_another_method(client, dermoscopic_jpeg):
    first = _ui_predict(client, dermoscopic_jpeg, explain="gradcam").get_data(as_text=True)
    carried = re.search(r'name="image_b64" value="([^"]+)"', first).group(1)
    assert base64.b64decode(carried) == dermoscopic_jpeg
    r = client.post("/predict", data={"image_b64": carried, "explain": "gradcam++"},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    second = r.get_data(as_text=True)
    assert '<option value="gradcam++" selected>' in second and "Grad-CAM++ heat map" in second
    decision = re.compile(r'id="decision">([^<]+)<')
    assert decision.search(first).group(1) == decision.search(second).group(1)
    assert _data_uri_bytes(first, "overlay", "image/png") != _data_uri_bytes(second, "overlay", "image/png")


def test_large_uploads_are_not_carried_in_the_page(client, app, dermoscopic_jpeg, monkeypatch):
    monkeypatch.setitem(app.config, "RERUN_INLINE_MAX_BYTES", len(dermoscopic_jpeg) - 1)
    html = _ui_predict(client, dermoscopic_jpeg).get_data(as_text=True)
    assert 'name="image_b64"' not in html and "choose it again" in html
    assert '<input type="file" id="image" name="image" required' in html


def test_rerun_with_damaged_carried_image(client):
    r = client.post("/predict", data={"image_b64": "!!not base64!!"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "upload the file again" in r.get_data(as_text=True)


def test_api_predict(client, dermoscopic_jpeg):
    r = _api_predict(client, dermoscopic_jpeg)
    assert r.status_code == 200 and r.mimetype == "application/json"
    body = r.json
    assert body["decision"] in DECISIONS
    assert 0.0 <= body["probability"] <= 1.0 and 0.0 <= body["raw_probability"] <= 1.0
    assert 0.0 < body["threshold"] < 1.0 and body["band"][0] <= body["threshold"] <= body["band"][1]
    assert body["disclaimer"] == DISCLAIMER and DISCLAIMER in body["summary"]
    assert isinstance(body["out_of_distribution"], bool) and "overlay_png_base64" not in body


@pytest.mark.parametrize("method", API_EXPLAIN_METHODS)
def test_api_explain_returns_png_overlay(client, dermoscopic_jpeg, predictor, method):
    r = _api_predict(client, dermoscopic_jpeg, explain=method)
    assert r.status_code == 200
    assert r.json["explain_method"] == method
    png = base64.b64decode(r.json["overlay_png_base64"], validate=True)
    assert _png_size(png) == (predictor.input_size, predictor.input_size)


def test_unknown_explain_method_lists_valid_ones(client, dermoscopic_jpeg, app):
    r = _api_predict(client, dermoscopic_jpeg, explain="lime")
    assert r.status_code == 400
    message = r.json["error"]["message"]
    assert "'lime'" in message and all(m in message for m in app.config["EXPLAIN_METHODS"])
    r = _ui_predict(client, dermoscopic_jpeg, explain="lime")
    assert r.status_code == 400 and r.mimetype == "text/html" and "gradcam++" in r.get_data(as_text=True)


def test_missing_file_field_is_400(client):
    r = client.post("/api/v1/predict", data={"explain": "gradcam"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "'image'" in r.json["error"]["message"]
    # A browser form submitted without choosing a file sends an empty, unnamed part.
    r = client.post("/predict", data={"image": (io.BytesIO(b""), "")}, content_type="multipart/form-data")
    assert r.status_code == 400 and "No file was chosen" in r.get_data(as_text=True)


def test_ood_and_synthetic_warnings(client, dermoscopic_jpeg, predictor, monkeypatch):
    monkeypatch.setattr(predictor, "meta", dataclasses.replace(predictor.meta, synthetic=True))
    ood = predictor.members[0].ood
    assert ood is not None, "the tiny bundle should carry an OOD detector"
    monkeypatch.setattr(ood, "threshold", ood.threshold * 1e-9)  # now everything is "far away"
    body = _api_predict(client, dermoscopic_jpeg).json
    assert body["synthetic"] is True and body["out_of_distribution"] is True
    html = _ui_predict(client, dermoscopic_jpeg).get_data(as_text=True)
    assert "SYNTHETIC MODEL" in html
    assert str(escape(OOD_MESSAGE)) in html and "does not look like a dermoscopic image" in html
    assert "SYNTHETIC MODEL" in client.get("/model").get_data(as_text=True)


def test_no_warnings_for_a_normal_image_of_a_real_model(client, dermoscopic_jpeg, predictor):
    expected = predictor.predict(dermoscopic_jpeg)
    html = _ui_predict(client, dermoscopic_jpeg).get_data(as_text=True)
    assert ("SYNTHETIC MODEL" in html) == expected.synthetic
    assert (str(escape(OOD_MESSAGE)) in html) == expected.out_of_distribution


def test_internal_error_is_generic(client, dermoscopic_jpeg, predictor, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(predictor, "predict", boom)
    r = _api_predict(client, dermoscopic_jpeg)
    assert r.status_code == 500 and "secret" not in r.get_data(as_text=True)
    assert r.json["error"]["status"] == 500
    r = _ui_predict(client, dermoscopic_jpeg)
    assert r.status_code == 500 and r.mimetype == "text/html" and "secret" not in r.get_data(as_text=True)


# --------------------------------------------------------------------- hostile uploads


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=lambda c: c.name)
def test_hostile_upload_api(client, dermoscopic_jpeg, case: Case):
    r = _api_predict(client, case.data, case.name, explain="gradcam")
    assert r.status_code == case.status, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    error = r.json["error"]
    assert error["status"] == case.status and len(error["message"]) > 20
    _assert_serves_good_request(client, dermoscopic_jpeg)


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=lambda c: c.name)
def test_hostile_upload_ui(client, dermoscopic_jpeg, case: Case):
    r = _ui_predict(client, case.data, case.name)
    assert r.status_code == case.status
    assert r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert 'id="error-message"' in html and 'href="/"' in html and NOTICE in html
    # The upload itself is never echoed back (the HTML and SVG cases carry scripts).
    assert "<script>alert" not in html and "onerror=" not in html
    _assert_serves_good_request(client, dermoscopic_jpeg)


@pytest.mark.parametrize("path", ["/api/v1/predict", "/predict"])
def test_body_over_max_content_length_is_413(client, dermoscopic_jpeg, path):
    r = client.post(path, data=_form(huge_bytes(MAX_CONTENT_LENGTH + 1)), content_type="multipart/form-data")
    assert r.status_code == 413
    text = r.get_data(as_text=True)
    assert "too large" in text and f"{MAX_BYTES // 2**20} MB in all" in text
    assert (r.mimetype == "application/json") == path.startswith("/api/")
    _assert_serves_good_request(client, dermoscopic_jpeg)


def test_file_just_over_intake_limit_is_413(client):
    """Under the HTTP body limit but over intake's byte limit: intake's own 413."""
    r = _api_predict(client, huge_bytes(MAX_BYTES + 1))
    assert r.status_code == 413 and r.json["error"]["status"] == 413


def test_too_many_form_fields_is_not_called_a_large_image(client, dermoscopic_jpeg):
    """Werkzeug's 413 for a small request with 1,000+ form parts must not blame the image's size."""
    fields = {f"f{i}": "x" for i in range(1200)}
    r = client.post("/api/v1/predict", data={**fields, **_form(dermoscopic_jpeg)}, content_type="multipart/form-data")
    assert r.status_code == 413
    assert "too many fields" in r.json["error"]["message"] and "MB" not in r.json["error"]["message"]


@pytest.mark.parametrize("path", ["/api/v1/predict", "/predict"])
def test_file_parts_without_a_name_are_uploads_too(client, dermoscopic_jpeg, path):
    """Nothing sent is dropped silently: a part with no file name is analysed or reported."""
    parts = [(io.BytesIO(b"hello, this is text\n"), ""), (io.BytesIO(dermoscopic_jpeg), "good.jpg")]
    r = client.post(path, data={"image": parts}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_data(as_text=True)
    if path.startswith("/api/"):
        assert r.json["n_images"] == 2 and r.json["n_rejected"] == 1
        assert r.json["images"][0]["filename"] == "image 1" and r.json["images"][0]["error"]["status"] == 415
    # A browser's empty, unnamed part ("no file chosen") beside a real file is not an upload.
    parts = [(io.BytesIO(b""), ""), (io.BytesIO(dermoscopic_jpeg), "good.jpg")]
    r = client.post(path, data={"image": parts}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_data(as_text=True)


def test_405_says_which_methods_are_allowed(client):
    r = client.get("/api/v1/predict")
    assert r.status_code == 405 and r.mimetype == "application/json"
    assert "POST" in r.headers["Allow"]
    r = client.post("/model")
    assert r.status_code == 405 and r.mimetype == "text/html" and "GET" in r.headers["Allow"]


def test_explain_is_read_the_same_on_both_routes_and_never_echoed_whole(client, dermoscopic_jpeg):
    assert _ui_predict(client, dermoscopic_jpeg, explain=" gradcam ").status_code == 200
    assert _api_predict(client, dermoscopic_jpeg, explain=" gradcam ").status_code == 200
    r = _api_predict(client, dermoscopic_jpeg, explain="<x>" * 10_000)
    assert r.status_code == 400 and len(r.json["error"]["message"]) < 300


def test_no_server_path_reaches_a_client(client, tiny_bundle, no_model_app, tmp_path):
    """bundle.json records where the run read and wrote; clients see those paths without the
    server's directory layout (relative to the project root, else only their last part)."""
    text = client.get("/api/v1/model").get_data(as_text=True) + client.get("/model").get_data(as_text=True)
    assert str(tiny_bundle.parent) not in text and "pytest-of" not in text
    blank = no_model_app.test_client()
    for r in (blank.get("/"), blank.get("/readyz"), blank.get("/api/v1/model"), blank.get("/model"),
              blank.post("/api/v1/predict", data=_form(b"\xff\xd8\xff"), content_type="multipart/form-data")):
        assert str(tmp_path) not in r.get_data(as_text=True), r.request.path
        assert "make run" in r.get_data(as_text=True), r.request.path


def test_public_text_keeps_sentences_and_urls():
    from webapp.analysis import public_text

    assert public_text("no bundle at /srv/x/models/m1, run `make run`") == "no bundle at …/m1, run `make run`"
    assert public_text("see https://example.org/a/b and 5 MB/s") == "see https://example.org/a/b and 5 MB/s"
    assert public_text("evaluate ../../tmp/p/run-1 here") == "evaluate …/run-1 here"
    # A folder's trailing slash stays: "<folder>/<name>" hints must still read as a path.
    assert public_text("serve one with SKINLESION_MODEL=/srv/x/models/<name>") == \
        "serve one with SKINLESION_MODEL=…/models/<name>"
    once = public_text("no bundle at /srv/x/models/m1 or ../y/")
    assert public_text(once) == once == "no bundle at …/m1 or …/y/"


# -------------------------------------------------------------------------- no model


def test_without_a_bundle_pages_explain_how_to_train(no_model_app):
    client = no_model_app.test_client()
    r = client.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "make run" in html and "No trained model" in html and NOTICE in html
    r = client.post("/api/v1/predict", data=_form(b"\xff\xd8\xff"), content_type="multipart/form-data")
    assert r.status_code == 503 and r.mimetype == "application/json"
    assert r.json["error"]["status"] == 503 and "make run" in r.json["error"]["message"]
    assert client.get("/api/v1/model").status_code == 503
    r = client.get("/model")
    assert r.status_code == 503 and r.mimetype == "text/html" and "make run" in r.get_data(as_text=True)
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok", "model_loaded": False}


def test_without_the_default_the_page_names_the_bundles_there(no_model_app, tmp_path):
    other = tmp_path / "no-models" / "20261207-lite0-abc"
    other.mkdir(parents=True)
    (other / "bundle.json").write_text("{}")
    html = no_model_app.test_client().get("/").get_data(as_text=True)
    assert "20261207-lite0-abc" in html and "SKINLESION_MODEL=…/no-models/&lt;name&gt;" in html
    assert "<code>make run</code>" in html and "`" not in html


def test_a_bundle_trained_later_is_picked_up(no_model_app, tiny_bundle, monkeypatch):
    client = no_model_app.test_client()
    assert "make run" in client.get("/").get_data(as_text=True)
    monkeypatch.setenv("SKINLESION_MODEL", str(tiny_bundle))
    assert "No trained model" not in client.get("/").get_data(as_text=True)


# ------------------------------------------------------------------- model holder


def test_model_loads_once_under_concurrent_requests():
    calls = []

    def slow_loader(path):
        calls.append(path)
        time.sleep(0.2)
        return object()

    holder = ModelHolder("some/bundle", loader=slow_loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(holder.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1 and holder.loaded


def test_failed_load_is_reported_and_retried():
    attempts = []

    def failing(path):
        attempts.append(path)
        raise BundleError("no trained model found. Train one with `make run`.")

    holder = ModelHolder(None, loader=failing)
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="make run"):
            holder.get()
    assert len(attempts) == 2 and not holder.loaded


def test_config_key_chooses_the_model(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("SKINLESION_MODEL", str(tmp_path / "elsewhere"))
    app = create_app({"SKINLESION_MODEL": str(tiny_bundle)})
    assert app.extensions["skinlesion_model"].candidate() == tiny_bundle
    app = create_app()
    assert app.extensions["skinlesion_model"].candidate() == tmp_path / "elsewhere"


def test_debug_is_off_by_default(monkeypatch):
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    app = create_app()
    assert app.debug is False and app.testing is False


# ------------------------------------------------------------------------- security


@pytest.mark.parametrize("method,path", [("get", "/"), ("get", "/model"), ("get", "/static/style.css"),
                                         ("get", "/healthz"), ("get", "/nope"), ("post", "/api/v1/predict"),
                                         ("post", "/predict")])
def test_security_headers_on_every_response(client, method, path):
    r = getattr(client, method)(path)
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "Server" not in r.headers, "the servers (gunicorn, Werkzeug) name themselves"


def test_pages_need_no_inline_script_or_style(client, dermoscopic_jpeg):
    pages = [client.get("/"), client.get("/model"), _ui_predict(client, dermoscopic_jpeg),
             _ui_predict(client, b"text", "x.jpg")]
    for r in pages:
        html = r.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> would be blocked by the CSP"
        assert not re.search(r"\sstyle=|<style", html), "inline styles would be blocked by the CSP"
        assert not re.search(r"\son[a-z]+=", html), "inline event handlers would be blocked by the CSP"


def test_gunicorn_serves_the_app_like_make_webapp(tiny_bundle):
    """`make webapp`'s app spec from the repo root, two workers, a bare Server header."""
    with gunicorn_server(tiny_bundle, workers=2) as url:
        for path in ("/healthz", "/"):
            with urllib.request.urlopen(url + path, timeout=30) as r:
                assert r.status == 200
                assert r.headers.get_all("Server") == ["gunicorn"], "no version in the banner"
                for name, value in SECURITY_HEADERS.items():
                    assert r.headers[name] == value


def test_uploads_are_never_written_to_disk(client, app, dermoscopic_jpeg, monkeypatch, tmp_path):
    big = _noise_png()
    _assert_serves_good_request(client, dermoscopic_jpeg)  # model loaded before we watch
    _ui_predict(client, dermoscopic_jpeg)  # and the explainer warmed up

    # A private temp dir: the shared /tmp changes under other processes' feet.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    watched = [tempfile.gettempdir(), app.instance_path]
    before = {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in watched}
    writes = []
    real_open = builtins.open

    def watching_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and set(mode) & set("wax+"):
            writes.append((file, mode))
        return real_open(file, mode, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    monkeypatch.setattr(builtins, "open", watching_open)
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", forbidden)

    r_ui = _ui_predict(client, big, "big.png")
    r_api = _api_predict(client, big, "big.png", explain="gradcam")
    monkeypatch.undo()
    assert r_ui.status_code == 200 and r_api.status_code == 200, (r_ui.status_code, r_api.get_data(as_text=True))
    assert writes == []
    after = {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in watched}
    assert after == before


def test_a_refused_batch_says_which_image(predictor, dermoscopic_jpeg):
    from skinlesion.data.intake import ImageRejected

    with pytest.raises(ImageRejected, match="Image 2 of 2: ") as info:
        predictor.predict_many([dermoscopic_jpeg, b"hello, this is text"])
    assert info.value.status == 415

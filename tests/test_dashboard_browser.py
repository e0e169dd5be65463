"""The Voila dashboard in a real browser: Voila serves the notebook, headless Chromium uses it.

Voila is started on a free loopback port the way `make dashboard` starts it (config from
``dashboards/voila.json``), with ``SKINLESION_MODEL`` set to the tiny test bundle. Playwright
drives Debian's ``chromium`` (never a downloaded browser) and uploads files through the
file chooser that the FileUpload widget's hidden ``<input type=file>`` opens. Screenshots go
to ``test-artifacts/``.

Needs the ``chromium`` fixture (conftest.py): skipped without the browser locally, failed
without it in CI (``CI=true``).
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinlesion.serving.inference import Predictor

from hostile import text_renamed_jpg

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SERVER_START_S = 90
# The first upload also imports TensorFlow and loads the model inside the Voila kernel.
RESULT_TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"voila exited with {proc.returncode} before serving:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"voila did not answer at {url} within {SERVER_START_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def voila_url(chromium, tiny_bundle, tmp_path_factory):
    """Voila serving the dashboard with the tiny bundle; stopped (with its kernels) at teardown."""
    port = _free_port()
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    env = {**os.environ, "SKINLESION_MODEL": str(tiny_bundle), "SKINLESION_MODELS_DIR": str(Path(tiny_bundle).parent)}
    cmd = [
        sys.executable, "-m", "voila", "dashboards/lesion_uploader.ipynb",
        "--Voila.config_file_paths=dashboards", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
    ]
    with log.open("wb") as out:
        # Own session, so teardown can stop Voila and the kernels it started, and nothing else.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_http(url, proc, log)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def dash_page(chromium, voila_url):
    """One Chromium page on the dashboard (not pytest-playwright's ``page``: that one launches a
    downloaded browser)."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = chromium.new_context(viewport={"width": 1280, "height": 1400})
    try:
        pg = context.new_page()
        pg.goto(voila_url, timeout=RESULT_TIMEOUT_MS)
        # Widgets render once the kernel has run the notebook and the page has connected to it.
        pg.locator(".skinlesion-dashboard .widget-upload").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
        yield pg
    finally:
        context.close()


def _upload(page, name: str, data: bytes | None = None, path: Path | None = None, mime: str = "image/jpeg") -> None:
    """Pick a file the way a person does: click the upload button, answer the file chooser.

    ipywidgets 8's FileUpload keeps its ``<input type=file>`` detached from the document (the
    button calls ``input.click()``), so there is no element for ``set_input_files``; the file
    chooser it opens is the same hidden input.
    """
    files = str(path) if path else [{"name": name, "mimeType": mime, "buffer": data}]
    with page.expect_file_chooser() as chooser:
        page.locator(".skinlesion-dashboard .widget-upload").click()
    chooser.value.set_files(files)


def _reset(page) -> None:
    page.locator(".skinlesion-dashboard button", has_text="Reset").click()
    page.locator(".skinlesion-summary, .skinlesion-error").first.wait_for(state="detached", timeout=30_000)


OVERLAY_LOADED_JS = (
    "() => { const img = document.querySelector('.skinlesion-overlay img');"
    " return !!img && img.complete && img.naturalWidth > 0 && img.offsetParent !== null; }"
)


def test_page_shows_notice_and_controls_but_not_the_hidden_cell(dash_page) -> None:
    text = dash_page.inner_text("body")
    assert "Research tool, not a medical device." in dash_page.locator(".skinlesion-notice").inner_text()
    assert "Heat map:" in text and "Model:" in text
    assert "Reset" in text
    # The tab names the tool (notebook metadata "title"), not the notebook's file name.
    assert dash_page.title() == "Skin lesion uploader (research tool, not a medical device)"
    content = dash_page.content()
    # The stub-upload cell is removed by TagRemovePreprocessor, so neither its code nor its
    # output may reach the page.
    assert "stubbed upload" not in content and "upload_value" not in content
    dash_page.screenshot(path=ARTIFACTS / "dashboard_start.png", full_page=True)


def test_upload_shows_decision_summary_and_overlay(dash_page, tiny_bundle, dermoscopic_jpeg) -> None:
    name, data = "lesion.jpg", dermoscopic_jpeg
    expected = Predictor.from_bundle(tiny_bundle).predict(data)

    _upload(dash_page, name, data)
    summary = dash_page.locator(".skinlesion-summary")
    summary.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    dash_page.wait_for_function(OVERLAY_LOADED_JS, timeout=30_000)

    assert summary.inner_text().strip() == expected.summary
    assert dash_page.locator(".skinlesion-decision").inner_text().strip() == expected.decision
    # Uploaded photo and heat map side by side.
    photo, heat = (dash_page.locator(".skinlesion-dashboard img").nth(i).bounding_box() for i in (0, 1))
    assert photo and heat and photo["x"] + photo["width"] <= heat["x"] and abs(photo["y"] - heat["y"]) < 5
    # Both pictures have a text alternative; the result is an alert under a heading.
    alts = dash_page.eval_on_selector_all(".skinlesion-dashboard img", "els => els.map(e => e.alt)")
    assert alts[0] == f"Your photo: {name}" and alts[1].startswith("Grad-CAM heat map"), alts
    assert dash_page.locator(".skinlesion-dashboard [role=alert]").count() >= 1
    assert dash_page.get_by_role("heading", name=f"Result for {name}").is_visible()
    dash_page.screenshot(path=ARTIFACTS / "dashboard_result.png", full_page=True)

    _reset(dash_page)
    dash_page.locator(".skinlesion-dashboard img").first.wait_for(state="hidden", timeout=30_000)
    dash_page.screenshot(path=ARTIFACTS / "dashboard_reset.png", full_page=True)


def test_hostile_upload_shows_a_clear_error(dash_page) -> None:
    case = text_renamed_jpg()
    _upload(dash_page, case.name, case.data)
    error = dash_page.locator(".skinlesion-error")
    error.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    text = error.inner_text()
    assert "Image not accepted" in text and "text file" in text
    assert dash_page.locator(".skinlesion-summary").count() == 0
    assert not dash_page.locator(".skinlesion-overlay img").is_visible()
    dash_page.screenshot(path=ARTIFACTS / "dashboard_hostile.png", full_page=True)
    _reset(dash_page)


def test_a_15_mb_phone_photo_gets_through_the_websocket(dash_page, tmp_path, dermoscopic_jpeg) -> None:
    # Tornado drops websocket messages over 10 MiB unless voila.json raises the limit.
    data = dermoscopic_jpeg
    rng = np.random.default_rng(0)
    big = Image.open(io.BytesIO(data)).convert("RGB").resize((3200, 3200), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(big, np.int16) + rng.integers(-24, 25, (3200, 3200, 3), dtype=np.int16), 0, 255)
    path = tmp_path / "phone_photo.jpg"
    Image.fromarray(noisy.astype(np.uint8)).save(path, "JPEG", quality=97, subsampling=0)
    assert path.stat().st_size > 14 * 2**20

    _upload(dash_page, path.name, path=path)
    dash_page.get_by_text("Result for phone_photo.jpg").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    assert dash_page.locator(".skinlesion-summary").is_visible()
    dash_page.screenshot(path=ARTIFACTS / "dashboard_large_upload.png", full_page=True)
    _reset(dash_page)

"""The web app in a real headless Chromium, served by gunicorn as in production.

Uses the system Chromium (the ``chromium`` fixture of conftest.py), not a Playwright browser
download: without it these tests are skipped locally and FAIL in CI (``CI=true``). Screenshots go to
``test-artifacts/`` (git-ignored).
"""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from skinlesion.metrics.calibration import DECISIONS
from tools.webapp_server import REPO_ROOT, gunicorn_server

from hostile import text_renamed_jpg

ARTIFACTS = REPO_ROOT / "test-artifacts"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server_url(tiny_bundle):
    with gunicorn_server(tiny_bundle, workers=1) as url:
        yield url


@pytest.fixture
def app_page(chromium, server_url):
    """A fresh page that records console errors (a CSP violation shows up there)."""
    context = chromium.new_context(base_url=server_url, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)  # the first prediction loads TensorFlow and the model
    page.console_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    yield page
    context.close()


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def _check_result(page) -> str:
    decision = page.locator("#decision").inner_text().strip()
    assert decision in DECISIONS
    assert "probability that this lesion is malignant" in page.locator(".probability").inner_text()
    assert "Operating threshold" in page.locator(".threshold").inner_text()
    assert "not a medical device" in page.locator(".verdict .notice").inner_text()
    for selector in ("#uploaded", "#overlay"):
        assert _loaded(page, selector), f"{selector} did not load"
        assert page.get_attribute(selector, "alt")
    return decision


def test_upload_real_image_shows_decision_and_overlay(app_page, dermoscopic_jpeg):
    app_page.goto("/")
    app_page.get_by_label("Image file").set_input_files(
        {"name": "lesion.jpg", "mimeType": "image/jpeg", "buffer": dermoscopic_jpeg})
    app_page.get_by_label("Explanation method").select_option("gradcam")
    with app_page.expect_navigation():
        app_page.get_by_role("button", name="Analyse image").click()
    first = _check_result(app_page)
    assert "Grad-CAM" in app_page.locator("figcaption").nth(1).inner_text()
    _screenshot(app_page, "webapp-result.png")

    # Re-run with another method from the result page; the image travels inside the page.
    app_page.get_by_label("Explanation method").select_option("gradcam++")
    with app_page.expect_navigation():
        app_page.get_by_role("button", name="Explain again").click()
    assert _check_result(app_page) == first
    assert "Grad-CAM++" in app_page.locator("figcaption").nth(1).inner_text()
    assert app_page.console_errors == []


def test_text_file_renamed_jpg_shows_clear_error(app_page):
    case = text_renamed_jpg()
    app_page.goto("/")
    app_page.get_by_label("Image file").set_input_files(
        {"name": case.name, "mimeType": "image/jpeg", "buffer": case.data})
    with app_page.expect_response(lambda r: r.url.endswith("/predict")) as response:
        app_page.get_by_role("button", name="Analyse image").click()
    assert response.value.status == case.status == 415
    app_page.wait_for_selector("#error-message")
    message = app_page.locator("#error-message").inner_text()
    assert "not a supported image type" in message and "JPEG, PNG" in message
    assert app_page.get_by_role("link", name="Back to the upload form").is_visible()
    _screenshot(app_page, "webapp-error.png")


def test_drag_and_drop_fills_the_file_input(app_page, dermoscopic_jpeg):
    app_page.goto("/")
    # Playwright cannot drag files from the OS, so drop a File built in the page.
    app_page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: data, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(dermoscopic_jpeg).decode("ascii"),
    )
    assert app_page.eval_on_selector("#image", "input => input.files.length") == 1
    assert "dropped.jpg" in app_page.locator("#file-name").inner_text()
    _screenshot(app_page, "webapp-index.png")
    with app_page.expect_navigation():
        app_page.get_by_role("button", name="Analyse image").click()
    _check_result(app_page)
    assert app_page.console_errors == []


def test_model_card_page(app_page):
    app_page.goto("/")
    with app_page.expect_navigation():
        app_page.get_by_role("link", name="Model card").click()
    assert app_page.get_by_role("heading", name="Model card").is_visible()
    # The same sections the CLI's model card writes (one model card, rendered twice).
    for heading in ("Decision policy", "Calibration", "Limitations", "Evaluation", "Generalisation and robustness"):
        assert app_page.get_by_role("heading", name=heading).is_visible()
    assert "not a medical device" in app_page.locator("footer").inner_text()
    _screenshot(app_page, "webapp-model-card.png")
    assert app_page.console_errors == []


def _flipped(jpeg: bytes) -> bytes:
    """Another photo of the same lesion (mirrored), so it is not refused as a repeat."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, "JPEG")
    return out.getvalue()


def test_phone_width_long_names_and_several_photos(chromium, server_url, dermoscopic_jpeg):
    """At 375 px nothing scrolls sideways (a phone's long file name, the technical details open),
    and several photos' regions and images have names a screen reader can tell apart."""
    context = chromium.new_context(base_url=server_url, viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.set_default_timeout(120_000)
    long_name = "IMG_20240612_142233_dermatoscope_follow_up_left_shoulder_v2.jpg"

    def overflow() -> int:
        return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")

    try:
        page.goto("/")
        page.get_by_label("Image file").set_input_files([
            {"name": long_name, "mimeType": "image/jpeg", "buffer": dermoscopic_jpeg},
            {"name": "second_" + long_name, "mimeType": "image/jpeg", "buffer": _flipped(dermoscopic_jpeg)},
        ])
        assert long_name in page.locator("#file-name").inner_text()
        assert overflow() <= 0
        with page.expect_navigation():
            page.get_by_role("button", name="Analyse image").click()
        for details in page.locator("details").all():
            details.evaluate("d => d.open = true")
        _screenshot(page, "webapp-results-375.png")
        assert overflow() <= 0
        regions = page.eval_on_selector_all("section.images", "els => els.map(e => e.getAttribute('aria-label'))")
        assert len(regions) == 2 and len(set(regions)) == 2, regions
        alts = page.eval_on_selector_all("section.images img", "els => els.map(e => e.alt)")
        assert len(set(alts)) == len(alts), alts
        # The model card's wide tables scroll in their own box; the page does not, and no number is broken.
        page.goto("/model")
        assert overflow() <= 0
        wrap = page.eval_on_selector_all(
            ".metrics-table td", "els => els.map(e => getComputedStyle(e).overflowWrap)")
        assert wrap and set(wrap) == {"normal"}, set(wrap)
    finally:
        context.close()

"""Flask web app for the skinlesion classifier (research tool, not a medical device).

Run it with ``make webapp`` (gunicorn) or, for development, ``flask --app webapp run``.
The model is the bundle in config ``SKINLESION_MODEL`` / env ``SKINLESION_MODEL``, else the default
model ``models/<skinlesion.config.DEFAULT_MODEL>`` (``skinlesion.bundle.format.resolve_default_bundle``);
each process loads it once, on the first request that needs it.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from functools import partial
from typing import IO, Any

from flask import Flask, Request, request

from skinlesion import DISCLAIMER, config
from skinlesion.data.intake import MAX_BYTES
from skinlesion.explain.common import METHODS
from skinlesion.serving.inference import Predictor
from skinlesion.serving.presentation import method_label
from webapp.analysis import percent
from webapp.errors import register_error_handlers
from webapp.model import ModelHolder
from webapp.modelcard import inline_markdown

# Multipart framing and the small form fields ride on top of the image itself.
MAX_CONTENT_LENGTH = MAX_BYTES + 2**20
# The result page's "explain again" form carries uploads up to this size back as base64.
RERUN_INLINE_MAX_BYTES = 4 * 2**20

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class InMemoryRequest(Request):
    """A request whose file uploads never touch the disk.

    Werkzeug spools uploads over 500 kB to a temporary file; these are medical images, so they
    stay in memory, which MAX_CONTENT_LENGTH bounds.
    """

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; ``test_config`` overrides the defaults (e.g. ``SKINLESION_MODEL``)."""
    app = Flask(__name__, instance_relative_config=True)
    app.request_class = InMemoryRequest
    app.config.from_mapping(
        SKINLESION_MODEL=config.model_env(),
        # keras | tflite | tflite-dynamic (the bundle's TFLite export; skinlesion.serving.backends).
        SKINLESION_BACKEND=config.backend(),
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        # Form fields (not files) are held in memory up to this size: room for the base64 copy.
        MAX_FORM_MEMORY_SIZE=math.ceil(RERUN_INLINE_MAX_BYTES * 4 / 3) + 2**16,
        RERUN_INLINE_MAX_BYTES=RERUN_INLINE_MAX_BYTES,
        EXPLAIN_METHODS=tuple(METHODS),
        DEFAULT_EXPLAIN_METHOD="gradcam",
        # Score-CAM and SmoothGrad take seconds to tens of seconds on a CPU: past this budget a
        # request gets a 503 and the computation is abandoned (skinlesion.serving.budget).
        EXPLAIN_TIME_BUDGET_S=config.explain_time_budget_s(),
        EXPLAIN_BUDGETED_METHODS=config.EXPLAIN_BUDGETED_METHODS,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)

    app.extensions["skinlesion_model"] = ModelHolder(
        app.config["SKINLESION_MODEL"], loader=partial(Predictor.from_bundle, backend=app.config["SKINLESION_BACKEND"]))

    from webapp import api, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    register_error_handlers(app)
    app.after_request(_harden)
    app.context_processor(lambda: {"disclaimer": DISCLAIMER})
    app.add_template_filter(percent, "pct")
    app.add_template_filter(method_label)
    app.add_template_filter(inline_markdown, "md")
    return app


def _harden(response):
    """Security headers on every response; no caching of pages that may show a patient's image."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    # No Server header of our own: gunicorn always sends a bare "Server: gunicorn" (no version)
    # and Werkzeug's development server always adds its own, so ours would only duplicate it.
    response.headers.pop("Server", None)
    return response

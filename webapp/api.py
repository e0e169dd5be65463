"""JSON API: ``POST /api/v1/predict``, ``GET /api/v1/model`` and ``GET /healthz``."""
from __future__ import annotations

import base64

from flask import Blueprint, current_app, jsonify, request

from skinlesion.io import clean_json
from webapp.analysis import analyse, check_method, uploaded_bytes
from webapp.model import holder

bp = Blueprint("api", __name__)


@bp.post("/api/v1/predict")
def predict():
    """Multipart field ``image`` (+ optional ``explain``) -> Prediction.to_dict() [+ overlay]."""
    method = request.form.get("explain", "").strip() or None
    if method is not None:
        check_method(method, current_app.config["EXPLAIN_METHODS"])
    data = uploaded_bytes(request.files, request.form)
    result = analyse(holder(), data, method)
    body = result.prediction.to_dict()
    if result.overlay_png is not None:
        body["explain_method"] = method
        body["overlay_png_base64"] = base64.b64encode(result.overlay_png).decode("ascii")
    return jsonify(clean_json(body))


@bp.get("/api/v1/model")
def model():
    """The served bundle's metadata (bundle.json as written)."""
    return jsonify(clean_json(holder().get().meta.raw))


@bp.get("/healthz")
def healthz():
    """Liveness; ``model_loaded`` says whether this process has loaded the model yet."""
    return jsonify(status="ok", model_loaded=holder().loaded)

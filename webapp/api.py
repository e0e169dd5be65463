"""JSON API: ``POST /api/v1/predict``, ``GET /api/v1/model``, ``GET /healthz`` and ``GET /readyz``."""
from __future__ import annotations

import base64

from flask import Blueprint, current_app, jsonify, request

from skinlesion import DISCLAIMER
from skinlesion.io import clean_json
from skinlesion.serving.combine import combine_predictions
from webapp.analysis import (
    Analysis,
    analyse,
    analyse_many,
    check_method,
    explain_deadline,
    none_analysed,
    public_json,
    public_text,
    uploaded_files,
)
from webapp.model import holder

bp = Blueprint("api", __name__)


@bp.post("/api/v1/predict")
def predict():
    """Multipart field ``image`` (+ optional ``explain``) -> Prediction.to_dict() [+ overlay].

    Several photos of one lesion (the field ``image`` repeated, up to MAX_IMAGES) ->
    ``{"combined": ..., "images": [...], ...}``: the combined result
    (:func:`skinlesion.serving.combine.combine_predictions`) and each photo's own result, or its
    error when that file was refused (the others are still scored).
    """
    method = request.form.get("explain", "").strip() or None
    if method is not None:
        check_method(method, current_app.config["EXPLAIN_METHODS"])
    uploads = uploaded_files(request.files, request.form)
    deadline = explain_deadline(method, current_app.config)
    if len(uploads) == 1:
        return jsonify(clean_json(_result_json(analyse(holder(), uploads[0][1], method, deadline=deadline))))
    items = analyse_many(holder(), uploads, method, deadline=deadline)
    failed = none_analysed(items)
    images = [{"index": k, "filename": item.name,
               **(_result_json(item.analysis) if item.analysis is not None else {"error": item.error()})}
              for k, item in enumerate(items)]
    if failed is not None:
        return jsonify(clean_json({"error": {"status": failed.status, "message": failed.message},
                                   "images": images})), failed.status
    combined = combine_predictions([i.analysis.prediction for i in items if i.analysis is not None],
                                   holder().get().policy)
    return jsonify(clean_json({
        "combined": combined, "images": images, "n_images": len(items),
        "n_rejected": sum(i.analysis is None for i in items), "disclaimer": DISCLAIMER,
    }))


def _result_json(result: Analysis) -> dict:
    """One photo's JSON: Prediction.to_dict() [+ the overlay and how to read it]."""
    method = result.method
    body = result.prediction.to_dict()
    if result.overlay_png is not None:
        body["explain_method"] = method
        body["overlay_png_base64"] = base64.b64encode(result.overlay_png).decode("ascii")
        if result.caption is not None:
            # How to read the map for this decision, and the model (ensemble members) it explains.
            body["explanation"] = {"caption": result.caption.text, "title": result.caption.title,
                                   "evidence": result.caption.evidence, "model": result.explained_model}
    return body


@bp.get("/api/v1/model")
def model():
    """The served bundle's metadata (bundle.json as written, paths relative to the project root)."""
    return jsonify(clean_json(public_json(holder().get().meta.raw)))


@bp.get("/healthz")
def healthz():
    """Liveness; ``model_loaded`` says whether this process has loaded the model yet."""
    return jsonify(status="ok", model_loaded=holder().loaded)


@bp.get("/readyz")
def readyz():
    """Readiness: 200 once this process has loaded the model and run one prediction and one
    Grad-CAM (``gunicorn.conf.py`` does that before a worker takes traffic); 503 before, with why.

    A process that is not warm yet (started without gunicorn.conf.py, or with no bundle then)
    starts its warm-up here, in the background, so polling the probe is enough to make it ready.
    """
    h = holder()
    report = h.warm_report
    if report is not None:
        return jsonify(clean_json({"status": "ready", **report.to_dict()}))
    reason = h.unavailable_reason()
    if reason is None:
        h.start_warm_up()
        reason = h.not_ready_reason()
    response = jsonify(status="not ready", reason=reason and public_text(reason))
    response.headers["Retry-After"] = "5"
    return response, 503

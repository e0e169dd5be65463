"""HTML pages: the upload form, the result page and the model card."""
from __future__ import annotations

import base64

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from skinlesion.data.intake import MAX_BYTES
from skinlesion.serving.inference import OOD_MESSAGE
from webapp import modelcard
from webapp.analysis import analyse, check_method, data_uri, uploaded_bytes
from webapp.model import holder

bp = Blueprint("views", __name__)


@bp.get("/")
def index():
    """Upload form, or how to train a model when there is none."""
    return render_template(
        "index.html",
        no_model=holder().unavailable_reason(),
        methods=current_app.config["EXPLAIN_METHODS"],
        selected=current_app.config["DEFAULT_EXPLAIN_METHOD"],
        max_mb=MAX_BYTES // 2**20,
    )


@bp.get("/predict")
def predict_get():
    # Reached by reloading or bookmarking a result page; results are never stored, so start over.
    return redirect(url_for("views.index"))


@bp.post("/predict")
def predict():
    """Analyse an upload (or the image carried by the result page) and show the result."""
    config = current_app.config
    method = check_method(request.form.get("explain") or config["DEFAULT_EXPLAIN_METHOD"],
                          config["EXPLAIN_METHODS"])
    data = uploaded_bytes(request.files, request.form, allow_inline=True)
    result = analyse(holder(), data, method, preview=True)
    p = result.prediction
    # The re-run form carries the upload back inside the page (nothing is kept on the server),
    # as long as that keeps the page a reasonable size.
    carry = base64.b64encode(data).decode("ascii") if len(data) <= config["RERUN_INLINE_MAX_BYTES"] else None
    return render_template(
        "result.html",
        p=p,
        pct=100.0 * p.probability,
        decision_help=modelcard.DECISION_HELP.get(p.decision, ""),
        ood_message=OOD_MESSAGE,
        preview_uri=data_uri("image/jpeg", result.preview_jpeg),
        overlay_uri=data_uri("image/png", result.overlay_png),
        method=method,
        methods=config["EXPLAIN_METHODS"],
        image_b64=carry,
    )


@bp.get("/model")
def model_card():
    """The served bundle's model card: the same sections as ``skinlesion model-card``."""
    predictor = holder().get()
    return render_template("model_card.html", card=modelcard.card(predictor.meta, predictor.bundle.path))

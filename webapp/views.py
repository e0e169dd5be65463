"""HTML pages: the upload form, the result page and the model card."""
from __future__ import annotations

import base64

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from skinlesion.data.intake import MAX_BYTES
from skinlesion.serving.combine import combine_predictions
from skinlesion.serving.inference import OOD_MESSAGE
from skinlesion.serving.presentation import data_uri
from webapp import modelcard
from webapp.analysis import (
    MAX_IMAGES,
    Analysis,
    analyse,
    analyse_many,
    check_method,
    explain_deadline,
    none_analysed,
    public_text,
    uploaded_files,
)
from webapp.model import holder

bp = Blueprint("views", __name__)


@bp.get("/")
def index():
    """Upload form, or how to train a model when there is none."""
    return render_template(
        "index.html",
        no_model=(reason := holder().unavailable_reason()) and public_text(reason),
        methods=current_app.config["EXPLAIN_METHODS"],
        selected=current_app.config["DEFAULT_EXPLAIN_METHOD"],
        max_mb=MAX_BYTES // 2**20,
        max_images=MAX_IMAGES,
    )


@bp.get("/predict")
def predict_get():
    # Reached by reloading or bookmarking a result page; results are never stored, so start over.
    return redirect(url_for("views.index"))


@bp.post("/predict")
def predict():
    """Analyse an upload (or the image carried by the result page) and show the result; several
    photos of one lesion get one combined result and each photo's own."""
    config = current_app.config
    method = check_method(request.form.get("explain", "").strip() or config["DEFAULT_EXPLAIN_METHOD"],
                          config["EXPLAIN_METHODS"])
    uploads = uploaded_files(request.files, request.form, allow_inline=True)
    deadline = explain_deadline(method, config)
    if len(uploads) > 1:
        return _several(uploads, method, deadline)
    data = uploads[0][1]
    result = analyse(holder(), data, method, preview=True, deadline=deadline)
    # The re-run form carries the upload back inside the page (nothing is kept on the server),
    # as long as that keeps the page a reasonable size.
    carry = base64.b64encode(data).decode("ascii") if len(data) <= config["RERUN_INLINE_MAX_BYTES"] else None
    return render_template("result.html", **_result_context(result), method=method,
                           methods=config["EXPLAIN_METHODS"], image_b64=carry)


def _result_context(result: Analysis) -> dict:
    """What _prediction.html shows for one analysed image."""
    p = result.prediction
    return dict(
        p=p,
        pct=100.0 * p.probability,
        decision_help=modelcard.DECISION_HELP.get(p.decision, ""),
        ood_message=OOD_MESSAGE,
        preview_uri=data_uri("image/jpeg", result.preview_jpeg),
        overlay_uri=data_uri("image/png", result.overlay_png) if result.overlay_png is not None else None,
        caption=result.caption,
        explained_model=result.explained_model,
    )


def _several(uploads: list[tuple[str, bytes]], method: str, deadline):
    """Several photos of one lesion: the combined result first, then each photo (or its error)."""
    items = analyse_many(holder(), uploads, method, preview=True, deadline=deadline)
    failed = none_analysed(items)
    if failed is not None:
        raise failed
    combined = combine_predictions([i.analysis.prediction for i in items if i.analysis is not None],
                                   holder().get().policy)
    photos = [{"name": i.name, "error": i.error(),
               "context": _result_context(i.analysis) if i.analysis is not None else None} for i in items]
    return render_template("results.html", combined=combined, photos=photos, method=method,
                           decision_help=modelcard.DECISION_HELP, ood_message=OOD_MESSAGE,
                           n_rejected=sum(i.analysis is None for i in items))


@bp.get("/model")
def model_card():
    """The served bundle's model card: the same sections as ``skinlesion model-card``."""
    predictor = holder().get()
    return render_template("model_card.html", card=modelcard.card(predictor.meta, predictor.bundle.path))

"""One error format per audience: JSON under /api/ (and /healthz), a friendly page elsewhere."""
from __future__ import annotations

from flask import Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from skinlesion.data.intake import MAX_BYTES, ImageRejected
from skinlesion.serving.budget import BudgetExceeded
from webapp.analysis import UserError, public_text
from webapp.model import ModelUnavailable

TOO_LARGE_MESSAGE = (
    f"The upload is too large. The photos sent together may be at most {MAX_BYTES // 2**20} MB in all; "
    "send fewer photos at a time, or smaller or more compressed copies."
)
# Werkzeug answers 413 as well when a request within the size limit has too many form parts or a
# form field (not a file) over MAX_FORM_MEMORY_SIZE: not the image's fault, so not its message.
FORM_TOO_LARGE_MESSAGE = (
    "The form sent too many fields, or a field too large for this server. Send the image as a file "
    "in the multipart/form-data field 'image'."
)
INTERNAL_MESSAGE = (
    "Something went wrong on our side while handling this request. Nothing was stored; "
    "please try again, and report the problem if it keeps happening."
)
# Plain sentences for the HTTP errors a person can run into without a bug on our side.
_HTTP_MESSAGES = {
    400: "The request was not understood. Go back and try again.",
    404: "There is no page at this address.",
    405: "This address does not accept that kind of request.",
    413: TOO_LARGE_MESSAGE,
}


def wants_json() -> bool:
    """API clients get JSON errors; people using the pages get HTML."""
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


def error_response(status: int, message: str):
    """The error as ``{"error": {"status", "message"}}`` or as the error page."""
    if wants_json():
        response = jsonify(error={"status": status, "message": message})
    else:
        response = render_template("error.html", status=status, message=message)
    return response, status


def _http_error(exc: HTTPException):
    status = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        length, limit = request.content_length, current_app.config.get("MAX_CONTENT_LENGTH")
        within = length is not None and limit is not None and length <= limit
        message = FORM_TOO_LARGE_MESSAGE if within else TOO_LARGE_MESSAGE
    else:
        message = _HTTP_MESSAGES.get(status) or exc.description or exc.name
    response, status = error_response(status, message)
    response = current_app.make_response((response, status))
    # Keep the exception's own headers (a 405's Allow, which HTTP requires), not its HTML body's type.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _model_unavailable(exc: ModelUnavailable):
    # Logged in full for the operator; the client gets the same sentence without this server's layout.
    current_app.logger.warning("model unavailable: %s", exc.message)
    return error_response(503, public_text(exc.message))


def _over_budget(exc: BudgetExceeded):
    # 503, not 504: this server (not a gateway) ran out of the time it allows itself.
    message = (
        f"{exc.what} did not finish within this server's {exc.budget_s:g} s time budget, so there is "
        "no result. Grad-CAM takes well under a second: choose it, or try again when the server is less busy."
    )
    response, status = error_response(503, message)
    response = current_app.make_response((response, status))
    response.headers["Retry-After"] = "30"
    return response


def _unexpected(exc: Exception):
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, INTERNAL_MESSAGE)


def register_error_handlers(app: Flask) -> None:
    """Map every failure (refused upload, no model, HTTP error, bug) to one response format."""
    app.register_error_handler(ImageRejected, lambda e: error_response(e.status, e.message))
    app.register_error_handler(UserError, lambda e: error_response(e.status, e.message))
    app.register_error_handler(ModelUnavailable, _model_unavailable)
    app.register_error_handler(BudgetExceeded, _over_budget)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)

"""Request-independent pieces shared by the HTML views and the JSON API.

Uploads stay in memory from the socket to the response: they are decoded by
:mod:`skinlesion.data.intake`, shown back as ``data:`` URIs, and never written to disk.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skinlesion.config import project_root
from skinlesion.data.intake import MAX_BYTES, ImageRejected
from skinlesion.serving.budget import Deadline
from skinlesion.serving.combine import repeat_refusal, repeated_photos
from skinlesion.serving.explanation import ExplanationCaption, explained_model_text, explanation_caption
from skinlesion.serving.inference import Prediction, Predictor
from skinlesion.serving.presentation import MAX_PHOTOS, method_label, preview_jpeg
from webapp.model import ModelHolder

PREVIEW_MAX_SIDE = 640
# Photos of one lesion analysed together per request (the multipart field ``image`` repeated).
MAX_IMAGES = MAX_PHOTOS
# A path inside a sentence that may lead out of the project: absolute ("/" not preceded by a word,
# ".", ":" or "/", so not "MB/s" or a URL; nor by "…", so a text already cut stays as it is) or
# starting with "../" (how display_path shows those).
_OUTWARD_PATH = re.compile(r"(?<![\w.:/…])(?:/|(?:\.\./)+)[\w.\-]+(?:/[\w.\-]+)*/?")


class UserError(Exception):
    """A request we refuse, with an HTTP status and a sentence for the person who sent it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Analysis:
    """One analysed upload: the prediction plus the images to show."""

    prediction: Prediction
    method: str | None
    overlay_png: bytes | None
    preview_jpeg: bytes | None
    # How to word the heat map for this decision, and which model (members) it explains.
    caption: ExplanationCaption | None = None
    explained_model: str = ""


def check_method(name: str, allowed: Sequence[str]) -> str:
    """``name`` if it is an explanation method we offer; else a 400 that lists the valid ones."""
    if name not in allowed:
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise UserError(400, f"Unknown explanation method {shown!r}. Choose one of: {', '.join(allowed)}.")
    return name


def _inline_copy(form: Mapping[str, str]) -> bytes:
    try:
        return base64.b64decode(form["image_b64"], validate=True)
    except (binascii.Error, ValueError):
        raise UserError(400, "The image carried by the page is damaged; upload the file again.") from None


def uploaded_files(files: Any, form: Mapping[str, str], *, allow_inline: bool = False,
                   limit: int = MAX_IMAGES) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file in the multipart field ``image``: 1 to ``limit`` photos of one lesion.

    Every part is an upload, named or not (an API client need not send a file name), except an
    empty part with no name, which is what a browser sends when no file was chosen. With
    ``allow_inline`` (the result page's "explain again" form) a base64 copy of an earlier upload
    in the form field ``image_b64`` stands in when no file is attached. More than ``limit`` photos
    is a 413 that says how many are allowed. ``files`` is Werkzeug's MultiDict.
    """
    parts = files.getlist("image") if hasattr(files, "getlist") else ([files["image"]] if "image" in files else [])
    uploads = []
    for number, part in enumerate(parts, 1):
        # One byte over the limit is enough for intake to refuse that file with its own 413.
        data = part.read(MAX_BYTES + 1)
        if part.filename or data:
            uploads.append((part.filename or f"image {number}", data))
    if len(uploads) > limit:
        raise UserError(413, f"Too many images: {len(uploads)} files were sent, and at most {limit} photos of one "
                             f"lesion are analysed together. Send {limit} or fewer.")
    if uploads:
        return uploads
    if allow_inline and form.get("image_b64"):
        return [("image", _inline_copy(form))]
    if parts:
        raise UserError(400, "No file was chosen. Choose a dermoscopic image (JPEG, PNG, BMP, TIFF or WebP) and try again.")
    raise UserError(400, "No image was sent. Send the file in the multipart/form-data field 'image'.")


def _public_path(path: str) -> str:
    root = project_root().resolve()
    p = (root / path).resolve()  # an absolute path replaces root
    # Path() drops a trailing slash, which a hint such as "models/<name>" needs.
    slash = "/" if path.endswith("/") else ""
    try:
        return p.relative_to(root).as_posix() + slash
    except ValueError:
        return f"…/{p.name}{slash}" if p.name else "…"


def public_text(text: str) -> str:
    """``text`` with every path that leads out of the project cut to its last part (an absolute
    one inside it made relative), so what clients see does not carry this server's layout."""
    return _OUTWARD_PATH.sub(lambda m: _public_path(m.group(0)), text)


def public_json(value: Any) -> Any:
    """``value`` (JSON-like) with :func:`public_text` applied to every string in it."""
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, Mapping):
        return {k: public_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_json(v) for v in value]
    return value


@dataclass
class Item:
    """One photo of a several-photo request: its analysis, or why it has none."""

    name: str
    analysis: Analysis | None = None
    status: int | None = None
    message: str | None = None

    def error(self) -> dict[str, Any] | None:
        """``{"status", "message"}`` when this photo was refused, else None."""
        return None if self.analysis is not None else {"status": self.status, "message": self.message}


def analyse_many(holder: ModelHolder, uploads: Sequence[tuple[str, bytes]], method: str | None, *,
                 preview: bool = False, deadline: Deadline | None = None) -> list[Item]:
    """Analyse each photo; a refused file becomes that photo's error and the others are still scored.

    One ``deadline`` covers the request's slow explanations together; when it passes the whole
    request fails (:class:`~skinlesion.serving.budget.BudgetExceeded`).
    """
    repeats = repeated_photos([data for _, data in uploads])
    items = []
    for k, (name, data) in enumerate(uploads):
        if k in repeats:
            first = items[repeats[k]]
            status, message = repeat_refusal(first.name, None if first.analysis else (first.status, first.message))
            items.append(Item(name, status=status, message=message))
            continue
        try:
            items.append(Item(name, analyse(holder, data, method, preview=preview, deadline=deadline)))
        except ImageRejected as exc:
            items.append(Item(name, status=exc.status, message=exc.message))
    return items


def none_analysed(items: Sequence[Item]) -> UserError | None:
    """The error to answer with when no photo could be read at all (None when some could)."""
    if any(i.analysis is not None for i in items):
        return None
    statuses = {i.status for i in items}
    status = statuses.pop() if len(statuses) == 1 else 400
    details = "; ".join(f"{i.name}: {i.message}" for i in items)
    return UserError(int(status or 400), f"None of the {len(items)} images could be analysed. {details}")


def explain_deadline(method: str | None, config: Mapping[str, Any]) -> Deadline | None:
    """A deadline ``EXPLAIN_TIME_BUDGET_S`` from now when ``method`` is one of the slow
    ``EXPLAIN_BUDGETED_METHODS``; None (no limit) otherwise. Start it when the request starts."""
    if method is None or method not in config["EXPLAIN_BUDGETED_METHODS"]:
        return None
    return Deadline(float(config["EXPLAIN_TIME_BUDGET_S"]))


def analyse(holder: ModelHolder, data: bytes, method: str | None, *, preview: bool = False,
            deadline: Deadline | None = None) -> Analysis:
    """Predict (and, with ``method``, explain) one upload; intake errors propagate as ImageRejected.

    With ``deadline`` the explanation runs under it and raises
    :class:`~skinlesion.serving.budget.BudgetExceeded` when it passes (a 503 for the client).
    """
    def explain(predictor: Predictor) -> bytes:
        return predictor.explain(data, method, prediction=prediction)[1]

    with holder.inference() as predictor:
        prediction = predictor.predict(data)
        # An image the gate set aside gets no decision, so no map of "malignant evidence" either.
        method = method if prediction.assessed else None
        overlay = explain(predictor) if method and deadline is None else None
    if method and deadline is not None:
        overlay = holder.within(deadline, f"The {method_label(method)} heat map", explain)
    caption = explanation_caption(prediction.decision, method) if method else None
    explained = explained_model_text(predictor.name, predictor.member_run_ids, predictor.member_weights())
    return Analysis(prediction, method, overlay, preview_jpeg(data, PREVIEW_MAX_SIDE) if preview else None,
                    caption, explained)


def percent(value: float, digits: int = 1) -> str:
    """0.4203 -> "42.0%"."""
    return f"{100.0 * float(value):.{digits}f}%"

"""Request-independent pieces shared by the HTML views and the JSON API.

Uploads stay in memory from the socket to the response: they are decoded by
:mod:`skinlesion.data.intake`, shown back as ``data:`` URIs, and never written to disk.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skinlesion.data.intake import MAX_BYTES
from skinlesion.serving.inference import Prediction
from skinlesion.serving.presentation import preview_jpeg
from webapp.model import ModelHolder

PREVIEW_MAX_SIDE = 640


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


def check_method(name: str, allowed: Sequence[str]) -> str:
    """``name`` if it is an explanation method we offer; else a 400 that lists the valid ones."""
    if name not in allowed:
        raise UserError(400, f"Unknown explanation method {name!r}. Choose one of: {', '.join(allowed)}.")
    return name


def uploaded_bytes(files: Mapping[str, Any], form: Mapping[str, str], *, allow_inline: bool = False) -> bytes:
    """The bytes of the multipart file field ``image``.

    With ``allow_inline`` (the result page's "explain again" form) a base64 copy of an earlier
    upload in the form field ``image_b64`` is accepted when no new file is attached.
    """
    upload = files.get("image")
    if upload is not None and upload.filename:
        # One byte over the limit is enough for intake to answer 413 with its own message.
        return upload.read(MAX_BYTES + 1)
    if allow_inline and form.get("image_b64"):
        try:
            return base64.b64decode(form["image_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise UserError(400, "The image carried by the page is damaged; upload the file again.") from None
    if upload is not None:
        # A form submitted without choosing a file still sends an empty part with no name.
        data = upload.read(MAX_BYTES + 1)
        if data:
            return data
        raise UserError(400, "No file was chosen. Choose a dermoscopic image (JPEG, PNG, BMP, TIFF or WebP) and try again.")
    raise UserError(400, "No image was sent. Send the file in the multipart/form-data field 'image'.")


def analyse(holder: ModelHolder, data: bytes, method: str | None, *, preview: bool = False) -> Analysis:
    """Predict (and, with ``method``, explain) one upload; intake errors propagate as ImageRejected."""
    with holder.inference() as predictor:
        prediction = predictor.predict(data)
        overlay = predictor.explain(data, method)[1] if method else None
    return Analysis(prediction, method, overlay, preview_jpeg(data, PREVIEW_MAX_SIDE) if preview else None)


def percent(value: float, digits: int = 1) -> str:
    """0.4203 -> "42.0%"."""
    return f"{100.0 * float(value):.{digits}f}%"


def data_uri(mime: str, data: bytes) -> str:
    """``data:`` URI for embedding bytes in a page (images are never stored server-side)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

"""How results are shown, shared by the web app and the Voila dashboard: explanation method
names and the display copy of an upload."""
from __future__ import annotations

import base64
import html
import io
import re

from skinlesion.data.intake import read_image

# Photos of one lesion analysed together and combined (skinlesion.serving.combine), per request in
# the web app and per upload in the dashboard.
MAX_PHOTOS = 8

METHOD_LABELS: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "smoothgrad": "SmoothGrad",
}


# The inline markdown that messages and the model card's sentences use; applied after HTML
# escaping, so the text can never inject markup of its own.
_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
)


def inline_html(text: str) -> str:
    """Escaped ``text`` with `code`, **bold** and *italic* turned into HTML."""
    out = html.escape(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def data_uri(mime: str, data: bytes) -> str:
    """``data:`` URI for embedding bytes in a page (images are never stored server-side)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def method_label(method: str | None) -> str:
    """Human name of an explanation method ("gradcam++" -> "Grad-CAM++"); unknown names as given."""
    return METHOD_LABELS.get(method or "", method or "none")


def preview_jpeg(data: bytes, max_side: int) -> bytes:
    """A display copy of an accepted upload: upright, RGB, at most ``max_side`` px, as JPEG.

    Re-encoding (rather than echoing the bytes) lets browsers show TIFF and BMP uploads, keeps
    pages small for phone photos, and never sends back anything appended to the image. The
    model always gets the original bytes; this copy is only for the eye.
    """
    img = read_image(data)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()

"""The Voila dashboard's logic: pick a model bundle, upload a photo, see the result and a heat map.

``dashboards/lesion_uploader.ipynb`` only calls :func:`build_dashboard`; everything it shows is
computed here so it can be tested without a browser. The result text is
:attr:`skinlesion.serving.inference.Prediction.summary`, the same words the web app and the CLI print,
and images pass through :mod:`skinlesion.data.intake` (inside :class:`~skinlesion.serving.inference.Predictor`)
exactly as they do there.

Pure helpers (no widgets): :func:`list_bundles`, :func:`handle_upload`, :func:`render_result_html`,
:func:`no_model_message`. Display: :class:`LesionDashboard`.
"""
from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from skinlesion import DISCLAIMER, config
from skinlesion.bundle.format import BUNDLE_FILE, BundleError, parse_meta
from skinlesion.data.intake import ImageRejected
from skinlesion.explain.common import METHODS
from skinlesion.serving.inference import Prediction, Predictor
from skinlesion.serving.presentation import METHOD_LABELS, preview_jpeg

__all__ = [
    "BundleChoice",
    "LesionDashboard",
    "UploadResult",
    "build_dashboard",
    "error_html",
    "handle_upload",
    "list_bundles",
    "no_model_message",
    "render_result_html",
    "upload_bytes",
]

log = logging.getLogger(__name__)

# Shown beside the uploaded photo; the full file goes to the model, this is only for the eye.
PREVIEW_SIDE = 512
IMAGE_WIDTH = "320px"

_DECISION_COLOURS = {
    "suspicious": "#b71c1c",
    "benign-appearing": "#1b5e20",
}
_UNCERTAIN_COLOUR = "#e65100"
_ERROR_STYLE = "border:2px solid #b71c1c;background:#fdecea;color:#5f2120;padding:8px 12px;border-radius:4px;"
_NOTICE_STYLE = "border:2px solid #e65100;background:#fff3e0;color:#3e2723;padding:8px 12px;border-radius:4px;"


# ------------------------------------------------------------------------------ bundles


@dataclass(frozen=True)
class BundleChoice:
    """One entry of the model chooser."""

    path: Path
    label: str
    created: str = ""


def _describe_bundle(path: Path, note: str = "") -> BundleChoice:
    """A chooser entry from bundle.json alone (checksums are verified later, when it loads)."""
    try:
        raw = json.loads((path / BUNDLE_FILE).read_text())
        meta = parse_meta(raw, path) if isinstance(raw, dict) else None
    except (OSError, json.JSONDecodeError, BundleError):
        meta = None
    if meta is None:
        label = f"{path.name} (no readable {BUNDLE_FILE})"
        return BundleChoice(path, label + (f" — {note}" if note else ""))
    created = meta.created or ""
    parts = [meta.run_id]
    details = [meta.backbone] if meta.backbone else []
    if meta.input_size:
        details.append(f"{meta.input_size}px")
    if created:
        details.append(created[:16].replace("T", " "))
    if details:
        parts.append("(" + ", ".join(details) + ")")
    if meta.synthetic:
        parts.append("[SYNTHETIC]")
    if note:
        parts.append(f"— {note}")
    return BundleChoice(path, " ".join(parts), created)


def list_bundles(
    models_dir: str | os.PathLike[str] | None = None, model: str | os.PathLike[str] | None = None
) -> list[BundleChoice]:
    """Model bundles to offer, default first.

    ``model`` (default: the ``SKINLESION_MODEL`` environment variable; pass ``""`` for none)
    comes first, because :meth:`Predictor.from_bundle` prefers it too; then every bundle under
    ``models_dir`` (default :func:`skinlesion.config.models_dir`), newest first by the
    ``created`` time in bundle.json. Hidden (``.tmp-*``) folders are skipped.
    """
    if model is None:
        model = config.model_env() or ""
    root = Path(models_dir) if models_dir else config.models_dir()
    found: list[BundleChoice] = []
    if root.is_dir():
        for meta_file in root.glob(f"*/{BUNDLE_FILE}"):
            if not meta_file.parent.name.startswith("."):
                found.append(_describe_bundle(meta_file.parent))
    # Same ordering key as skinlesion.bundle.format.latest_bundle, so "newest" means the same thing.
    found.sort(key=lambda c: (c.created, c.path), reverse=True)
    if not model:
        return found
    explicit = Path(model).expanduser()
    if explicit.name == BUNDLE_FILE:
        explicit = explicit.parent
    rest = [c for c in found if c.path.resolve() != explicit.resolve()]
    return [_describe_bundle(explicit, note="SKINLESION_MODEL")] + rest


def no_model_message(models_dir: str | os.PathLike[str] | None = None) -> str:
    """What to do when there is no model bundle at all."""
    root = Path(models_dir) if models_dir else config.models_dir()
    return (
        f"No trained model found in {root}. Train one with `make run` (or `skinlesion train`), "
        "then reload this page; or set SKINLESION_MODEL to a bundle folder before starting the "
        "dashboard."
    )


# ------------------------------------------------------------------------------ one upload


@dataclass
class UploadResult:
    """Everything the dashboard shows for one upload (``error`` set means nothing else is)."""

    name: str = ""
    method: str = "gradcam"
    prediction: Prediction | None = None
    image: bytes | None = None          # JPEG preview of the upload, for display only
    overlay: bytes | None = None        # PNG heat map over the model's input square
    explain_error: str | None = None    # the prediction stands even if the heat map failed
    error: str | None = None            # why there is no result (refused image, no model...)
    status: int | None = None           # ImageRejected.status when the image was refused
    input_size: int | None = None       # side of the square the model (and the heat map) sees

    @property
    def ok(self) -> bool:
        """True when there is a prediction to show."""
        return self.error is None and self.prediction is not None

    @property
    def summary(self) -> str:
        return self.prediction.summary if self.prediction else ""

    @property
    def decision(self) -> str:
        return self.prediction.decision if self.prediction else ""


def upload_bytes(value: Any) -> tuple[str, bytes] | None:
    """(file name, bytes) of the first file in an ipywidgets 8 ``FileUpload.value``, or ``None``.

    ipywidgets 8 gives a tuple of dicts whose ``content`` is a ``memoryview``; it is copied to
    ``bytes`` because the intake and the model keep no reference to the widget's buffer.
    """
    if not value:
        return None
    first = value[0]
    return str(first.get("name", "upload")), bytes(first["content"])


def handle_upload(
    predictor: Predictor, data: bytes | bytearray | memoryview, method: str = "gradcam", *, name: str = ""
) -> UploadResult:
    """Predict and explain one uploaded file; a refused image becomes ``UploadResult.error``.

    The bytes go to :meth:`Predictor.predict` and :meth:`Predictor.explain` unchanged, so the
    result is the one the web app gives for the same file.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown explanation method {method!r}; choose one of {METHODS}.")
    data = bytes(data)
    result = UploadResult(name=name, method=method, input_size=predictor.input_size)
    try:
        result.image = preview_jpeg(data, PREVIEW_SIDE)
        result.prediction = predictor.predict(data)
    except ImageRejected as exc:
        result.image = None
        result.error, result.status = exc.message, exc.status
        return result
    try:
        _, result.overlay = predictor.explain(data, method)
    except Exception as exc:
        # The heat map is an aid; whatever goes wrong in it, the prediction above still stands
        # and is shown, with the reason the map is missing.
        log.exception("explanation %s failed", method)
        result.explain_error = f"The {METHOD_LABELS[method]} heat map could not be computed: {exc}"
    return result


def _box(title: str, message: str, css_class: str, style: str) -> str:
    return (
        f'<div class="{css_class}" style="{style}"><b>{html.escape(title)}</b> '
        f'<span class="skinlesion-message">{html.escape(message, quote=False)}</span></div>'
    )


def error_html(title: str, message: str) -> str:
    """A red box for anything that stopped the analysis."""
    return _box(title, message, "skinlesion-error", _ERROR_STYLE)


def render_result_html(result: UploadResult) -> str:
    """The text part of a result as HTML: decision badge and summary, or the error box."""
    if result.error is not None:
        title = "Image not accepted:" if result.status is not None else "No result:"
        return error_html(title, result.error)
    if result.prediction is None:
        return ""
    p = result.prediction
    colour = _DECISION_COLOURS.get(p.decision, _UNCERTAIN_COLOUR)
    parts = [
        f'<div style="font-size:1.3em;margin:4px 0">Decision: <span class="skinlesion-decision" '
        f'style="color:#fff;background:{colour};padding:2px 10px;border-radius:4px">'
        f"{html.escape(p.decision, quote=False)}</span> "
        f'<span style="color:#555;font-size:0.8em">P(malignant) = {100 * p.probability:.1f}%</span></div>',
        # quote=False leaves apostrophes alone, so the HTML holds Prediction.summary verbatim
        # (the browser shows the same words either way; this keeps the text greppable).
        f'<p class="skinlesion-summary" style="max-width:60em">{html.escape(p.summary, quote=False)}</p>',
    ]
    if result.explain_error:
        parts.append(error_html("Heat map unavailable:", result.explain_error))
    return "\n".join(parts)


# ------------------------------------------------------------------------------ widgets


def _header_html() -> str:
    """The notice, always on screen; its first sentence is the headline."""
    headline, _, rest = DISCLAIMER.partition(". ")
    return (
        f'<div class="skinlesion-notice" style="{_NOTICE_STYLE}"><b>{html.escape(headline)}.</b> '
        f"{html.escape(rest, quote=False)}</div>"
    )


class LesionDashboard(widgets.VBox):
    """The dashboard: model chooser, method selector, upload, reset, result and images.

    Uploads are handled in an ``observe`` callback on ``upload.value``; models load on the first
    upload that needs them and are kept, so switching back and forth costs nothing.
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        predictor_factory: Callable[[Path], Predictor] = Predictor.from_bundle,
        model: str | os.PathLike[str] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir) if models_dir else config.models_dir()
        self.predictor_factory = predictor_factory
        self.choices = list_bundles(self.models_dir, model)
        self.last_result: UploadResult | None = None
        self._predictors: dict[Path, Predictor] = {}
        self._current: tuple[str, bytes] | None = None

        self.header = widgets.HTML(_header_html())
        self.bundle = widgets.Dropdown(
            options=[(c.label, str(c.path)) for c in self.choices] or [("(no trained model)", "")],
            description="Model:",
            disabled=not self.choices,
            layout=widgets.Layout(width="48em", max_width="100%"),
            style={"description_width": "6em"},
        )
        self.method = widgets.Dropdown(
            options=[(METHOD_LABELS[m], m) for m in METHODS],
            value=METHODS[0],
            description="Heat map:",
            layout=widgets.Layout(width="20em"),
            style={"description_width": "6em"},
        )
        self.upload = widgets.FileUpload(
            accept="image/*,.jpg,.jpeg,.png,.bmp,.tif,.tiff,.webp",
            multiple=False,
            description="Upload image",
            disabled=not self.choices,
            button_style="primary",
        )
        self.reset_button = widgets.Button(description="Reset", icon="refresh", tooltip="Clear the upload and the result")
        self.status = widgets.HTML("")
        self.result = widgets.HTML("")
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.overlay = widgets.Image(format="png", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.image_caption = widgets.HTML("<b>Your image</b>")
        self.overlay_caption = widgets.HTML("")
        self.images = widgets.HBox(
            [
                widgets.VBox([self.image_caption, self.image], layout=widgets.Layout(margin="0 16px 0 0")),
                widgets.VBox([self.overlay_caption, self.overlay]).add_class("skinlesion-overlay"),
            ],
            layout=widgets.Layout(display="none", flex_flow="row wrap"),
        )

        self.upload.observe(self._on_upload, names="value")
        self.method.observe(self._on_option_change, names="value")
        self.bundle.observe(self._on_option_change, names="value")
        self.reset_button.on_click(lambda _: self.reset())

        super().__init__(
            [
                self.header,
                self.bundle,
                self.method,
                widgets.HBox([self.upload, self.reset_button]),
                self.status,
                self.result,
                self.images,
            ],
            layout=widgets.Layout(padding="8px"),
        )
        self.add_class("skinlesion-dashboard")
        self._idle_status()

    # -- state -------------------------------------------------------------------------------
    @property
    def has_model(self) -> bool:
        """False when no bundle was found (uploads are disabled and the how-to-train note shows)."""
        return bool(self.choices)

    def _idle_status(self) -> None:
        if self.has_model:
            self.status.value = "Choose a photo with <b>Upload image</b>; it is analysed as soon as it arrives."
        else:
            self.status.value = error_html("No model available:", no_model_message(self.models_dir))

    def _predictor(self) -> Predictor:
        path = Path(self.bundle.value)
        if path not in self._predictors:
            self._predictors[path] = self.predictor_factory(path)
        return self._predictors[path]

    # -- actions -----------------------------------------------------------------------------
    def process(self, data: bytes | bytearray | memoryview, name: str = "upload") -> UploadResult:
        """Analyse one file and show the outcome (the upload callback calls this)."""
        self._current = (name, bytes(data))
        return self._analyse()

    def _analyse(self) -> UploadResult:
        assert self._current is not None
        name, data = self._current
        method = self.method.value
        if not self.has_model:
            result = UploadResult(name=name, method=method, error=no_model_message(self.models_dir))
        else:
            self.status.value = (
                f"Analysing <i>{html.escape(name)}</i> with {html.escape(METHOD_LABELS[method])}… "
                "(the first image also loads the model)"
            )
            try:
                predictor = self._predictor()
            except Exception as exc:
                # BundleError (missing, corrupt, checksum mismatch) or a Keras load failure:
                # either way the person must see why there is no result, not a silent log line.
                log.exception("loading %s failed", self.bundle.value)
                result = UploadResult(name=name, method=method,
                                      error=f"Could not load the model {self.bundle.value}: {exc}")
            else:
                try:
                    result = handle_upload(predictor, data, method, name=name)
                except Exception as exc:
                    log.exception("analysing %s failed", name)
                    result = UploadResult(name=name, method=method,
                                          error=f"Analysis failed unexpectedly ({type(exc).__name__}: {exc}).")
        self.show(result)
        return result

    def show(self, result: UploadResult) -> None:
        """Put ``result`` on screen."""
        self.last_result = result
        self.result.value = render_result_html(result)
        if result.ok:
            self.status.value = f"Result for <i>{html.escape(result.name)}</i>:"
            self.image.value = result.image or b""
            self.overlay.value = result.overlay or b""
            size = result.input_size
            self.overlay_caption.value = (
                f"<b>{html.escape(METHOD_LABELS[result.method])} heat map</b> "
                f"<span style='color:#555'>(red = raised P(malignant); the model sees the centre "
                f"square at {size}x{size} px)</span>"
            )
            self.overlay.layout.display = "" if result.overlay else "none"
            self.images.layout.display = "flex"
        else:
            # The red box in ``result`` says it all; a stale "Analysing..." must not stay.
            self.status.value = ""
            self.images.layout.display = "none"

    def reset(self) -> None:
        """Forget the upload and clear the result."""
        self._current = None
        self.last_result = None
        self.images.layout.display = "none"
        self.upload.value = ()
        self.result.value = ""
        self.image.value = b""
        self.overlay.value = b""
        self.overlay_caption.value = ""
        self._idle_status()

    # -- callbacks ---------------------------------------------------------------------------
    def _on_upload(self, change: dict[str, Any]) -> None:
        got = upload_bytes(change["new"])
        if got is not None:  # an empty value is our own reset
            self.process(got[1], got[0])

    def _on_option_change(self, change: dict[str, Any]) -> None:
        # A different model or heat-map method re-analyses the photo already on screen.
        if self._current is not None:
            self._analyse()


def build_dashboard(
    models_dir: str | os.PathLike[str] | None = None,
    predictor_factory: Callable[[Path], Predictor] = Predictor.from_bundle,
    model: str | os.PathLike[str] | None = None,
) -> LesionDashboard:
    """The dashboard widget (display it as a cell's last expression).

    ``models_dir``: where to look for bundles (default ``models/`` or ``SKINLESION_MODELS_DIR``);
    ``model``: a bundle folder offered first and preselected (default ``SKINLESION_MODEL``;
    ``""`` for none); ``predictor_factory``: turns a bundle path into a Predictor (tests
    pass a cached one).
    """
    return LesionDashboard(models_dir=models_dir, predictor_factory=predictor_factory, model=model)

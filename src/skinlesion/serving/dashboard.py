"""The Voila dashboard's logic: pick a model bundle, upload a photo, see the result and a heat map.

``dashboards/lesion_uploader.ipynb`` only calls :func:`build_dashboard`; everything it shows is
computed here so it can be tested without a browser. The result text is
:attr:`skinlesion.serving.inference.Prediction.summary`, the same words the web app and the CLI print,
and images pass through :mod:`skinlesion.data.intake` (inside :class:`~skinlesion.serving.inference.Predictor`)
exactly as they do there.

Pure helpers (no widgets): :func:`list_bundles`, :func:`handle_upload`, :func:`render_result_html`,
:func:`no_model_message`; for several photos of one lesion (up to ``MAX_PHOTOS`` in one upload)
:func:`upload_files`, :func:`handle_uploads` and :func:`render_group_html`, which combine them with
:func:`skinlesion.serving.combine.combine_predictions` as the web app does. Display: :class:`LesionDashboard`.
"""
from __future__ import annotations

import html
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from skinlesion import DISCLAIMER, config
from skinlesion.bundle.format import BUNDLE_FILE, BundleError, parse_meta, resolve_default_bundle
from skinlesion.data.intake import ImageRejected
from skinlesion.explain.common import METHODS
from skinlesion.serving.budget import BudgetExceeded, BudgetRunner, Deadline
from skinlesion.serving.combine import combine_predictions, repeat_refusal, repeated_photos
from skinlesion.serving.explanation import ExplanationCaption, explanation_caption
from skinlesion.serving.inference import Prediction, Predictor, band_words
from skinlesion.serving.presentation import MAX_PHOTOS, METHOD_LABELS, data_uri, inline_html, preview_jpeg

__all__ = [
    "BundleChoice",
    "ExplainBudget",
    "LesionDashboard",
    "UploadResult",
    "build_dashboard",
    "error_html",
    "GroupResult",
    "handle_upload",
    "handle_uploads",
    "list_bundles",
    "no_model_message",
    "render_result_html",
    "render_group_html",
    "upload_bytes",
    "upload_files",
]

log = logging.getLogger(__name__)

# Shown beside the uploaded photo; the full file goes to the model, this is only for the eye.
PREVIEW_SIDE = 512
IMAGE_WIDTH = "320px"

_DECISION_COLOURS = {
    "suspicious": "#b71c1c",
    "benign-appearing": "#1b5e20",
}
_UNCERTAIN_COLOUR = "#bf360c"  # white text on it: 5.6:1 (WCAG AA); the brighter #e65100 was 3.8:1
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
    """Model bundles to offer, the default first and labelled "default".

    The default is ``model`` when given (a bundle folder; ``""`` for none), else
    :func:`~skinlesion.bundle.format.resolve_default_bundle` with ``models_dir``
    (``SKINLESION_MODEL``, else ``<models_dir>/<config.DEFAULT_MODEL>``): the bundle the web app and
    the CLI serve too. A default that is not trained yet is not offered. Then every other bundle
    under ``models_dir`` (default :func:`skinlesion.config.models_dir`), newest first by the
    ``created`` time in bundle.json. Hidden (``.tmp-*``) folders are skipped.
    """
    root = Path(models_dir) if models_dir else config.models_dir()
    found: list[BundleChoice] = []
    if root.is_dir():
        for meta_file in root.glob(f"*/{BUNDLE_FILE}"):
            if not meta_file.parent.name.startswith("."):
                found.append(_describe_bundle(meta_file.parent))
    found.sort(key=lambda c: (c.created, c.path), reverse=True)
    if model == "":
        return found
    default = Path(model).expanduser() if model is not None else resolve_default_bundle(root, must_exist=False)
    if default.name == BUNDLE_FILE:
        default = default.parent
    from_env = config.model_env() is not None
    if not from_env and model is None and not (default / BUNDLE_FILE).is_file():
        return found  # the default model is not trained yet: offer what there is, none marked default
    rest = [c for c in found if c.path.resolve() != default.resolve()]
    return [_describe_bundle(default, note="default (SKINLESION_MODEL)" if from_env else "default")] + rest


def no_model_message(models_dir: str | os.PathLike[str] | None = None) -> str:
    """What to do when there is no model bundle at all."""
    root = Path(models_dir) if models_dir else config.models_dir()
    return (
        f"No trained model found in {config.display_path(root)}. Train the default model with `make run` "
        "(or `skinlesion run`), "
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
    caption: ExplanationCaption | None = None  # how to word the heat map for this decision
    explained_model: str = ""           # the model (ensemble members) the heat map explains

    @property
    def ok(self) -> bool:
        """True when there is a prediction to show."""
        return self.error is None and self.prediction is not None

    @property
    def assessed(self) -> bool:
        """True when there is a decision (and so a heat map) to show: read, and not set aside by the gate."""
        return self.ok and self.prediction is not None and self.prediction.assessed

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


@dataclass
class ExplainBudget:
    """Slow explanations (``config.EXPLAIN_BUDGETED_METHODS``) under a time budget, as the web app
    runs them (:mod:`skinlesion.serving.budget`): the explanation runs in ``runner``'s thread,
    holding ``lock``; predictions take the lock too, so a computation abandoned when the budget ran
    out keeps the model to itself until it ends, and the next upload waits for it."""

    budget_s: float | None = None  # None: SKINLESION_EXPLAIN_TIME_BUDGET_S, read at each upload
    runner: BudgetRunner = field(default_factory=lambda: BudgetRunner("dashboard-explain"))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deadline(self, method: str) -> Deadline | None:
        """A deadline ``budget_s`` from now for a budgeted method (one upload shares it), else None.
        A malformed SKINLESION_EXPLAIN_TIME_BUDGET_S raises ValueError naming it."""
        if method not in config.EXPLAIN_BUDGETED_METHODS:
            return None
        return Deadline(self.budget_s if self.budget_s is not None else config.explain_time_budget_s())


def _require_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown explanation method {method!r}; choose one of {METHODS}.")


def _model_lock(budget: ExplainBudget | None) -> AbstractContextManager[Any]:
    """The budget's model lock (nothing without a budget)."""
    return budget.lock if budget is not None else nullcontext()


def _predict_upload(predictor: Predictor, data: bytes, method: str, name: str,
                    budget: ExplainBudget | None) -> UploadResult:
    """The prediction part of :func:`handle_upload` (a refused image becomes ``error``)."""
    result = UploadResult(name=name, method=method, input_size=predictor.input_size)
    try:
        result.image = preview_jpeg(data, PREVIEW_SIDE)
        with _model_lock(budget):
            result.prediction = predictor.predict(data)
    except ImageRejected as exc:
        result.image = None
        result.error, result.status = exc.message, exc.status
    return result


def _explain_upload(result: UploadResult, predictor: Predictor, data: bytes,
                    budget: ExplainBudget | None, deadline: Deadline | None) -> None:
    """The heat map of a predicted upload into ``result`` (``explain_error`` says why there is none)."""
    if not result.assessed:
        # Refused, or set aside by the gate: no decision, so no map of "malignant evidence" either.
        return
    method, prediction = result.method, result.prediction
    what = f"The {METHOD_LABELS[method]} heat map"

    def explain():
        with _model_lock(budget):
            return predictor.explain(data, method, prediction=prediction)

    try:
        if budget is None or deadline is None:
            explanation = explain()
        elif deadline.remaining() <= 0:  # spent on earlier photos: do not start (and queue) another
            raise BudgetExceeded(deadline.budget_s, what)
        else:
            explanation = budget.runner.run(explain, deadline, what=what)
        result.overlay, result.caption = explanation.overlay_png, explanation.caption
        result.explained_model = explanation.model_text
    except BudgetExceeded as exc:
        result.explain_error = (f"{exc.what} did not finish within the dashboard's {exc.budget_s:g} s time budget "
                                "(SKINLESION_EXPLAIN_TIME_BUDGET_S), so it is not shown; the prediction above "
                                "stands. Grad-CAM is much quicker (once the unfinished map has ended).")
    except Exception as exc:
        # The heat map is an aid; whatever goes wrong in it, the prediction above still stands
        # and is shown, with the reason the map is missing.
        log.exception("explanation %s failed", method)
        # The exception's own text is for the log (it may hold paths and library internals).
        result.explain_error = (f"The {METHOD_LABELS[method]} heat map could not be computed "
                                f"({type(exc).__name__}); the details are in the server log.")


def _explain_uploads(results: list[UploadResult], predictor: Predictor, datas: list[bytes], method: str,
                     budget: ExplainBudget | None) -> None:
    """Heat maps of the predicted uploads, one deadline for all (a malformed budget setting is
    each map's ``explain_error``; the predictions stand)."""
    try:
        deadline = budget.deadline(method) if budget is not None else None
    except ValueError as exc:
        for r in results:
            if r.assessed:
                r.explain_error = f"The {METHOD_LABELS[method]} heat map was not computed: {exc}"
        return
    for r, data in zip(results, datas):
        _explain_upload(r, predictor, data, budget, deadline)


def handle_upload(
    predictor: Predictor, data: bytes | bytearray | memoryview, method: str = "gradcam", *, name: str = "",
    budget: ExplainBudget | None = None,
) -> UploadResult:
    """Predict and explain one uploaded file; a refused image becomes ``UploadResult.error``.

    The bytes go to :meth:`Predictor.predict` and :meth:`Predictor.explain` unchanged, so the
    result is the one the web app gives for the same file. With ``budget`` the model is used under
    its lock and a slow explanation runs under its time budget: past it, the prediction is shown
    with a note that the heat map did not finish in time.
    """
    _require_method(method)
    data = bytes(data)
    result = _predict_upload(predictor, data, method, name, budget)
    _explain_uploads([result], predictor, [data], method, budget)
    return result


def _failure(exc: Exception) -> str:
    """What to tell the person about a failure: the message of an error they can act on (a
    missing or damaged bundle names it and says what is wrong), else only its kind; the
    exception's own text, with its paths and library internals, is for the log."""
    if isinstance(exc, BundleError | ImageRejected):
        return getattr(exc, "message", None) or str(exc)
    return f"an unexpected {type(exc).__name__}; the details are in the server log."


def _box(title: str, message: str, css_class: str, style: str) -> str:
    return (
        f'<div class="{css_class}" role="alert" style="{style}"><b>{html.escape(title)}</b> '
        f'<span class="skinlesion-message">{inline_html(message)}</span></div>'
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
    if not p.assessed:
        return (
            f'<div role="alert"><div style="font-size:1.3em;margin:4px 0">Not assessed: <span class="skinlesion-decision" '
            f'style="color:#fff;background:#555;padding:2px 10px;border-radius:4px">'
            f"{html.escape(p.decision, quote=False)}</span> "
            f'<span class="skinlesion-image-type" style="color:#555;font-size:0.8em">image type: '
            f"{html.escape(p.image_type)}</span></div>"
            f'<p class="skinlesion-summary" style="max-width:60em">{html.escape(p.summary, quote=False)}</p></div>'
        )
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
    # role="alert": ipywidgets replaces the HTML widget's content whole, so a region inserted with its
    # text is only read out reliably as an alert (a status region must exist before it changes).
    return '<div role="alert">' + "\n".join(parts) + "</div>"


# ------------------------------------------------------------------------------ several photos


def upload_files(value: Any) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file in an ipywidgets 8 ``FileUpload.value`` (copied, as
    :func:`upload_bytes` does), in upload order; empty for an empty value."""
    return [(str(f.get("name", "upload")), bytes(f["content"])) for f in (value or ())]


@dataclass
class GroupResult:
    """Several photos of one lesion: each photo's result and the combined one
    (:func:`skinlesion.serving.combine.combine_predictions`; None when no photo could be read)."""

    results: list[UploadResult] = field(default_factory=list)
    combined: dict[str, Any] | None = None
    error: str | None = None            # why nothing was analysed (too many files, no model...)


def handle_uploads(predictor: Predictor, files: list[tuple[str, bytes]], method: str = "gradcam", *,
                   budget: ExplainBudget | None = None) -> GroupResult:
    """Predict and explain each photo as :func:`handle_upload` does; combine the ones that could be
    read. A refused file is that photo's error; the others are still scored. With ``budget``, one
    deadline covers the slow explanations of all the photos together (as a web request's does); the
    photos are all predicted before any heat map is computed."""
    if len(files) > MAX_PHOTOS:
        return GroupResult(error=f"Too many images: {len(files)} were uploaded, and at most {MAX_PHOTOS} photos of "
                                 f"one lesion are analysed together. Upload {MAX_PHOTOS} or fewer.")
    _require_method(method)
    repeats = repeated_photos([data for _, data in files])
    results: list[UploadResult] = []
    for k, (name, data) in enumerate(files):
        if k not in repeats:
            results.append(_predict_upload(predictor, bytes(data), method, name, budget))
            continue
        first = results[repeats[k]]
        status, error = repeat_refusal(first.name, None if first.ok else (first.status, first.error))
        results.append(UploadResult(name=name, method=method, status=status, error=error))
    # Every prediction first, then the heat maps: a map abandoned at the deadline keeps the model
    # until it ends, and no photo's prediction should wait for it.
    _explain_uploads(results, predictor, [bytes(data) for _, data in files], method, budget)
    predictions = [r.prediction for r in results if r.ok and r.prediction is not None]
    combined = combine_predictions(predictions, predictor.policy) if predictions else None
    return GroupResult(results, combined)


def render_group_html(group: GroupResult) -> str:
    """The combined result of several photos as HTML (each photo's own result is shown below it)."""
    if group.error is not None:
        return error_html("No result:", group.error)
    c = group.combined
    n = len(group.results)
    if c is None:
        return error_html("No result:", f"None of the {n} images could be analysed; each photo's reason is below.")
    rejected = sum(not r.ok for r in group.results)
    counts = [f"{c['n_used']} of {n} photos combined"]
    if c["n_skipped"]:
        counts.append(f"{c['n_skipped']} not assessed (not dermoscopic)")
    if rejected:
        counts.append(f"{rejected} could not be read")
    if c["probability"] is None:
        headline = (f'<div style="font-size:1.3em;margin:4px 0">Combined: <span class="skinlesion-decision" '
                    f'style="color:#fff;background:#555;padding:2px 10px;border-radius:4px">'
                    f'{html.escape(c["decision"], quote=False)}</span></div>')
    else:
        colour = _DECISION_COLOURS.get(c["decision"], _UNCERTAIN_COLOUR)
        headline = (f'<div style="font-size:1.3em;margin:4px 0">Combined decision: <span class="skinlesion-decision" '
                    f'style="color:#fff;background:{colour};padding:2px 10px;border-radius:4px">'
                    f'{html.escape(c["decision"], quote=False)}</span> <span style="color:#555;font-size:0.8em">'
                    f'P(malignant) = {100 * c["probability"]:.1f}%</span></div>')
    return "\n".join([
        headline,
        f'<p class="skinlesion-combined" style="max-width:60em">{html.escape("; ".join(counts))}. Rule: '
        f'{html.escape(c["rule"])}; {band_words(c["probability"], c["decision"], (c["band_low"], c["band_high"]))}'
        f'threshold {100 * c["threshold"]:.1f}%. '
        f'{html.escape(DISCLAIMER)}</p>',
    ])


def image_html(data: bytes | None, mime: str, alt: str) -> str:
    """An ``<img>`` with a text alternative (ipywidgets' Image widget cannot carry one), or "" without data."""
    if not data:
        return ""
    return (f'<img src="{data_uri(mime, data)}" alt="{html.escape(alt)}" '
            f'style="display:block;width:{IMAGE_WIDTH};max-width:100%;height:auto">')


def photo_alt(name: str) -> str:
    return f"Your photo{': ' + name if name else ''}"


def overlay_alt(method: str) -> str:
    return (f"{METHOD_LABELS[method]} heat map over the square the model sees; warm colours mark the regions "
            "that raised the estimated probability of malignancy most")


def overlay_caption_html(result: UploadResult) -> str:
    """What the heat map shows, for this decision and method ("" when the image was not assessed)."""
    if not result.assessed:
        return ""
    caption = result.caption or explanation_caption(result.decision, result.method)
    size = result.input_size
    return (f"<b>{html.escape(caption.title)}</b> <span style='color:#555'>{html.escape(caption.text)} "
            f"The model sees the centre square at {size}x{size} px. Model explained: "
            f"{html.escape(result.explained_model or 'the served model')}.</span>")


def _photo_widget(k: int, result: UploadResult) -> widgets.VBox:
    """One photo of several: its name, its own result (or error) and its images, captioned as one photo's are."""
    parts: list[widgets.Widget] = [widgets.HTML(
        f"<h3 style='margin:12px 0 4px;font-size:1.1em'>Photo {k}: {html.escape(result.name)}</h3>"
        f"{render_result_html(result)}")]
    if result.ok:
        column = widgets.Layout(width=IMAGE_WIDTH, margin="0 16px 0 0")
        pictures = [widgets.HTML("<b>Your image</b>" + image_html(result.image, "image/jpeg",
                                                                   photo_alt(f"photo {k}, {result.name}")),
                                 layout=column)]
        if result.overlay:
            pictures.append(widgets.HTML(
                f"<div style='font-size:0.9em'>{overlay_caption_html(result)}</div>"
                + image_html(result.overlay, "image/png", f"Photo {k}: {overlay_alt(result.method)}"),
                layout=widgets.Layout(width=IMAGE_WIDTH)))
        # Bottom-aligned, as in the one-photo view: captions of different lengths keep the pictures level.
        parts.append(widgets.HBox(pictures, layout=widgets.Layout(flex_flow="row wrap", align_items="flex-end")))
    return widgets.VBox(parts).add_class("skinlesion-photo")


# ------------------------------------------------------------------------------ widgets


# The widgets' own focus ring is a 1 px light-blue line (2.2:1 on white); a style element inside an
# HTML widget reaches the whole page in Voila.
_FOCUS_STYLE = ("<style>.skinlesion-dashboard :is(button, select, input):focus-visible "
                "{outline: 3px solid #0d47a1 !important; outline-offset: 2px}</style>")


def _result_heading(text_html: str) -> str:
    """The line above a result, as a heading a screen reader can jump to."""
    return f"<h2 style='font-size:1.15em;margin:8px 0 4px'>{text_html}</h2>"


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
        self._current_many: list[tuple[str, bytes]] | None = None
        self.last_group: GroupResult | None = None
        self.explain_budget = ExplainBudget()

        self.header = widgets.HTML(_header_html())
        self.focus_style = widgets.HTML(_FOCUS_STYLE, layout=widgets.Layout(display="none"))
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
            disabled=not self.choices,
            layout=widgets.Layout(width="20em"),
            style={"description_width": "6em"},
        )
        self.upload = widgets.FileUpload(
            accept="image/*,.jpg,.jpeg,.png,.bmp,.tif,.tiff,.webp",
            multiple=True,
            description="Upload image(s)",
            # Without a tooltip ipywidgets writes title="null" on the button.
            tooltip=f"Choose one photo, or up to {MAX_PHOTOS} photos of one lesion",
            disabled=not self.choices,
            button_style="primary",
        )
        self.reset_button = widgets.Button(description="Reset", icon="refresh", tooltip="Clear the upload and the result",
                                           disabled=not self.choices)
        self.status = widgets.HTML("")
        self.result = widgets.HTML("")
        # HTML <img> rather than widgets.Image: only HTML can give the pictures a text alternative.
        self.image = widgets.HTML("", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.overlay = widgets.HTML("", layout=widgets.Layout(width=IMAGE_WIDTH))
        self.image_caption = widgets.HTML("<b>Your image</b>")
        self.overlay_caption = widgets.HTML("")
        self.images = widgets.HBox(
            [
                # A fixed column width lets a long caption wrap under its picture instead of
                # widening the column and pushing the heat map below the photo.
                widgets.VBox([self.image_caption, self.image],
                             layout=widgets.Layout(width=IMAGE_WIDTH, margin="0 16px 0 0")),
                widgets.VBox([self.overlay_caption, self.overlay],
                             layout=widgets.Layout(width=IMAGE_WIDTH)).add_class("skinlesion-overlay"),
            ],
            # Bottom-aligned columns keep photo and heat map level when the captions differ in length.
            layout=widgets.Layout(display="none", flex_flow="row wrap", align_items="flex-end"),
        )
        # Several photos of one lesion: one block per photo under the combined result.
        self.gallery = widgets.VBox([], layout=widgets.Layout(display="none"))

        self.upload.observe(self._on_upload, names="value")
        self.method.observe(self._on_option_change, names="value")
        self.bundle.observe(self._on_option_change, names="value")
        self.reset_button.on_click(lambda _: self.reset())

        super().__init__(
            [
                self.focus_style,
                self.header,
                self.bundle,
                self.method,
                widgets.HBox([self.upload, self.reset_button]),
                self.status,
                self.result,
                self.images,
                self.gallery,
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
            self.status.value = (f"Choose a photo (or up to {MAX_PHOTOS} photos of one lesion) with <b>Upload "
                                 "image(s)</b>; it is analysed as soon as it arrives.")
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
        # A new photo replaces any earlier group, or a settings change would bring that group back.
        self._current_many = None
        return self._analyse()

    def process_many(self, files: Sequence[tuple[str, bytes | bytearray | memoryview]]) -> UploadResult | GroupResult:
        """Analyse the photos of one upload: one file as :meth:`process`, several (up to MAX_PHOTOS)
        as photos of one lesion, each shown with its own result under the combined one."""
        if len(files) == 1:
            return self.process(files[0][1], files[0][0])
        self._current = None
        self._current_many = [(name, bytes(data)) for name, data in files]
        return self._analyse_many()

    def _analyse_many(self) -> GroupResult:
        assert self._current_many is not None
        files, method = self._current_many, self.method.value
        if not self.has_model:
            group = GroupResult(error=no_model_message(self.models_dir))
        else:
            self.status.value = (f"Analysing {len(files)} photos with {html.escape(METHOD_LABELS[method])}… "
                                 "(the first image also loads the model)")
            try:
                group = handle_uploads(self._predictor(), files, method, budget=self.explain_budget)
            except Exception as exc:
                # A model that cannot load (or an unexpected failure) must be seen, not only logged.
                log.exception("analysing %d photos with %s failed", len(files), self.bundle.value)
                group = GroupResult(error=f"No result: {_failure(exc)}")
        self.show_group(group)
        return group

    def show_group(self, group: GroupResult) -> None:
        """Put the result of several photos on screen: the combined block, then one block per photo."""
        self.last_result, self.last_group = None, group
        self.images.layout.display = "none"
        self.result.value = render_group_html(group)
        self.status.value = "" if group.error else _result_heading(f"Result for {len(group.results)} photos of one lesion")
        self.gallery.children = tuple(_photo_widget(k, r) for k, r in enumerate(group.results, start=1))
        self.gallery.layout.display = "flex" if group.results else "none"

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
                result = UploadResult(name=name, method=method, error=f"Could not load the model: {_failure(exc)}")
            else:
                try:
                    result = handle_upload(predictor, data, method, name=name, budget=self.explain_budget)
                except Exception as exc:
                    log.exception("analysing %s failed", name)
                    result = UploadResult(name=name, method=method, error=f"Analysis failed: {_failure(exc)}")
        self.show(result)
        return result

    def show(self, result: UploadResult) -> None:
        """Put ``result`` on screen."""
        self.last_result, self.last_group = result, None
        self.gallery.children, self.gallery.layout.display = (), "none"
        self.result.value = render_result_html(result)
        if result.ok:
            self.status.value = _result_heading(f"Result for <i>{html.escape(result.name)}</i>")
            self.image.value = image_html(result.image, "image/jpeg", photo_alt(result.name))
            self.overlay.value = image_html(result.overlay, "image/png", overlay_alt(result.method))
            self.overlay_caption.value = overlay_caption_html(result)
            self.overlay.layout.display = "" if result.overlay else "none"
            self.images.layout.display = "flex"
        else:
            # The red box in ``result`` says it all; a stale "Analysing..." must not stay.
            self.status.value = ""
            self.images.layout.display = "none"

    def reset(self) -> None:
        """Forget the upload and clear the result."""
        self._current = None
        self._current_many = None
        self.last_result = None
        self.last_group = None
        self.images.layout.display = "none"
        self.gallery.children, self.gallery.layout.display = (), "none"
        self.upload.value = ()
        self.result.value = ""
        self.image.value = ""
        self.overlay.value = ""
        self.overlay_caption.value = ""
        self._idle_status()

    # -- callbacks ---------------------------------------------------------------------------
    @contextmanager
    def _busy(self) -> Iterator[None]:
        """The controls are disabled while an analysis runs (seconds to a minute for Score-CAM or
        SmoothGrad over several photos): in Voila, clicks made meanwhile would queue up and each
        re-run the whole analysis afterwards."""
        controls = (self.upload, self.method, self.bundle, self.reset_button)
        before = [c.disabled for c in controls]
        for c in controls:
            c.disabled = True
        try:
            yield
        finally:
            for c, state in zip(controls, before):
                c.disabled = state

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = upload_files(change["new"])
        if files:  # an empty value is our own reset
            with self._busy():
                self.process_many(files)
            # Emptied once read (the files are kept above), so choosing the same file again is a
            # new upload: an identical value would fire no change, and a failed one could not be retried.
            self.upload.value = ()
            # Disabling the control while busy dropped the keyboard focus to the page's top.
            self.upload.focus()

    def _on_option_change(self, change: dict[str, Any]) -> None:
        # A different model or heat-map method re-analyses the photo(s) already on screen.
        with self._busy():
            if self._current_many is not None:
                self._analyse_many()
            elif self._current is not None:
                self._analyse()
        if isinstance(change.get("owner"), widgets.DOMWidget):
            change["owner"].focus()  # as after an upload: the busy state took the focus away


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

"""The one Predictor used by the CLI, the web app, the Voila dashboard, notebooks and tests."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skinlesion import DISCLAIMER
from skinlesion.bundle.format import BUNDLE_FILE, Bundle, BundleError, load, resolve_default_bundle
from skinlesion.data.intake import ImageRejected, read_image, to_model_array
from skinlesion.metrics.calibration import UNCERTAIN_REFER

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from skinlesion.serving.explanation import Explanation

NOT_ASSESSED = "not assessed"

# What the image-type gate saw, for images that get no benign/malignant decision.
IMAGE_TYPE_MESSAGES = {
    "clinical": ("This looks like an ordinary photo, not a dermoscopic image; this model was built only for "
                 "dermoscopy (images taken through a dermatoscope), and phone photos are not supported."),
    "other": ("This does not look like a picture of a skin lesion; this model was built only for dermoscopic "
              "images of a single skin lesion."),
}

OOD_MESSAGE = (
    "This does not look like a dermoscopic image of a skin lesion, so the model's answer is "
    "meaningless for it. Use a dermoscope photo of a single lesion."
)


def band_words(probability: float, decision: str, band: Sequence[float]) -> str:
    """"P lies in the uncertainty band L to H; " for an "uncertain — refer" decision, else "": that
    decision far below the threshold reads as a mistake unless the band is named."""
    if decision != UNCERTAIN_REFER:
        return ""
    return f"{100 * probability:.1f}% lies in the uncertainty band {100 * band[0]:.1f}% to {100 * band[1]:.1f}%; "


@dataclass
class Prediction:
    """One image's result, in numbers and in plain words."""

    probability: float            # calibrated P(malignant)
    raw_probability: float        # output before this bundle's calibration (ensemble: mean of calibrated members)
    decision: str                 # "suspicious" | "benign-appearing" | "uncertain — refer"
    threshold: float              # frozen decision threshold (on the calibrated probability)
    band: tuple[float, float]     # "uncertain — refer" band
    out_of_distribution: bool
    ood_distance: float
    ood_threshold: float
    model: str
    synthetic: bool
    target_sensitivity: float = 0.95
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Image-type gate (models/gate.py): "dermoscopic" | "clinical" | "other", or "unknown" when the
    # bundle has no gate. Only dermoscopic images get a benign/malignant decision; the others get
    # decision == NOT_ASSESSED and the probability is kept for researchers, marked not meaningful.
    image_type: str = "unknown"
    image_type_confidence: float | None = None
    image_type_probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def assessed(self) -> bool:
        """Whether the model's benign/malignant decision applies to this image."""
        return self.decision != NOT_ASSESSED

    @property
    def image_type_message(self) -> str:
        """What the gate saw, in one sentence ("" for a dermoscopic image or a bundle without gate)."""
        return IMAGE_TYPE_MESSAGES.get(self.image_type, "")

    @property
    def summary(self) -> str:
        """The result in one plain-English paragraph (same words everywhere)."""
        pct = 100.0 * self.probability
        if not self.assessed:
            text = (f"{self.image_type_message} No benign/malignant assessment is given. (For researchers: the "
                    f"model's output, {pct:.1f}%, is not meaningful for this image.)")
            if self.synthetic:
                text = "SYNTHETIC MODEL (trained on generated images): " + text
            return text + " " + DISCLAIMER
        band = band_words(self.probability, self.decision, self.band)
        text = (
            f"Estimated probability that this lesion is malignant: {pct:.1f}%. "
            f"Decision: {self.decision} ({band}threshold {100 * self.threshold:.1f}%, chosen on validation "
            f"data to catch about {100 * self.target_sensitivity:.0f}% of malignant lesions)."
        )
        if self.out_of_distribution:
            text = OOD_MESSAGE + " " + text
        if self.synthetic:
            text = "SYNTHETIC MODEL (trained on generated images): " + text
        return text + " " + DISCLAIMER


    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["band"] = list(self.band)
        d["summary"] = self.summary
        d["assessed"] = self.assessed
        d["image_type_message"] = self.image_type_message
        d["probability_meaningful"] = self.assessed   # kept for researchers, not meaningful when not assessed
        d["disclaimer"] = DISCLAIMER
        return d


def ensemble_output(member_probs: Sequence[np.ndarray], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated, raw) P(malignant) of an ensemble from its members' calibrated probabilities.

    The mean of the calibrated members is the ensemble's raw output: the quantity its own
    temperature, fitted on validation (bundle.json), scales, and the one a site calibration re-fits.
    """
    from skinlesion.metrics.calibration import apply_temperature

    raw = np.mean(member_probs, axis=0)
    return apply_temperature(raw, temperature), raw


def _check_tta(tta: Any) -> bool | None:
    """``tta`` when it is True, False or None (the bundle's own choice); anything else (a
    string such as "no" is truthy) is a TypeError rather than silently switching TTA on."""
    if tta is None or isinstance(tta, bool):
        return tta
    if isinstance(tta, np.bool_):
        return bool(tta)
    raise TypeError(f"tta must be True, False or None (the bundle's default), not {tta!r}.")


def _image_list(images: Any, method: str, what: str) -> list:
    """``images`` as a list; one image (a str, path, bytes, PIL image or single array) is a
    TypeError, since iterating it would silently treat its characters or rows as images."""
    from PIL import Image

    single = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)
    # A numeric HxW or HxWxC array is one image; an (N, H, W, 3) batch or an array of paths is a list.
    one_array = isinstance(images, np.ndarray) and images.dtype.kind in "biuf" and images.ndim in (2, 3)
    if isinstance(images, single) or one_array:
        raise TypeError(f"{method}() takes a list of {what}, not a single {type(images).__name__}; "
                        f"pass [x] for one (or use predict()).")
    if not isinstance(images, Iterable):
        raise TypeError(f"{method}() takes a list of {what}, not {type(images).__name__}.")
    return list(images)


def check_model_layout(b: Bundle, model: Any, fields: tuple[str, ...] = ("feature_layer",)) -> None:
    """Refuse (:class:`BundleError`) a bundle whose ``bundle.json`` disagrees with its Keras model:
    ``input_size`` must be the model's input size, and each bundle.json field in ``fields``
    (``feature_layer`` for predictions, ``last_conv_layer`` for explanations; skipped when not
    recorded) must name a layer of it. Checked when the model is loaded rather than at the first
    prediction, where Keras would fail with a shape error or a list of every layer."""
    shape = tuple(model.input_shape[1:3])
    if None not in shape and shape != (b.input_size, b.input_size):
        actual = "x".join(str(d) for d in shape)
        raise BundleError(f"{b.path}: {BUNDLE_FILE} says input_size {b.input_size}, but the model's input is "
                          f"{actual} pixels; the bundle.json does not belong to this model.keras.")
    names = {layer.name for layer in model.layers}
    for field_name in fields:
        value = getattr(b.meta, field_name)
        if value is not None and value not in names:
            raise BundleError(f"{b.path}: {BUNDLE_FILE} field {field_name} names the layer {value!r}, but the "
                              "model has no such layer; the bundle.json does not belong to this model.keras.")


Reading = tuple[int, bool]  # how a member reads an image: (input size, cut to its lesion first)


def reading_of(b: Bundle) -> Reading:
    """A bundle's :data:`Reading` of an image."""
    return b.input_size, b.meta.lesion_crop


def read_as(img: Image.Image, readings: set[Reading]) -> dict[Reading, np.ndarray]:
    """One decoded RGB image (``data.intake.read_image``) as uint8 ``(size, size, 3)`` arrays, one per reading:
    the centre square at that size, or its lesion crop cut from the decoded pixels (``models.lesion.crop_from``)."""
    from skinlesion.models.lesion import crop_from

    return {(size, crop): crop_from(img, size)[0] if crop else to_model_array(img, size) for size, crop in readings}


def check_crop_rule(b: Bundle) -> None:
    """A BundleError for a lesion-crop bundle trained with another crop rule than this version's
    (``models.lesion.RULE``): served with this one, it would read crops it never saw."""
    from skinlesion.models.lesion import RULE

    rule = b.meta.crop_rule
    if rule and rule != RULE:
        was = f" (cut from the {b.input_size}-px input)" if rule == 1 else ""
        raise BundleError(f"{b.path}: this bundle was trained on lesion crops of rule {rule}{was}; this version "
                          f"cuts them from the decoded image (rule {RULE}, skinlesion.models.lesion). Retrain it "
                          "(`make run` for the default model).")


@dataclass
class _Member:
    bundle: Bundle
    infer: Any              # serving backend: uint8 batch -> (features, raw probability)
    temperature: float
    ood: Any | None
    gate: Any | None = None     # models.gate.ImageTypeGate on this member's pooled features


@dataclass
class _Scores:
    """Everything the model says about a batch, before it is put into words."""

    prob: np.ndarray
    raw: np.ndarray
    ood_ratio: np.ndarray
    has_ood: bool
    image_types: list[str]
    type_confidence: np.ndarray
    type_probabilities: list[dict[str, float]]


class Predictor:
    """Load a bundle once; predict, explain and batch-predict images."""

    def __init__(self, bundle: Bundle, backend: str = "keras"):
        self.bundle = bundle
        self.meta = bundle.meta
        if self.meta.decision is None:
            raise BundleError(f"{bundle.path}: the bundle records no decision policy, so it cannot be served")
        self.policy = self.meta.decision
        self.backend = backend
        bundles = self.member_bundles(bundle)
        owner = self.gate_owner(bundles)
        self.members = [self._member(b, backend, gated=b is owner) for b in bundles]
        self.input_size = self.members[0].bundle.input_size

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str] | None = None, backend: str = "keras") -> Predictor:
        """``path``, else the default model (:func:`~skinlesion.bundle.format.resolve_default_bundle`:
        ``SKINLESION_MODEL``, else ``models/<config.DEFAULT_MODEL>``); a missing one is a BundleError.

        ``backend`` runs the model: ``"keras"`` (model.keras), ``"tflite"`` or ``"tflite-dynamic"``
        (the bundle's TFLite export, :mod:`skinlesion.serving.backends`). Probabilities, TTA, OOD and
        decisions follow the same rules whatever the backend; explanations (Grad-CAM) always use the
        Keras model, loaded on first use."""
        if path is None:
            path = resolve_default_bundle()
        return cls(load(path), backend=backend)

    @staticmethod
    def member_bundles(b: Bundle) -> list[Bundle]:
        """The loaded bundles whose outputs make ``b``'s answer: its members, or ``b`` itself."""
        if b.kind != "ensemble":
            return [b]
        members = []
        for rel in b.meta.members:
            p = Path(rel)
            members.append(load(p if p.is_absolute() else (b.path / p).resolve()))
        if not members:
            raise BundleError(f"{b.path}: ensemble has no members")
        return members

    @staticmethod
    def gate_owner(bundles: list[Bundle]) -> Bundle | None:
        """Of the bundles that make an answer (:meth:`member_bundles`), the one whose image-type gate
        screens every image: the first that has a gate (None: no gate)."""
        return next((b for b in bundles if b.meta.raw.get("gate")), None)

    @staticmethod
    def _member(b: Bundle, backend: str = "keras", *, gated: bool = False) -> _Member:
        from skinlesion.models.gate import ImageTypeGate
        from skinlesion.serving.backends import make_backend

        check_crop_rule(b)
        ood = b.ood_detector()
        gate = ImageTypeGate.load(b.file(b.meta.raw["gate"]["file"])) if gated else None
        if backend == "keras":  # it loads the model now anyway; a TFLite backend never does
            check_model_layout(b, b.model)
        return _Member(b, make_backend(b, backend), b.meta.temperature, ood, gate)

    @property
    def has_gate(self) -> bool:
        """Whether an image-type gate screens images before any decision (:meth:`gate_owner`'s)."""
        return any(m.gate is not None for m in self.members)

    @property
    def name(self) -> str:
        return self.meta.run_id

    # -- prediction -----------------------------------------------------------------------
    @property
    def readings(self) -> set[Reading]:
        """How the members read an image: (input size, lesion crop) pairs."""
        return {reading_of(m.bundle) for m in self.members}

    def _arrays(self, images: list, readings: set[Reading]) -> dict[Reading, np.ndarray]:
        """The images as uint8 batches, one per reading; each image decoded once."""
        from PIL import Image

        arrays: dict[Reading, list[np.ndarray]] = {r: [] for r in readings}
        for number, x in enumerate(images, 1):
            try:
                if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 and \
                        {(x.shape[0], x.shape[1])} == {(s, s) for s, _ in readings}:
                    img = Image.fromarray(x)  # already model-ready: its own original
                else:
                    img = read_image(x)
            except ImageRejected as exc:
                if len(images) == 1:
                    raise
                # A batch is refused whole, so say which of its images was the cause.
                raise ImageRejected(exc.status, f"Image {number} of {len(images)}: {exc.message}") from exc
            for r, a in read_as(img, readings).items():
                arrays[r].append(a)
        return {r: np.stack(a) for r, a in arrays.items()}

    @property
    def default_tta(self) -> bool:
        """Whether this bundle's threshold was fitted on dihedral TTA (then it is served that way)."""
        return self.meta.dihedral_tta

    def _probabilities(self, batches: dict[Reading, np.ndarray], tta: bool | None) -> _Scores:
        tta = self.default_tta if tta is None else tta
        from skinlesion.metrics.calibration import apply_temperature
        from skinlesion.models.features import VIEWS, apply_view

        views = list(VIEWS) if tta else ["id"]
        probs, raws, dists, thresholds = [], [], [], []
        n = len(next(iter(batches.values())))
        types: list[str] = ["unknown"] * n
        type_conf = np.full(n, np.nan)
        type_probs: list[dict[str, float]] = [{} for _ in range(n)]
        for m in self.members:
            # A crop member's batch is the lesion crops, its views taken of them ("lc2_<view>" as trained);
            # such a member never owns the gate below, which reads whole images: attach_gate refuses it.
            batch = batches[reading_of(m.bundle)]
            member_raw, member_feats = [], {}
            for v in views:
                feats, p = m.infer(apply_view(batch, v))
                member_raw.append(np.asarray(p).ravel())
                member_feats[v] = np.asarray(feats)
            f0 = member_feats["id"]
            raw = np.mean(member_raw, axis=0)
            raws.append(raw)
            probs.append(apply_temperature(raw, m.temperature))
            if m.ood is not None:
                dists.append(m.ood.distance(f0))
                thresholds.append(m.ood.threshold)
            if m.gate is not None:  # only the gate owner's is loaded
                # The gate reads the mean pooled features over its views (the 8 dihedral views of a
                # TTA bundle: no extra network pass when served with TTA), so its call does not
                # depend on orientation. Without TTA its missing views are computed for it.
                for v in m.gate.views:
                    if v not in member_feats:
                        member_feats[v] = np.asarray(m.infer(apply_view(batch, v))[0])
                types, type_conf, p_types = m.gate.classify(np.mean([member_feats[v] for v in m.gate.views], axis=0))
                type_probs = [dict(zip(m.gate.classes, map(float, row))) for row in p_types]
        if self.bundle.kind == "ensemble":
            prob, raw = ensemble_output(probs, self.meta.temperature)
        else:  # a single bundle is its own only member
            (prob,), (raw,) = probs, raws
        # Ratio to each member's threshold, so members of different backbones are comparable.
        ratio = np.mean([d / t for d, t in zip(dists, thresholds)], axis=0) if dists else np.zeros_like(prob)
        return _Scores(prob, raw, ratio, bool(dists), list(types), np.asarray(type_conf, dtype=float), type_probs)

    def _decide(self, p: float, image_type: str) -> str:
        """The policy's decision, or NOT_ASSESSED for an image the gate says is not dermoscopy."""
        if image_type in ("clinical", "other"):
            return NOT_ASSESSED
        return self.policy.decide(p)

    def predict(self, image, *, tta: bool | None = None) -> Prediction:
        """Predict one image: bytes, a path, a PIL image or an RGB array. ``tta``: True, False
        or None (the bundle's default, :attr:`default_tta`)."""
        return self.predict_many([image], tta=tta)[0]

    def predict_many(self, images: list, *, tta: bool | None = None) -> list[Prediction]:
        """Predict a list of images (as for :meth:`predict`) in one batch; [] gives []. A 4-D
        ``(N, H, W, C)`` array is a batch; a 2-D or 3-D array is one image (a TypeError here: a stack
        of N grey ``(H, W)`` images is ambiguous with one colour image, so pass a list of them)."""
        images = _image_list(images, "predict_many", "images")
        tta = _check_tta(tta)
        if not images:
            return []
        t0 = time.perf_counter()
        batches = self._arrays(images, self.readings)
        t1 = time.perf_counter()
        sc = self._probabilities(batches, tta)
        t2 = time.perf_counter()
        per = len(images)
        out = []
        for i in range(per):
            conf = float(sc.type_confidence[i])
            out.append(Prediction(
                probability=float(sc.prob[i]), raw_probability=float(sc.raw[i]),
                decision=self._decide(float(sc.prob[i]), sc.image_types[i]), threshold=float(self.policy.threshold),
                band=(float(self.policy.band_low), float(self.policy.band_high)),
                out_of_distribution=bool(sc.has_ood and sc.ood_ratio[i] > 1.0),
                ood_distance=float(sc.ood_ratio[i]), ood_threshold=1.0,
                model=self.name, synthetic=self.meta.synthetic,
                timings_ms={"decode": 1000 * (t1 - t0) / per, "model": 1000 * (t2 - t1) / per},
                target_sensitivity=float(self.policy.target_sensitivity),
                image_type=sc.image_types[i], image_type_confidence=None if np.isnan(conf) else conf,
                image_type_probabilities=sc.type_probabilities[i],
            ))
        return out

    def predict_batch(self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 32, tta: bool | None = None,
                      progress: bool = False) -> pd.DataFrame:
        """Predict many files (a list of paths; a single path is a TypeError); unreadable ones get
        an ``error`` row instead of stopping the run."""
        import pandas as pd
        from tqdm.auto import tqdm

        paths = _image_list(paths, "predict_batch", "file paths")
        tta = _check_tta(tta)

        readings = self.readings
        rows: list[dict[str, Any]] = []
        for start in tqdm(range(0, len(paths), batch_size), disable=not progress, desc="predict", unit="batch"):
            chunk = paths[start:start + batch_size]
            slots: list[dict[str, Any]] = []
            good: list[dict[str, Any]] = []
            arrays: dict[Reading, list[np.ndarray]] = {r: [] for r in readings}
            for p in chunk:
                row: dict[str, Any] = {"path": str(p), "error": ""}
                slots.append(row)
                try:
                    # read_image on the path, not read_bytes(): it refuses an oversized file from
                    # stat (and reads at most MAX_BYTES + 1 bytes), and a device or pipe (a link
                    # to /dev/zero) without reading it, so one such file is an error row and
                    # not a MemoryError (or a hang) for the whole batch. Decoded once per file.
                    arrs = read_as(read_image(Path(p)), readings)
                except (ImageRejected, OSError) as exc:
                    row["error"] = getattr(exc, "message", None) or str(exc)
                    continue
                good.append(row)
                for r, a in arrs.items():
                    arrays[r].append(a)
            if good:
                sc = self._probabilities({r: np.stack(a) for r, a in arrays.items()}, tta)
                for row, pr, r, o, t in zip(good, sc.prob, sc.raw, sc.ood_ratio, sc.image_types):
                    decision = self._decide(float(pr), t)
                    row.update(probability=float(pr), raw_probability=float(r), decision=decision,
                               label=("" if decision == NOT_ASSESSED else
                                      "malignant" if pr >= self.policy.threshold else "benign"),
                               image_type=t, out_of_distribution=bool(sc.has_ood and o > 1.0))
            rows += slots
        return pd.DataFrame(rows, columns=["path", "probability", "raw_probability", "decision", "label",
                                           "image_type", "out_of_distribution", "error"])

    # -- explanation ----------------------------------------------------------------------
    @property
    def member_run_ids(self) -> tuple[str, ...]:
        """Run ids of the bundles whose outputs make the served answer (one for a single bundle)."""
        return tuple(m.bundle.meta.run_id for m in self.members)

    def member_weights(self) -> tuple[float, ...]:
        """How the served answer weights its members: ``member_weights`` in bundle.json when an
        ensemble records them (normalised), else equal, as :meth:`_probabilities` averages them."""
        raw = self.meta.raw.get("member_weights")
        n = len(self.members)
        if raw is None:
            return (1.0 / n,) * n
        w = np.asarray(raw, np.float64)
        if w.shape != (n,) or np.any(w < 0) or not w.sum() > 0:
            raise BundleError(f"{self.bundle.path}: member_weights must be {n} non-negative numbers, got {raw!r}")
        return tuple(float(x) for x in w / w.sum())

    def explain_views(self, method: str, tta: bool | None = None) -> tuple[str, ...]:
        """Dihedral views to average, as the served TTA does. ``tta=None``: the bundle's own TTA for
        the compiled methods (8 passes of ~25 ms), the identity view only for Score-CAM and
        SmoothGrad (each view costs seconds on a CPU); ``True``/``False`` force it."""
        from skinlesion.explain.gradcam import COMPILED_METHODS
        from skinlesion.models.features import VIEWS

        tta = _check_tta(tta)
        if tta is None:
            tta = self.default_tta and method in COMPILED_METHODS
        return tuple(VIEWS) if tta else ("id",)

    def explain(self, image, method: str = "gradcam", *, target: str = "malignant",
                prediction: Prediction | None = None, tta: bool | None = None, **kwargs: Any) -> Explanation:
        """Explain the served model's answer for one image (bytes, a path, a PIL image or an RGB array).

        Every member is explained at its own input size (on the image of that size, dihedral views
        mapped back and averaged when the answer uses TTA, see :meth:`explain_views`), and the
        member maps are resized to :attr:`input_size` and weighted as the answer weights its
        members. Gradient methods differentiate each member's logit (the pre-activation of its
        sigmoid output layer), not the saturating probability. ``target`` is "malignant",
        "benign" or "predicted" (by the served threshold). ``prediction`` is the served
        prediction for the same image when the caller has it (else it is computed, for the
        caption). ``kwargs`` go to :func:`skinlesion.explain.gradcam.compute_heatmap` (e.g.
        ``max_N``, ``smooth_samples``, ``seed``), except ``layer_name``: the layer explained is
        each member's ``last_conv_layer`` from its bundle.json (a TypeError when given).
        Unpacks as ``(heatmap, overlay_png)``.
        """
        from skinlesion.explain.common import METHODS, check_target, sigmoid_head
        from skinlesion.explain.gradcam import compute_heatmap
        from skinlesion.explain.overlay import overlay_png_bytes
        from skinlesion.models.features import apply_view
        from skinlesion.models.lesion import crop_of
        from skinlesion.serving.explanation import (
            SCORE_BY_HEAD,
            SCORECAM_SCORE,
            Explanation,
            combine_maps,
            explanation_caption,
            uncrop_map,
            unview_map,
        )

        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
        if "layer_name" in kwargs:
            # Each member explains the layer its bundle records; one name cannot fit every member.
            raise TypeError(
                "Predictor.explain() takes no layer_name: the layer explained comes from the bundle "
                "(bundle.json last_conv_layer of each member). To explain another layer, call "
                "skinlesion.explain.gradcam.compute_heatmap(predictor.bundle.model, image, layer_name=...) "
                "on a model-ready 0..255 image."
            )
        check_target(target, 0.5)
        tta = _check_tta(tta)
        if prediction is None:
            prediction = self.predict(image)
        resolved = target
        if target == "predicted":
            resolved = "malignant" if prediction.probability >= self.policy.threshold else "benign"
        views = self.explain_views(method, tta)
        weights = self.member_weights()
        plain = {(m.bundle.input_size, False) for m in self.members}
        arrays = {r: a[0] for r, a in self._arrays([image], self.readings | plain).items()}
        maps: list[np.ndarray] = []
        scores = set()
        for m in self.members:
            # A TFLite-served Predictor loads the Keras model only now; the layer comes from bundle.json.
            check_model_layout(m.bundle, m.bundle.model, ("last_conv_layer",))
            arr = arrays[(m.bundle.input_size, False)]
            # A crop member sees its lesion crop (cut from the decoded image); where it lies in the frame is
            # found on the frame itself, as the crop was.
            crop = crop_of(arr) if m.bundle.meta.lesion_crop else None
            seen = arrays[reading_of(m.bundle)]
            per_view = [
                unview_map(compute_heatmap(m.bundle.model, apply_view(seen[None], v)[0], method,
                                           layer_name=m.bundle.meta.last_conv_layer, target=resolved, **kwargs), v)
                for v in views
            ]
            heat_m = np.mean(per_view, axis=0).astype(np.float32)
            # A crop member's map is drawn back where its crop lies in the frame (zero outside).
            maps.append(heat_m if crop is None else uncrop_map(heat_m, crop, arr.shape[0]))
            scores.add(SCORECAM_SCORE if method == "scorecam" else SCORE_BY_HEAD[sigmoid_head(m.bundle.model)[0]])
        heat = combine_maps(maps, weights, self.input_size)
        shown = arrays[(self.input_size, False)]
        return Explanation(
            heatmap=heat, overlay_png=overlay_png_bytes(shown, heat), method=method, target=resolved,
            model=self.name, members=self.member_run_ids, weights=weights, views=views,
            score="; ".join(sorted(scores)), probability=float(prediction.probability),
            decision=prediction.decision, caption=explanation_caption(prediction.decision, method, resolved),
            member_maps=dict(zip(self.member_run_ids, maps)),
        )

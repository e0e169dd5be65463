"""The one Predictor used by the CLI, the web app, the Voila dashboard, notebooks and tests."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skinlesion import DISCLAIMER, config
from skinlesion.bundle.format import Bundle, BundleError, default_bundle, load
from skinlesion.data.intake import load_for_model

if TYPE_CHECKING:
    import pandas as pd

OOD_MESSAGE = (
    "This does not look like a dermoscopic image of a skin lesion, so the model's answer is "
    "meaningless for it. Use a dermoscope photo of a single lesion."
)


@dataclass
class Prediction:
    """One image's result, in numbers and in plain words."""

    probability: float            # calibrated P(malignant)
    raw_probability: float        # model output before calibration
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

    @property
    def summary(self) -> str:
        """The result in one plain-English paragraph (same words everywhere)."""
        pct = 100.0 * self.probability
        text = (
            f"Estimated probability that this lesion is malignant: {pct:.1f}%. "
            f"Decision: {self.decision} (threshold {100 * self.threshold:.1f}%, chosen on validation "
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
        d["disclaimer"] = DISCLAIMER
        return d


@dataclass
class _Member:
    bundle: Bundle
    infer: Any              # keras Model: image -> (features, probability)
    temperature: float
    ood: Any | None


class Predictor:
    """Load a bundle once; predict, explain and batch-predict images."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.meta = bundle.meta
        if self.meta.decision is None:
            raise BundleError(f"{bundle.path}: the bundle records no decision policy, so it cannot be served")
        self.policy = self.meta.decision
        self.members = [self._member(b) for b in self._member_bundles(bundle)]
        self.input_size = self.members[0].bundle.input_size

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str] | None = None) -> Predictor:
        """``path``, else ``SKINLESION_MODEL``, else the newest bundle under ``models/``."""
        if path is None:
            path = default_bundle()
        if path is None:
            raise BundleError(
                f"no trained model found in {config.models_dir()}. Train one with `make run` "
                "(or `skinlesion train`), or set SKINLESION_MODEL to a bundle folder."
            )
        return cls(load(path))

    @staticmethod
    def _member_bundles(b: Bundle) -> list[Bundle]:
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
    def _member(b: Bundle) -> _Member:
        import keras

        from skinlesion.models.ood import OODDetector

        model = b.model
        infer = keras.Model(model.input, [model.get_layer(b.meta.feature_layer).output, model.output])
        ood = OODDetector.load(b.file(b.meta.ood.file)) if b.meta.ood else None
        return _Member(b, infer, b.meta.temperature, ood)

    @property
    def name(self) -> str:
        return self.meta.run_id

    # -- prediction -----------------------------------------------------------------------
    def _arrays(self, images: list, size: int) -> np.ndarray:
        return np.stack([x if isinstance(x, np.ndarray) and x.shape == (size, size, 3) and x.dtype == np.uint8
                         else load_for_model(x, size) for x in images])

    @property
    def default_tta(self) -> bool:
        """Whether this bundle's threshold was fitted on dihedral TTA (then it is served that way)."""
        return self.meta.raw.get("tta") == "dihedral"

    def _probabilities(self, batch_by_size: dict[int, np.ndarray], tta: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        tta = self.default_tta if tta is None else tta
        from skinlesion.metrics.calibration import apply_temperature
        from skinlesion.models.features import VIEWS, apply_view

        views = list(VIEWS) if tta else ["id"]
        probs, raws, dists, thresholds = [], [], [], []
        for m in self.members:
            batch = batch_by_size[m.bundle.input_size]
            member_raw = []
            for v in views:
                feats, p = m.infer.predict_on_batch(apply_view(batch, v))
                member_raw.append(np.asarray(p).ravel())
                if v == "id":
                    f0 = np.asarray(feats)
            raw = np.mean(member_raw, axis=0)
            raws.append(raw)
            probs.append(apply_temperature(raw, m.temperature))
            if m.ood is not None:
                dists.append(m.ood.distance(f0))
                thresholds.append(m.ood.threshold)
        prob = np.mean(probs, axis=0)
        raw = np.mean(raws, axis=0)
        if self.bundle.kind == "ensemble":
            # The mean of calibrated members is itself re-calibrated on validation (bundle.json).
            prob = apply_temperature(prob, self.meta.temperature)
        if dists:
            # Ratio to each member's threshold, so members of different backbones are comparable.
            ratio = np.mean([d / t for d, t in zip(dists, thresholds)], axis=0)
            return prob, raw, ratio, True
        return prob, raw, np.zeros_like(prob), False

    def predict(self, image, *, tta: bool | None = None) -> Prediction:
        """Predict one image: bytes, a path, a PIL image or an RGB array."""
        return self.predict_many([image], tta=tta)[0]

    def predict_many(self, images: list, *, tta: bool | None = None) -> list[Prediction]:
        t0 = time.perf_counter()
        sizes = {m.bundle.input_size for m in self.members}
        batches = {s: self._arrays(images, s) for s in sizes}
        t1 = time.perf_counter()
        prob, raw, ood_ratio, has_ood = self._probabilities(batches, tta)
        t2 = time.perf_counter()
        per = len(images)
        out = []
        for i in range(per):
            out.append(Prediction(
                probability=float(prob[i]), raw_probability=float(raw[i]),
                decision=self.policy.decide(float(prob[i])), threshold=float(self.policy.threshold),
                band=(float(self.policy.band_low), float(self.policy.band_high)),
                out_of_distribution=bool(has_ood and ood_ratio[i] > 1.0),
                ood_distance=float(ood_ratio[i]), ood_threshold=1.0,
                model=self.name, synthetic=self.meta.synthetic,
                timings_ms={"decode": 1000 * (t1 - t0) / per, "model": 1000 * (t2 - t1) / per},
                target_sensitivity=float(self.policy.target_sensitivity),
            ))
        return out

    def predict_batch(self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 32, tta: bool | None = None,
                      progress: bool = False) -> pd.DataFrame:
        """Predict many files; unreadable ones get an ``error`` row instead of stopping the run."""
        import pandas as pd
        from tqdm.auto import tqdm

        from skinlesion.data.intake import ImageRejected

        sizes = {m.bundle.input_size for m in self.members}
        rows: list[dict[str, Any]] = []
        for start in tqdm(range(0, len(paths), batch_size), disable=not progress, desc="predict", unit="batch"):
            chunk = paths[start:start + batch_size]
            slots: list[dict[str, Any]] = []
            good: list[dict[str, Any]] = []
            arrays: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
            for p in chunk:
                row: dict[str, Any] = {"path": str(p), "error": ""}
                slots.append(row)
                try:
                    data = Path(p).read_bytes()
                    arrs = {s: load_for_model(data, s) for s in sizes}
                except (ImageRejected, OSError) as exc:
                    row["error"] = getattr(exc, "message", None) or str(exc)
                    continue
                good.append(row)
                for s, a in arrs.items():
                    arrays[s].append(a)
            if good:
                prob, raw, ood_ratio, has_ood = self._probabilities({s: np.stack(a) for s, a in arrays.items()}, tta)
                for row, pr, r, o in zip(good, prob, raw, ood_ratio):
                    row.update(probability=float(pr), raw_probability=float(r), decision=self.policy.decide(float(pr)),
                               label="malignant" if pr >= self.policy.threshold else "benign",
                               out_of_distribution=bool(has_ood and o > 1.0))
            rows += slots
        return pd.DataFrame(rows, columns=["path", "probability", "raw_probability", "decision", "label",
                                           "out_of_distribution", "error"])

    # -- explanation ----------------------------------------------------------------------
    def explain(self, image, method: str = "gradcam", *, target: str = "malignant") -> tuple[np.ndarray, bytes]:
        """(heatmap in [0, 1] at the model's input size, PNG overlay bytes) for one image."""
        from skinlesion.explain.gradcam import compute_heatmap
        from skinlesion.explain.overlay import overlay_png_bytes

        member = self.members[0]
        arr = load_for_model(image, member.bundle.input_size) if not (
            isinstance(image, np.ndarray) and image.shape == (member.bundle.input_size,) * 2 + (3,)) else image
        heat = compute_heatmap(member.bundle.model, arr, method,
                               layer_name=member.bundle.meta.last_conv_layer, target=target)
        return heat, overlay_png_bytes(arr, heat)

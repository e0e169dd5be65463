"""What an explanation of the *served* model is, and how the web app and dashboard word it.

:meth:`skinlesion.serving.inference.Predictor.explain` returns an :class:`Explanation`: the map of
the model that answers (an ensemble's members combined as the ensemble combines them, the
dihedral views averaged as the served TTA averages them), the name of that model and its members,
the score that was explained, and a caption from :func:`explanation_caption`.

Why a caption function: every map is scaled to [0, 1] before display, so a map of P(malignant)
on an image the model calls benign-appearing is the *strongest of weak* influences stretched to
full red. Shown with the usual "red = strongest influence on P(malignant)" caption it looks like
evidence. :func:`explanation_caption` is the one place that says, from the served decision, when
a map may be read as evidence and when the honest answer is "no strong malignant evidence".
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skinlesion.metrics.calibration import BENIGN_APPEARING, SUSPICIOUS, UNCERTAIN_REFER
from skinlesion.serving.presentation import method_label

NO_STRONG_MALIGNANT_EVIDENCE = "No strong malignant evidence"

# What each head kind (skinlesion.explain.common.sigmoid_head) means for the explained score.
SCORE_BY_HEAD: dict[str, str] = {
    "dense": "logit z = pre-activation of the sigmoid Dense output layer (p = sigmoid(z))",
    "activation": "logit z = input of the sigmoid Activation layer (p = sigmoid(z))",
    "probability": "logit z = log(p / (1 - p)) of the output clipped to [1e-7, 1 - 1e-7] "
                   "(the model exposes no pre-activation)",
}
SCORECAM_SCORE = ("P(target) of the image masked by each channel (Score-CAM is gradient-free; "
                  "p = softmax([0, z]) of the same logit)")


@dataclass(frozen=True)
class ExplanationCaption:
    """How to present one map: a short ``title``, the sentence under it, and whether the map may
    be read as evidence for the explained class (``False``: say so instead of showing it as such)."""

    title: str
    text: str
    evidence: bool


def explanation_caption(decision: str, method: str | None, target: str = "malignant") -> ExplanationCaption:
    """The caption of a ``method`` map of class ``target`` for an image the served policy called
    ``decision`` (``Prediction.decision``). Pure: the web app and the dashboard both use it.

    * target "malignant", decision benign-appearing: "No strong malignant evidence" — the map is
      stretched from weak influences and must not be read as a finding;
    * target "benign": labelled as benign evidence (what lowered P(malignant));
    * any other decision (the Predictor's "not assessed" for images that are not dermoscopic):
      the map explains no decision about a lesion;
    * otherwise (suspicious, uncertain — refer): where the influence towards malignant is.
    """
    label = method_label(method)
    if target not in ("malignant", "benign"):
        raise ValueError(f"target must be 'malignant' or 'benign' (resolve 'predicted' first), got {target!r}")
    if decision not in (SUSPICIOUS, UNCERTAIN_REFER, BENIGN_APPEARING):
        return ExplanationCaption(
            f"{label}: not assessed",
            "The image was not assessed as a dermoscopic lesion, so this map explains no decision about a lesion.",
            evidence=False)
    if target == "benign":
        return ExplanationCaption(
            f"{label}: benign evidence",
            "Red marks what lowered the estimated probability of malignancy most; it is not an outline "
            "of the lesion.",
            evidence=True)
    if decision == BENIGN_APPEARING:
        return ExplanationCaption(
            NO_STRONG_MALIGNANT_EVIDENCE,
            f"The decision is benign-appearing. The {label} map is scaled to its own maximum, so its red "
            "areas are only the strongest of weak influences towards malignant; do not read them as suspicious.",
            evidence=False)
    return ExplanationCaption(
        f"{label}: evidence for malignant",
        "Where the model looked: red marks the strongest influence on P(malignant); it is not an outline "
        "of the lesion.",
        evidence=True)


def explained_model_text(model: str, members: Sequence[str], weights: Sequence[float]) -> str:
    """One line naming the model a map explains: ``"ens (members a 50%, b 50%)"`` or ``"run-id"``."""
    if len(members) <= 1:
        return model
    parts = ", ".join(f"{m} {100 * w:.0f}%" for m, w in zip(members, weights))
    return f"{model} (ensemble; member maps weighted {parts})"


# ------------------------------------------------------------------------------ maps


def unview_map(heatmap: np.ndarray, view: str) -> np.ndarray:
    """Undo a dihedral view (:data:`skinlesion.models.features.VIEWS`) on a 2-D map, so a map
    computed on a rotated/flipped input lines up with the original image."""
    from skinlesion.models.features import VIEWS

    if view not in VIEWS:
        raise ValueError(f"unknown dihedral view {view!r}; known: {', '.join(VIEWS)}")
    quarter_turns, flip = VIEWS[view]
    # apply_view flips the width axis, then rotates; undo in reverse order.
    out = np.rot90(np.asarray(heatmap), -quarter_turns)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def uncrop_map(heatmap: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """A 2-D map computed on a lesion crop (``skinlesion.models.lesion``: (top, left, side) in a
    ``size`` frame), resized to the crop's side and put back where the crop was; zero outside it,
    where that member did not look."""
    from skinlesion.explain.common import resize_map

    y0, x0, side = crop
    out = np.zeros((size, size), np.float32)
    out[y0:y0 + side, x0:x0 + side] = resize_map(np.asarray(heatmap, np.float32), (side, side))
    return out


def combine_maps(maps: Sequence[np.ndarray], weights: Sequence[float], size: int) -> np.ndarray:
    """``sum_i weights[i] * maps[i]`` with every map resized (bilinear) to ``size`` x ``size``.

    Weights must be non-negative and sum to 1, so maps in [0, 1] give a map in [0, 1]; it is not
    re-stretched, so where members disagree the combined map is weaker.
    """
    from skinlesion.explain.common import resize_map

    if len(maps) != len(weights) or not maps:
        raise ValueError(f"need one weight per map, got {len(maps)} maps and {len(weights)} weights")
    w = np.asarray(weights, np.float64)
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights must be >= 0 and sum to 1, got {list(weights)}")
    out = np.zeros((size, size), np.float64)
    for m, wi in zip(maps, w):
        m = np.asarray(m, np.float32)
        out += wi * (m if m.shape == (size, size) else resize_map(m, (size, size)))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass
class Explanation:
    """One explanation of the served model.

    Unpacks (and indexes) as ``(heatmap, overlay_png)``, the shape ``Predictor.explain`` always
    had, so ``heat, png = predictor.explain(...)`` keeps working.
    """

    heatmap: np.ndarray              # (S, S) in [0, 1] at the Predictor's input size
    overlay_png: bytes               # the map over the model's input square
    method: str
    target: str                      # "malignant" or "benign" (resolved)
    model: str                       # run id of the served bundle
    members: tuple[str, ...]         # run ids of the bundles whose maps were combined
    weights: tuple[float, ...]       # their weights (sum 1)
    views: tuple[str, ...]           # dihedral views averaged per member ("id" only: no TTA)
    score: str                       # what was differentiated (or, for Score-CAM, scored)
    probability: float               # served, calibrated P(malignant)
    decision: str                    # served decision
    caption: ExplanationCaption
    member_maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.heatmap, self.overlay_png))

    def __getitem__(self, index: int) -> Any:
        return (self.heatmap, self.overlay_png)[index]

    def __len__(self) -> int:
        return 2

    @property
    def model_text(self) -> str:
        """The explained model in words (members and weights for an ensemble)."""
        return explained_model_text(self.model, self.members, self.weights)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no arrays, no image bytes)."""
        return {
            "method": self.method, "target": self.target, "model": self.model,
            "members": list(self.members), "weights": list(self.weights), "views": list(self.views),
            "score": self.score, "probability": self.probability, "decision": self.decision,
            "caption": self.caption.text, "caption_title": self.caption.title,
            "evidence": self.caption.evidence, "model_text": self.model_text,
        }

"""Image-type gate: is this a dermoscopic image, an ordinary (clinical) photo of skin, or neither?

The classifier is trained on dermoscopy only. A phone photo of a mole sits close enough to
dermoscopy in feature space that a distance check misses most of them, so the gate is a
small supervised head on the same pooled backbone features the Predictor already computes
(no extra network pass): a multinomial logistic regression on standardised features,
temperature-scaled on held-out data so its probabilities are calibrated.

The gate reads the mean of the pooled features over ``views`` (the 8 dihedral views for a bundle
served with dihedral TTA), so that, like the probability, its call does not depend on which way
up the image was taken. An image is called dermoscopic when the calibrated P(dermoscopic) reaches ``threshold``;
otherwise it is the likelier of the other types. The threshold is chosen on validation
dermoscopic images of the training collections so that few of them are set aside (a new
dermatoscope should not be refused), never on the sets the gate is reported on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_TYPES: tuple[str, ...] = ("dermoscopic", "clinical", "other")
DERMOSCOPIC = "dermoscopic"


@dataclass
class ImageTypeGate:
    """A fitted gate; ``coef`` and ``intercept`` act on ``(features - mean) / scale``, where
    ``features`` is the mean of the pooled features over ``views``."""

    classes: tuple[str, ...]
    mean: np.ndarray         # (d,)
    scale: np.ndarray        # (d,)
    coef: np.ndarray         # (k, d)
    intercept: np.ndarray    # (k,)
    temperature: float
    threshold: float         # on calibrated P(dermoscopic)
    views: tuple[str, ...] = ("id",)   # views whose features are averaged (models.features.VIEWS)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, (n, k) in the order of ``classes``."""
        x = (np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean) / self.scale
        logits = (x @ self.coef.T + self.intercept) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def classify(self, features: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(image type per row, calibrated probability of that type, all probabilities)."""
        p = self.probabilities(features)
        d = self.classes.index(DERMOSCOPIC)
        others = [i for i in range(len(self.classes)) if i != d]
        types, conf = [], np.empty(len(p))
        for i, row in enumerate(p):
            j = d if row[d] >= self.threshold else max(others, key=lambda k: row[k])
            types.append(self.classes[j])
            conf[i] = row[j]
        return types, conf, p

    def save(self, path: str | os.PathLike[str]) -> None:
        np.savez(path, classes=np.array(self.classes), mean=self.mean, scale=self.scale, coef=self.coef,
                 intercept=self.intercept, temperature=np.float64(self.temperature),
                 threshold=np.float64(self.threshold), views=np.array(self.views))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImageTypeGate:
        with np.load(Path(path), allow_pickle=False) as z:
            # Gates saved before ``views`` existed read the plain view.
            views = tuple(str(v) for v in z["views"]) if "views" in z.files else ("id",)
            return cls(tuple(str(c) for c in z["classes"]), z["mean"], z["scale"], z["coef"], z["intercept"],
                       float(z["temperature"]), float(z["threshold"]), views)


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature that minimises the validation negative log-likelihood."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def fit_gate(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    classes: tuple[str, ...] = IMAGE_TYPES,
    max_false_flag: float = 0.005,
    c: float = 0.05,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
    views: tuple[str, ...] = ("id",),
) -> ImageTypeGate:
    """Fit the gate: labels are indices into ``classes``; every class needs train and val rows.

    Classes are weighted equally (dermoscopic images outnumber the others 20 to 1). The
    threshold is the ``max_false_flag`` quantile of the validation dermoscopic images'
    P(dermoscopic), capped at 0.5 so a clearly non-dermoscopic image is never called one.
    ``sample_weight`` (per training row) multiplies the class balancing. ``X_val`` holds what
    the gate will read (the mean over ``views``, recorded in the gate so the Predictor reads the
    same); ``X_train`` may be single views (the gate is linear: reading the mean of the features
    is averaging its logits over the views).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y_train, y_val = np.asarray(y_train, dtype=int), np.asarray(y_val, dtype=int)
    for name, y in (("training", y_train), ("validation", y_val)):
        missing = [classes[k] for k in range(len(classes)) if not np.any(y == k)]
        if missing:
            raise ValueError(f"the gate's {name} set has no {', '.join(missing)} images")
    if DERMOSCOPIC not in classes:
        raise ValueError(f"the gate needs a {DERMOSCOPIC!r} class")
    scaler = StandardScaler().fit(X_train)
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(X_train), y_train, sample_weight=sample_weight)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    coef, intercept = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if len(classes) == 2:   # scikit-learn stores one logit (class 1 vs 0) for two classes
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    gate = ImageTypeGate(classes, scaler.mean_.astype(np.float64), scale.astype(np.float64),
                         coef, intercept, 1.0, 0.5, tuple(views))
    x_val = (np.asarray(X_val, dtype=np.float64) - gate.mean) / gate.scale
    gate.temperature = _fit_temperature(x_val @ gate.coef.T + gate.intercept, y_val)
    d = classes.index(DERMOSCOPIC)
    p_derm = gate.probabilities(X_val)[y_val == d, d]
    gate.threshold = float(min(0.5, np.quantile(p_derm, max_false_flag)))
    return gate

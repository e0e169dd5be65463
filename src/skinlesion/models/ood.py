"""Out-of-distribution flags: Mahalanobis distance in the backbone's feature space.

A photo of a cat or a rocket lands far from the cloud of dermoscopic training features.
We fit a shrunk covariance (Ledoit-Wolf, scikit-learn) on training features once, store
mean and precision in the bundle, and flag images whose distance exceeds a quantile of the
validation distances.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class OODDetector:
    mean: np.ndarray        # (d,)
    precision: np.ndarray   # (d, d)
    threshold: float        # squared distance above which an image is flagged
    quantile: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``features``."""
        d = np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean
        # (d @ P) * d summed per row: a BLAS product (a three-operand einsum would loop in C
        # without BLAS, minutes for the tens of thousands of rows an evaluation scores).
        return np.sum((d @ self.precision) * d, axis=1)

    def is_ood(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) > self.threshold

    def save(self, path: str | os.PathLike[str]) -> None:
        np.savez(path, mean=self.mean, precision=self.precision,
                 threshold=np.float64(self.threshold), quantile=np.float64(self.quantile))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OODDetector:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(z["mean"], z["precision"], float(z["threshold"]), float(z["quantile"]))


# Fewer training images than this give no usable covariance estimate for the distance.
MIN_TRAIN_FEATURES = 10


def fit_ood(train_features: np.ndarray, val_features: np.ndarray, quantile: float = 0.995) -> OODDetector:
    """Fit on training features; threshold = ``quantile`` of held-out validation distances.

    Using held-out distances (not the training ones, which are optimistically small) keeps
    the in-distribution false-flag rate near ``1 - quantile``.
    """
    from sklearn.covariance import LedoitWolf

    train_features = np.asarray(train_features, dtype=np.float64)
    if train_features.ndim != 2 or len(train_features) < MIN_TRAIN_FEATURES:
        raise ValueError(f"OOD statistics need at least {MIN_TRAIN_FEATURES} training feature vectors")
    lw = LedoitWolf().fit(train_features)
    det = OODDetector(lw.location_, lw.precision_, np.inf, quantile)
    ref = det.distance(val_features if len(val_features) else train_features)
    det.threshold = float(np.quantile(ref, quantile))
    return det

"""Warm a freshly loaded :class:`~skinlesion.serving.inference.Predictor` before it takes traffic.

Loading a bundle is only part of a cold start: the first ``predict`` traces and compiles the
inference graph (with dihedral TTA, one batch of 8 views) and the first Grad-CAM builds and traces
the explainer's gradient graph. Running both once on a generated lesion image moves that cost from
the first user's request to the server's start (``gunicorn.conf.py`` does it in every worker).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from skinlesion.serving.inference import Prediction

__all__ = ["WARM_UP_METHOD", "WarmUpReport", "warm_up", "warm_up_image"]

# The explanation every result page shows by default; the slow methods (Score-CAM, SmoothGrad)
# are not warmed: they run under a time budget and are opt-in.
WARM_UP_METHOD = "gradcam"


class _Servable(Protocol):
    input_size: int

    def predict(self, image: object) -> Prediction: ...

    def explain(self, image: object, method: str = "gradcam") -> Any: ...


@dataclass(frozen=True)
class WarmUpReport:
    """What the warm-up did: the model's name and the time of each step (milliseconds)."""

    model: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for ``/readyz`` and the worker's log line)."""
        return {"model": self.model, "warm_up_ms": {k: round(v, 1) for k, v in self.timings_ms.items()}}


def warm_up_image(size: int, seed: int = 0) -> bytes:
    """A generated dermoscopy-like lesion as JPEG bytes, so warm-up also exercises the decoder."""
    from PIL import Image

    from skinlesion.data.synth import synth_image

    buf = io.BytesIO()
    Image.fromarray(synth_image(1, np.random.default_rng(seed), max(int(size), 32))).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def warm_up(predictor: _Servable, method: str = WARM_UP_METHOD) -> WarmUpReport:
    """Run one prediction and one ``method`` explanation; return their timings.

    Errors propagate: a bundle that cannot predict must not be reported ready.
    """
    image = warm_up_image(predictor.input_size)
    t0 = time.perf_counter()
    prediction = predictor.predict(image)
    t1 = time.perf_counter()
    predictor.explain(image, method)
    t2 = time.perf_counter()
    return WarmUpReport(prediction.model, {"predict": 1000 * (t1 - t0), method: 1000 * (t2 - t1)})

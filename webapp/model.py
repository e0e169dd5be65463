"""The one Predictor of a web-app process: chosen once, loaded lazily, shared by all requests."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import current_app

from skinlesion.bundle.format import BundleError, default_bundle
from skinlesion.serving.inference import Predictor


class ModelUnavailable(RuntimeError):
    """No usable model bundle; ``message`` tells the user how to get one (HTTP 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelHolder:
    """Lazily loads one :class:`Predictor` per process and serialises inference on it.

    ``path`` is the bundle to serve; ``None`` means ``SKINLESION_MODEL``, else the newest
    bundle under ``models/`` (decided at the first load, then fixed for the process).
    A failed load is *not* remembered, so a bundle trained while the server runs is picked
    up by the next request without a restart.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 loader: Callable[[str | os.PathLike[str] | None], Predictor] = Predictor.from_bundle) -> None:
        self.path = Path(path) if path else None
        self._loader = loader
        self._predictor: Predictor | None = None
        self._load_lock = threading.Lock()
        # Keras models and tf-keras-vis visualisers are not documented as thread safe, and the
        # SmoothGrad explainer temporarily swaps NumPy's global RNG, so one request at a time
        # uses the model; gunicorn workers (processes) give the parallelism.
        self._infer_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the model is already in memory (never triggers a load)."""
        return self._predictor is not None

    def candidate(self) -> Path | None:
        """The bundle a load would use, found without loading TensorFlow; None if there is none."""
        if self._predictor is not None:
            return self._predictor.bundle.path
        if self.path is not None:
            return self.path
        return default_bundle()

    def get(self) -> Predictor:
        """The loaded Predictor (loading it on first use); raises :class:`ModelUnavailable`."""
        predictor = self._predictor
        if predictor is not None:
            return predictor
        with self._load_lock:
            if self._predictor is None:
                try:
                    self._predictor = self._loader(self.path)
                except BundleError as exc:
                    raise ModelUnavailable(str(exc)) from exc
            return self._predictor

    def unavailable_reason(self) -> str | None:
        """Why no model can be served, or None when one is loaded or a bundle is there to load.

        Cheap: it only loads (and so fails fast) when there is no bundle at all, which gives the
        Predictor's own how-to-train message without repeating its wording here.
        """
        if self._predictor is not None:
            return None
        found = self.candidate()
        if found is not None and found.exists():
            return None
        try:
            self.get()
        except ModelUnavailable as exc:
            return exc.message
        return None

    @contextmanager
    def inference(self) -> Iterator[Predictor]:
        """``with holder.inference() as predictor:`` runs model calls one at a time."""
        predictor = self.get()
        with self._infer_lock:
            yield predictor


def holder() -> ModelHolder:
    """The :class:`ModelHolder` of the running app (``create_app`` puts it in the app's extensions)."""
    return current_app.extensions["skinlesion_model"]

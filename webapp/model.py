"""The one Predictor of a web-app process: chosen once, loaded lazily, shared by all requests."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from flask import current_app

from skinlesion.bundle.format import BundleError, resolve_default_bundle
from skinlesion.serving.budget import BudgetRunner, Deadline
from skinlesion.serving.inference import Predictor
from skinlesion.serving.warmup import WarmUpReport, warm_up

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelUnavailable(RuntimeError):
    """No usable model bundle; ``message`` tells the user how to get one (HTTP 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelHolder:
    """Lazily loads one :class:`Predictor` per process and serialises inference on it.

    ``path`` is the bundle to serve; ``None`` means the default model
    (:func:`~skinlesion.bundle.format.resolve_default_bundle`: ``SKINLESION_MODEL``, else
    ``models/<config.DEFAULT_MODEL>``; decided at the first load, then fixed for the process).
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
        # Readiness: set once warm_up() has predicted and explained once (gunicorn.conf.py).
        self._warm: WarmUpReport | None = None
        self._warm_error: str | None = None
        self._warm_lock = threading.Lock()
        self._warm_thread: threading.Thread | None = None
        self._warm_thread_lock = threading.Lock()
        # Slow explanations run here under a time budget (skinlesion.serving.budget).
        self.budget = BudgetRunner("skinlesion-explain")

    @property
    def loaded(self) -> bool:
        """Whether the model is already in memory (never triggers a load)."""
        return self._predictor is not None

    def candidate(self) -> Path | None:
        """The bundle a load would use, found without loading TensorFlow (it may not exist yet)."""
        if self._predictor is not None:
            return self._predictor.bundle.path
        if self.path is not None:
            return self.path
        return resolve_default_bundle(must_exist=False)

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

    def within(self, deadline: Deadline, what: str, fn: Callable[[Predictor], T]) -> T:
        """``fn(predictor)`` under the inference lock, or BudgetExceeded once ``deadline`` passes.

        ``fn`` runs in :attr:`budget`'s thread and takes the inference lock there, so an abandoned
        call keeps the model to itself until it ends, as any other request would. ``what`` names
        the work in the error message (e.g. "The Score-CAM heat map").
        """
        def work() -> T:
            with self.inference() as predictor:
                return fn(predictor)

        return self.budget.run(work, deadline, what=what)

    # -- readiness ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether :meth:`warm_up` has completed (the model predicted and explained once)."""
        return self._warm is not None

    @property
    def warm_report(self) -> WarmUpReport | None:
        """What the completed warm-up measured (None before)."""
        return self._warm

    def warm_up(self) -> WarmUpReport:
        """Load the model, run one prediction and one Grad-CAM, then report ready.

        Idempotent and thread safe; raises :class:`ModelUnavailable` (no or broken bundle) or the
        model's own error, which :meth:`not_ready_reason` then reports.
        """
        with self._warm_lock:
            if self._warm is not None:
                return self._warm
            try:
                with self.inference() as predictor:
                    report = warm_up(predictor)
            except ModelUnavailable as exc:
                self._warm_error = exc.message
                raise
            except Exception as exc:
                self._warm_error = f"the model failed its warm-up ({type(exc).__name__}: {exc})"
                raise
            self._warm, self._warm_error = report, None
            return report

    def start_warm_up(self) -> bool:
        """Warm up in a background thread unless ready or already warming; True if one started.

        For servers started without ``gunicorn.conf.py`` (``flask run``) and for a bundle trained
        after the start: the readiness probe itself starts the warm-up it is waiting for.
        """
        with self._warm_thread_lock:
            if self.ready or (self._warm_thread is not None and self._warm_thread.is_alive()):
                return False
            self._warm_thread = threading.Thread(target=self._warm_quietly, name="skinlesion-warm-up", daemon=True)
            self._warm_thread.start()
            return True

    def _warm_quietly(self) -> None:
        try:
            self.warm_up()
        except Exception:  # recorded in _warm_error and reported by /readyz; nothing to raise to
            log.warning("background warm-up failed: %s", self._warm_error)

    def not_ready_reason(self) -> str:
        """Why this process is not ready yet (for /readyz's 503)."""
        if self._warm_thread is not None and self._warm_thread.is_alive():
            text = "warming up: loading the model and running one prediction and one Grad-CAM"
            return text + (f" (the previous attempt failed: {self._warm_error})" if self._warm_error else "")
        return self._warm_error or self.unavailable_reason() or "not warmed up yet"


def holder() -> ModelHolder:
    """The :class:`ModelHolder` of the running app (``create_app`` puts it in the app's extensions)."""
    return current_app.extensions["skinlesion_model"]

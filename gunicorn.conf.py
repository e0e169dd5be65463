"""gunicorn settings for the web app: ``gunicorn -c gunicorn.conf.py`` (``make webapp``, the container).

Every worker loads the model and runs one prediction and one Grad-CAM on a generated lesion image
(``post_worker_init``) *before* it accepts its first connection: a sync worker only starts
accepting after this hook returns, so no request ever reaches a cold worker and the first user does
not pay for loading TensorFlow and tracing the graphs. ``GET /readyz`` answers 200 from then on
(503 in a worker whose warm-up failed, e.g. no bundle yet, with the reason); ``GET /healthz`` is
liveness only. Options given on the command line override these (``--bind``, ``--workers``).
"""
from __future__ import annotations

import json

wsgi_app = "webapp:create_app()"
bind = ["127.0.0.1:8000"]
# Inference is CPU-bound and serialised per process (webapp.model.ModelHolder): parallelism
# comes from worker processes. Two suit the 2-core development machines; use about one per core.
workers = 2
# The worker's heartbeat starts after post_worker_init, so this timeout must also cover the
# warm-up (TensorFlow import, bundle load and checksums, graph tracing: 10-40 s on 2 cores).
timeout = 120
graceful_timeout = 30
# TensorFlow must never be imported by the master before fork: each worker loads its own model.
preload_app = False


def post_worker_init(worker) -> None:
    """Warm this worker's model before it takes traffic (see the module docstring)."""
    holder = worker.wsgi.extensions["skinlesion_model"]
    try:
        report = holder.warm_up()
    except Exception:
        # Never fail the boot: the pages explain how to train a model, /readyz says why it is
        # not ready, and polling /readyz retries the warm-up (e.g. once a bundle is trained).
        worker.log.warning("worker %s not warmed up, /readyz answers 503: %s", worker.pid, holder.not_ready_reason())
        return
    worker.notify()
    worker.log.info("worker %s warmed up: %s", worker.pid, json.dumps(report.to_dict()))

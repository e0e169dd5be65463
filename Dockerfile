# syntax=docker/dockerfile:1
# skinlesion web app (gunicorn, every worker warmed up before traffic) and Voila dashboard, CPU only.
# A research tool, not a medical device.
#
#   docker build -t skinlesion .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/models:/models:ro" \
#       -e SKINLESION_MODEL=/models/ens-lite0-s1-s1lc2-linear-tta skinlesion
#
# No model is baked in: bundles are mounted read-only at /models and SKINLESION_MODEL names the one
# to serve (default: /models/<skinlesion.config.DEFAULT_MODEL>, an ensemble that names its member
# bundles beside it). To bake bundles in instead, build the "baked" target with a folder of bundles
# as the named build context "bundles" and BUNDLE naming the one to serve (BuildKit, or podman >= 4.x):
#   docker build --target baked --build-context bundles=models/ --build-arg BUNDLE=<run> -t skinlesion:baked .
# compose.yaml runs the web app and the dashboard side by side. README "Deploy" has the details.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS app
# A virtual environment, so the same steps work on python:*-slim and on Debian's own python3
# (which refuses system-wide pip installs).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /app
# The dependencies first, from pyproject.toml alone (the slow layer, ~3 GB: TensorFlow, Keras,
# Jupyter), so that a README or source edit does not install them again; only a change to
# pyproject.toml does. [project].dependencies is read with tomllib (Python >= 3.11: python:3.11 and
# Debian bookworm's python3 have it). They give CPU TensorFlow: the CUDA libraries are only in
# tensorflow[and-cuda].
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm requirements.txt
# Then the package itself (seconds), without resolving the dependencies again.
COPY README.md LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir . --no-deps \
    && useradd --system --uid 10001 --gid 0 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin skinlesion
COPY webapp ./webapp
COPY dashboards ./dashboards
# The committed evaluation reports: the model card page quotes them.
COPY reports ./reports
COPY gunicorn.conf.py ./
# The code stays root-owned and read-only for the app user; everything it writes goes to /tmp
# (compose mounts a tmpfs there and runs the container with a read-only root file system).
ENV SKINLESION_ROOT=/app \
    SKINLESION_MODELS_DIR=/models \
    SKINLESION_DATA_HOME=/tmp/skinlesion \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    JUPYTER_RUNTIME_DIR=/tmp/jupyter \
    TF_CPP_MIN_LOG_LEVEL=2
USER 10001
EXPOSE 8000 8866
# Ready, not just alive: 200 only once a worker has loaded the model and run a prediction and a
# Grad-CAM (the first minute or so is the warm-up; start-period covers it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm"]

# Opt-in: bake bundles into the image (docker build --target baked --build-context bundles=DIR
# --build-arg BUNDLE=<run> .). A folder, not one bundle, because an ensemble names its members by
# relative path: DIR must hold BUNDLE and, for an ensemble, its members beside it.
FROM app AS baked
ARG BUNDLE
# "bundles" is a named build context, not a stage.
# hadolint ignore=DL3022
COPY --from=bundles . /models
ENV SKINLESION_MODEL=/models/${BUNDLE}

# The default target: no model inside; bundles are mounted at /models.
FROM app AS mounted

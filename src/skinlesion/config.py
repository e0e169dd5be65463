"""Project paths and settings, resolved from environment variables or the project root.

Everything that touches the file system asks this module where things live, so notebooks,
the CLI, the web app and the tests agree without hard-coded paths.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The repository root (``SKINLESION_ROOT`` overrides; else two levels above the package)."""
    env = os.environ.get("SKINLESION_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    root = PACKAGE_DIR.parent.parent
    if (root / "pyproject.toml").exists():
        return root
    # Installed as a wheel, not from a checkout: fall back to the working directory.
    return Path.cwd()


def data_dir() -> Path:
    """``data/`` under the project root: raw data, caches and generated data (git-ignored)."""
    return Path(os.environ.get("SKINLESION_DATA_HOME", project_root() / "data")).expanduser()


def default_raw_dataset() -> Path:
    """Where ``skinlesion data download`` puts the Kaggle dataset."""
    return data_dir() / "raw" / "melanoma_cancer_dataset"


def shared_data_dir() -> Path:
    """The read-only data folder beside the checkout (``SKINLESION_SHARED_DATA`` overrides)."""
    env = os.environ.get("SKINLESION_SHARED_DATA")
    return Path(env).expanduser() if env else project_root().parent / "shared" / "data"


def shared_dataset() -> Path:
    """The read-only copy of the Kaggle dataset beside the checkout (development and CI)."""
    return shared_data_dir() / "melanoma_cancer_dataset"


# Each data source's root: its own environment variable, else data/raw/<folder>, else the
# shared copy beside the checkout. The Kaggle set keeps SKINLESION_DATA_DIR for compatibility.
SOURCE_ENV = {
    "kaggle": "SKINLESION_DATA_DIR",
    "ham10000": "SKINLESION_HAM10000_DIR",
    "isic2017": "SKINLESION_ISIC2017_DIR",
    "pad_ufes_20": "SKINLESION_PAD_UFES_20_DIR",
}
SOURCE_FOLDER = {
    "kaggle": "melanoma_cancer_dataset",
    "ham10000": "ham10000",
    "isic2017": "isic2017",
    "pad_ufes_20": "pad_ufes_20",
}


def source_root(name: str) -> Path:
    """Where the data source ``name`` lives (it may not exist: callers check and explain)."""
    if name not in SOURCE_FOLDER:
        raise KeyError(f"unknown data source {name!r}; known: {', '.join(SOURCE_FOLDER)}")
    env = os.environ.get(SOURCE_ENV[name])
    if env:
        return Path(env).expanduser()
    local = data_dir() / "raw" / SOURCE_FOLDER[name]
    if local.exists():
        return local
    return shared_data_dir() / SOURCE_FOLDER[name]


# The documented default model: the run id ``skinlesion run`` (``make run``) gives the ensemble of
# the default member recipes (training.train.DEFAULT_MEMBERS) trained on the three dermoscopic
# sources, i.e. the bundle ``models/<DEFAULT_MODEL>`` beside its members; chosen by
# leave-one-source-out (reports/generalisation/summary.json names the same recipe, and a test checks
# they agree). Served when SKINLESION_MODEL is unset: skinlesion.bundle.format.resolve_default_bundle
# is the one place that decides.
DEFAULT_MODEL = "ens-lite0-s1-s1lc2-linear-tta"


def model_env() -> str | None:
    """``SKINLESION_MODEL``: the bundle the web app, dashboard and CLI serve instead of
    ``models/<DEFAULT_MODEL>`` (None when unset)."""
    return os.environ.get("SKINLESION_MODEL") or None


# Inference backends, defined here (the bottom layer) so that reading the variable needs no
# serving code; skinlesion.serving.backends implements them.
BACKENDS = ("keras", "tflite", "tflite-dynamic")


def backend() -> str:
    """``SKINLESION_BACKEND``: how the web app runs the model: ``keras`` (default), ``tflite`` or
    ``tflite-dynamic`` (the bundle's TFLite export, made with ``skinlesion export``)."""
    raw = os.environ.get("SKINLESION_BACKEND", "").strip().lower() or "keras"
    if raw not in BACKENDS:
        raise ValueError(f"SKINLESION_BACKEND must be one of {', '.join(BACKENDS)}, got {raw!r}")
    return raw


# How stage-1 features are computed (skinlesion.models.features): ``auto`` converts the frozen
# extractor to TFLite in memory when a job is large enough to repay the conversion.
FEATURE_BACKENDS = ("auto", "keras", "tflite")


def feature_backend() -> str:
    """``SKINLESION_FEATURE_BACKEND``: ``auto`` (default), ``keras`` or ``tflite``."""
    raw = os.environ.get("SKINLESION_FEATURE_BACKEND", "").strip().lower() or "auto"
    if raw not in FEATURE_BACKENDS:
        raise ValueError(f"SKINLESION_FEATURE_BACKEND must be one of {', '.join(FEATURE_BACKENDS)}, got {raw!r}")
    return raw


def cpu_threads() -> int:
    """CPU cores this process may use (thread count for the TFLite interpreters)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def tf_config() -> str | None:
    """``TF_CONFIG``: TensorFlow's standard cluster description (JSON) for ``skinlesion train
    --distributed``; TensorFlow's MultiWorkerMirroredStrategy reads the same variable itself."""
    return os.environ.get("TF_CONFIG") or None


DEFAULT_EXPLAIN_TIME_BUDGET_S = 20.0
# The explanations that take seconds to tens of seconds on a CPU; they run under that budget in the
# web app and the dashboard (Grad-CAM and Grad-CAM++ take well under a second).
EXPLAIN_BUDGETED_METHODS = ("scorecam", "smoothgrad")


def explain_time_budget_s() -> float:
    """``SKINLESION_EXPLAIN_TIME_BUDGET_S``: seconds a slow explanation (Score-CAM, SmoothGrad) may
    take per web request before the server answers 503, and per dashboard upload before the
    dashboard shows the prediction without it (default 20; must be > 0)."""
    raw = os.environ.get("SKINLESION_EXPLAIN_TIME_BUDGET_S", "").strip()
    if not raw:
        return DEFAULT_EXPLAIN_TIME_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"SKINLESION_EXPLAIN_TIME_BUDGET_S must be a number of seconds > 0, got {raw!r}")
    return value


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Dataset root: the argument, else ``SKINLESION_DATA_DIR``, else ``data/raw/...``, else the shared copy."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("SKINLESION_DATA_DIR")
    if env:
        return Path(env).expanduser()
    local = default_raw_dataset()
    return local if local.exists() or not shared_dataset().exists() else shared_dataset()


def models_dir() -> Path:
    """Where model bundles are written (``SKINLESION_MODELS_DIR`` overrides)."""
    return Path(os.environ.get("SKINLESION_MODELS_DIR", project_root() / "models")).expanduser()


def reports_dir() -> Path:
    """Where evaluation reports are written (``SKINLESION_REPORTS_DIR`` overrides)."""
    return Path(os.environ.get("SKINLESION_REPORTS_DIR", project_root() / "reports")).expanduser()


def cache_dir() -> Path:
    """Feature and converted-weight caches (``SKINLESION_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("SKINLESION_CACHE_DIR", data_dir() / "cache")).expanduser()


def display_path(path: str | os.PathLike[str]) -> str:
    """A path for logs and notebooks: relative to the project root where possible, so outputs
    do not carry one machine's directory layout."""
    p = Path(path).resolve()
    root = project_root().resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return os.path.relpath(p, root) if p.anchor == root.anchor else str(p)

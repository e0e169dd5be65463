"""Fixtures shared by the whole test suite.

* The repository root is importable (for the ``webapp`` package) and so is ``tests/``
  (for ``hostile``), however pytest is started.
* ``SKINLESION_MODELS_DIR`` points at a temporary folder for the whole session, so no test
  ever reads or writes the developer's ``models/``.
* Trained models are built once per session and shared: ``tiny_bundle`` (efficientnet_lite0 at
  96 px on the real data when present) and ``synth_bundles`` (two 64 px bundles on one split of a
  generated dataset, for training, ensemble and evaluation tests). Any test that uses one of
  them is marked ``slow`` automatically, so ``make test-fast`` trains nothing.
* ``chromium`` is the one headless browser of the browser tests: skipped locally when Debian's
  ``chromium`` or the playwright package is missing, a failure in CI (``CI=true``).
* ``dermoscopic_jpeg`` is the bytes of one dermoscopic image (real when the data is there).
"""
from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
for _path in (REPO_ROOT, TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Small enough to train in well under a minute on two CPU cores, real enough to predict,
# explain, calibrate and flag out-of-distribution images like a full model.
TINY_BUNDLE_CONFIG = dict(
    backbone="efficientnet_lite0",
    input_size=96,
    max_train_per_class=40,
    max_eval_per_class=20,
    head_units=0,
    progress=False,
)


# Fixtures that train a model: tests using them (directly or through another fixture) are slow.
TRAINED_FIXTURES = frozenset({"tiny_bundle", "synth_bundles"})
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a trained fixture ``slow`` (so ``-m "not slow"`` trains nothing)."""
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def isolated_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, empty ``SKINLESION_MODELS_DIR`` for the session (tests may override it)."""
    path = tmp_path_factory.mktemp("models-dir")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKINLESION_MODELS_DIR", str(path))
        yield path


def real_data_dir() -> Path | None:
    """The real dataset (``SKINLESION_DATA_DIR``, else the shared copy), or None when absent."""
    from skinlesion.config import shared_dataset

    for candidate in (os.environ.get("SKINLESION_DATA_DIR"), shared_dataset()):
        if candidate and (Path(candidate) / "train").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def training_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dataset when present, else a small generated one (flagged SYNTHETIC)."""
    found = real_data_dir()
    if found is not None:
        return found
    from skinlesion.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth-data") / "ds",
                            n_train_per_class=40, n_test_per_class=10, size=96, seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(training_data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                isolated_models_dir: Path) -> Path:
    """Folder of a small trained bundle, in its own folder (not the session's models dir).

    Treat it as read-only: copy it (``shutil.copytree``) before changing anything.
    """
    from skinlesion.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-bundle")
    return train(TrainConfig(data_dir=str(training_data_dir), out_dir=str(out), **TINY_BUNDLE_CONFIG))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset (24 train and 8 test images per class, 64 px), flagged SYNTHETIC."""
    from skinlesion.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", n_train_per_class=24, n_test_per_class=8,
                            size=64, seed=0)


def synth_train_config(root: Path, out: Path, **changes: Any) -> Any:
    """The quick training configuration of the synthetic bundles (64 px, head only)."""
    from skinlesion.training.train import TrainConfig

    base: dict[str, Any] = dict(backbone="efficientnet_lite0", data_dir=str(root), input_size=64, head_units=8,
                                head_epochs=15, patience=5, out_dir=str(out), progress=False,
                                splits_file=str(out / "splits.csv"))
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def synth_bundles(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two bundles trained on the same split of ``synth_root``: "a" (hidden layer of 8, trained on
    two views) and "b" (no hidden layer). Read-only: copy before changing anything."""
    from skinlesion.training.train import train

    out = tmp_path_factory.mktemp("synth-models")
    a = train(synth_train_config(synth_root, out, run_id="a", views=("id", "fh")))
    b = train(synth_train_config(synth_root, out, run_id="b", head_units=0))
    return a, b


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser).

    Skipped locally when the browser or playwright is missing; in CI that is a failure, so the
    browser tests can never pass silently. Request it before any fixture that trains or starts
    a server, so a skip costs nothing.
    """
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    if path is None:
        problem = ("Chromium is not installed, so the browser tests cannot run. Install it with "
                   "`apt-get install -y chromium` (Debian/Ubuntu) and run the tests again.")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "The playwright Python package is not installed (pip install -e '.[test]')."
    if problem is not None:
        if IN_CI:
            pytest.fail(problem + " In CI the browser tests must run, not skip.", pytrace=False)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def dermoscopic_jpeg() -> bytes:
    """One real dermoscopic JPEG from the shared dataset, else a generated lesion image."""
    from hostile import real_dermoscopic_jpeg

    data = real_dermoscopic_jpeg()
    if data is not None:
        return data
    import numpy as np
    from PIL import Image

    from skinlesion.data.synth import synth_image

    buf = io.BytesIO()
    Image.fromarray(synth_image(1, np.random.default_rng(0), 224)).save(buf, "JPEG", quality=92)
    return buf.getvalue()

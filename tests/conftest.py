"""Fixtures shared by the whole test suite.

* The repository root is importable (for the ``webapp`` package) and so is ``tests/``
  (for ``hostile``), however pytest is started.
* ``SKINLESION_MODELS_DIR`` points at a temporary folder for the whole session, so no test
  ever reads or writes the developer's ``models/``.
* ``tiny_bundle`` is one small but real trained model bundle (efficientnet_lite0 at 96 px).
* ``dermoscopic_jpeg`` is the bytes of one dermoscopic image (real when the data is there).
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

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

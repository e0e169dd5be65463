"""Every reader of image files goes through the intake's size-limited read.

A folder holding two small real JPEGs and one oversized file named ``.jpg`` (a link to a sparse file
just over :data:`~skinlesion.data.intake.MAX_BYTES`, as QA's 40 GB one: it costs no disk) must be
processed as far as each reader goes with an unreadable image: feature extraction, the parity check
and ``--group-by`` skip and report it, the localisation measurement and the latency probe stop with
the intake's 413 refusal; none of them opens the big file, so none can end in a MemoryError.
None of these tests trains a model: the models and predictors are stand-ins.
"""
from __future__ import annotations

import builtins
import os
import pathlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.data.intake import MAX_BYTES, ImageRejected, load_for_model
from skinlesion.metrics.calibration import DecisionPolicy
from skinlesion.serving.inference import Prediction

SIZE = 32
POLICY = DecisionPolicy(threshold=0.3, band_low=0.1, band_high=0.6, target_sensitivity=0.95)


@pytest.fixture
def folder(tmp_path: Path) -> SimpleNamespace:
    """``images/`` with a.jpg, b.jpg (48x48 JPEGs) and huge.jpg, a link to a sparse file of MAX_BYTES + 1."""
    images = tmp_path / "images"
    images.mkdir()
    good = []
    for i, name in enumerate(("a.jpg", "b.jpg")):
        f = images / name
        pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(f, "JPEG", quality=90)
        good.append(f)
    target = tmp_path / "huge.bin"
    with open(target, "wb") as fh:
        fh.truncate(MAX_BYTES + 1)
    big = images / "huge.jpg"
    big.symlink_to(target)
    return SimpleNamespace(good=good, big=big, target=target, files=[*good, big])


def _record(seen: list[str], file: Any) -> None:
    """Note that ``file`` is being opened; opening the oversized file or a device fails the test at
    once (an AssertionError, which no reader catches), so a regression cannot fill the memory."""
    if not isinstance(file, (str, bytes, os.PathLike)):
        return
    real = os.path.realpath(os.fsdecode(file))
    seen.append(real)
    assert not real.endswith(os.sep + "huge.bin") and not real.startswith("/dev/"), f"{real} was opened"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch, folder: SimpleNamespace) -> list[str]:
    """The real paths of every file opened from now on (``Path.open``, which ``read_bytes`` and the
    intake use, and ``open``); opening the oversized file or a device fails the test."""
    seen: list[str] = []
    path_open, plain_open = pathlib.Path.open, builtins.open

    def spy_path_open(self: pathlib.Path, *args: Any, **kwargs: Any) -> Any:
        _record(seen, self)
        return path_open(self, *args, **kwargs)

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        _record(seen, file)
        return plain_open(file, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", spy_path_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    return seen


def _never_opened(big_target: Path, opened: list[str]) -> bool:
    return os.path.realpath(big_target) not in opened


def _too_large(message: str) -> bool:
    return "huge.jpg" in message and "limit" in message


class MeanModel:
    """A stand-in feature extractor: the per-channel means of its input."""

    input_shape = (None, SIZE, SIZE, 3)
    output_shape = (None, 3)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(1, 2)).astype(np.float32)


def _prediction(p: float) -> Prediction:
    return Prediction(probability=p, raw_probability=p, decision=POLICY.decide(p), threshold=POLICY.threshold,
                      band=(POLICY.band_low, POLICY.band_high), out_of_distribution=False, ood_distance=0.5,
                      ood_threshold=1.0, model="stub", synthetic=False)


class StubPredictor:
    """Decodes what it is given as the Predictor does (the intake); the probability is a pixel mean."""

    input_size = SIZE
    policy = POLICY

    def predict_many(self, images: list, tta: bool | None = None) -> list[Prediction]:
        return [_prediction(float(load_for_model(x, SIZE).mean() / 255 * 0.9 + 0.05)) for x in images]

    def predict(self, image: Any, tta: bool | None = None) -> Prediction:
        return self.predict_many([image], tta=tta)[0]

    def explain(self, image: Any, method: str, **kwargs: Any) -> SimpleNamespace:
        arr = load_for_model(image, SIZE)
        return SimpleNamespace(heatmap=arr.mean(axis=2) / 255, views=["id"])


# --------------------------------------------------------------------------- stage-1 features (train)
def test_extract_features_skips_a_too_large_file_unread(folder, opened):
    from skinlesion.models.features import extract_features

    with pytest.warns(UserWarning, match="1 image"):
        feats, ok, errors = extract_features(MeanModel(), folder.files, backbone="fake", weights_tag=None,
                                             progress=False)
    assert ok.tolist() == [True, True, False]
    assert list(errors) == [2] and _too_large(errors[2])
    assert feats.shape == (3, 1, 3) and (feats[:2] > 0).all() and not feats[2].any()
    assert _never_opened(folder.target, opened)


def test_extract_features_skips_a_link_to_a_device(folder, opened):
    from skinlesion.models.features import extract_features

    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    dev = folder.good[0].parent / "zero.jpg"
    dev.symlink_to("/dev/zero")
    with pytest.warns(UserWarning, match="1 image"):
        _, ok, errors = extract_features(MeanModel(), [*folder.good, dev], backbone="fake", weights_tag=None,
                                         progress=False)
    assert ok.tolist() == [True, True, False]
    assert "not a regular file" in errors[2]


def test_image_batches_report_a_too_large_file_unread(folder, opened):
    from skinlesion.models.features import iter_image_batches

    (batch, idx, keys, errors), = list(iter_image_batches(folder.files, SIZE))
    assert batch.shape == (2, SIZE, SIZE, 3) and idx == [0, 1]
    assert list(errors) == [2] and _too_large(errors[2])
    assert keys[2] == "" and all(len(k) == 64 for k in keys[:2])
    assert _never_opened(folder.target, opened)


def test_distributed_extraction_reports_a_too_large_file_unread(folder, opened):
    from skinlesion.training.distributed import Cluster, MultiWorker

    worker = MultiWorker(Cluster(n_workers=1, rank=0, task="chief:0"), strategy=None)
    worker.all_reduce_sum = lambda a: np.asarray(a)  # type: ignore[method-assign]  # one worker: sum is itself
    with pytest.warns(UserWarning, match="1 image"):
        feats, ok, errors = worker.extract_features(MeanModel(), folder.files, backbone="fake", weights_tag=None,
                                                    progress=False)
    assert ok.tolist() == [True, True, False]
    assert list(errors) == [2] and _too_large(errors[2])
    assert _never_opened(folder.target, opened)


def test_feature_keys_hash_the_bounded_bytes(folder):
    """The cache key is the sha256 of the bytes the intake read: the whole file, for a good one."""
    import hashlib

    from skinlesion.models.features import iter_image_batches

    (_, _, keys, _), = list(iter_image_batches(folder.good, SIZE))
    assert keys == [hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.good]


# --------------------------------------------------------------------------- export --parity-data
def test_parity_check_skips_a_too_large_file_unread(folder, opened, caplog):
    from skinlesion.serving.export import parity_check

    bundle = SimpleNamespace(input_size=SIZE, ood_detector=lambda: None,
                             meta=SimpleNamespace(served_views=("id",), lesion_crop=False, crop_rule=0, temperature=1.0,
                                                  decision=None))

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return batch.mean(axis=(1, 2)), batch.mean(axis=(1, 2, 3))[:, None] / 255 * 0.9 + 0.05

    with caplog.at_level("WARNING", logger="skinlesion.serving.export"):
        out = parity_check(bundle, run, folder.files, tolerance=1e-4, reference=run)
    assert out["n_images"] == 2 and out["n_unreadable"] == 1 and out["passed"]
    assert any(_too_large(r.getMessage()) for r in caplog.records)
    assert _never_opened(folder.target, opened)


# --------------------------------------------------------------------------- predict --group-by
def test_group_prediction_counts_a_too_large_photo_unreadable(folder, opened):
    from skinlesion.serving.combine import predict_groups

    table = pd.DataFrame({"path": [str(f) for f in folder.files], "lesion_id": ["L1"] * 3})
    out = predict_groups(StubPredictor(), table)
    row = out.iloc[0]
    assert row["n_images"] == 3 and row["n_unreadable"] == 1 and row["n_used"] == 2
    assert row["probability"] is not None and _too_large(row["error"])
    assert _never_opened(folder.target, opened)


# --------------------------------------------------------------------------- explain-eval localisation
def _box_frame(files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f.stem for f in files], "file": [str(f) for f in files],
                         "label": [i % 2 for i in range(len(files))], "diagnosis": ["nv"] * len(files),
                         "top": 10.0, "bottom": 30.0, "left": 10.0, "right": 30.0})


def test_localisation_reads_each_image_once(folder, opened):
    from skinlesion.evaluation.localisation import BASELINE, measure_localisation

    table = measure_localisation(StubPredictor(), _box_frame(folder.good), ("gradcam",))
    assert len(table) == 4 and set(table["method"]) == {"gradcam", BASELINE}
    for f in folder.good:
        assert opened.count(os.path.realpath(f)) == 1


def test_localisation_refuses_a_too_large_file_unread(folder, opened):
    """Localisation scores every sampled image or stops (as with a corrupt one): a clear 413, no MemoryError."""
    from skinlesion.evaluation.localisation import measure_localisation

    with pytest.raises(ImageRejected) as info:
        measure_localisation(StubPredictor(), _box_frame(folder.files), ("gradcam",))
    assert info.value.status == 413 and _too_large(info.value.message)
    assert _never_opened(folder.target, opened)


# --------------------------------------------------------------------------- export --evaluate latency
def test_latency_image_is_read_bounded(folder, opened, monkeypatch):
    from skinlesion.evaluation import export_check
    from skinlesion.serving import inference

    monkeypatch.setattr(inference.Predictor, "from_bundle",
                        staticmethod(lambda path, backend="keras": SimpleNamespace(
                            input_size=SIZE, default_tta=False, predict=lambda arr: None)))
    out = export_check.one_image_latency(Path("b"), ["keras", "tflite"], folder.good[0], runs=2)
    assert set(out) >= {"keras", "tflite", "runs"}
    with pytest.raises(ImageRejected) as info:
        export_check.one_image_latency(Path("b"), ["keras"], folder.big, runs=1)
    assert info.value.status == 413
    assert _never_opened(folder.target, opened)



def test_hash_images_refuses_the_oversized_file_without_reading_it(folder, opened, tmp_path):
    from skinlesion.data.audit import hash_images
    from skinlesion.data.datasets import DataError

    with pytest.raises(DataError, match=r"1 of 3 images cannot be read or decoded.*huge\.jpg"):
        hash_images(folder.files, progress=False, cache=tmp_path / "hashes.npz")
    assert (tmp_path / "hashes.npz").is_file()  # what did hash is cached before the refusal
    table = hash_images(folder.good, progress=False, cache=tmp_path / "hashes.npz")
    assert len(table) == 2


def test_trap_images_skip_hidden_files_and_sub_folders(tmp_path):
    from skinlesion.evaluation.traps import benign_images

    root = tmp_path / "benign"
    for rel in ("a.jpg", "b.jpg", "malignant/m.jpg", "._a.jpg", ".ipynb_checkpoints/c.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40)).save(root / rel, "JPEG")
    files, _ = benign_images(root, n=None)
    assert [f.relative_to(root).as_posix() for f in files] == ["a.jpg", "b.jpg"]

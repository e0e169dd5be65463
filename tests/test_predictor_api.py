"""The Predictor's Python API refuses misuse with one clear error instead of a silent wrong answer.

Runs on a hand-made 32 px bundle (a tiny untrained CNN with the layers a bundle names), so
nothing is trained and these tests stay fast.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from skinlesion.bundle.format import BundleError, load, member_refs, write_bundle  # noqa: E402
from skinlesion.serving.inference import Predictor  # noqa: E402

SIZE = 32
DECISION = {"threshold": 0.5, "band_low": 0.45, "band_high": 0.55, "target_sensitivity": 0.95}


def _tiny_model() -> keras.Model:
    """Input "image" 0..255 -> Rescaling -> conv "last_conv_act" -> GAP "features" -> sigmoid."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv_act")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="malignant_probability")(x)
    return keras.Model(inputs, outputs, name="tiny")


def _edit(folder: Path, **changes: Any) -> Path:
    """``folder``'s bundle.json with ``changes`` merged in (bundle.json itself has no checksum)."""
    meta_file = folder / "bundle.json"
    meta = json.loads(meta_file.read_text())
    meta.update(changes)
    meta_file.write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loadable single bundle (read-only: :func:`_copy` it before editing)."""
    meta = {"backbone": "tiny", "input_size": SIZE, "feature_layer": "features",
            "last_conv_layer": "last_conv_act", "synthetic": True, "decision": DECISION}
    return write_bundle(meta, {"model.keras": _tiny_model()}, out_dir=tmp_path_factory.mktemp("bundles"),
                        run_id="tiny")


def _copy(bundle_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / name))


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor.from_bundle(bundle_dir)


def _lesion(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(40, 120, (SIZE, SIZE, 3))
    image[8:24, 8:24] = rng.uniform(150, 250, 3)
    return image.astype(np.uint8)


# ------------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("tta", ["no", "false", 1, 0, "dihedral"])
def test_tta_accepts_only_a_bool_or_none(predictor: Predictor, tta: Any) -> None:
    image = _lesion()
    for call in (lambda: predictor.predict(image, tta=tta),
                 lambda: predictor.predict_many([image], tta=tta),
                 lambda: predictor.predict_batch([], tta=tta),
                 lambda: predictor.explain(image, tta=tta),
                 lambda: predictor.explain_views("gradcam", tta)):
        with pytest.raises(TypeError, match="tta must be True, False or None"):
            call()


def test_tta_bools_still_work(predictor: Predictor) -> None:
    image = _lesion()
    plain = predictor.predict(image, tta=False).probability
    assert predictor.predict(image, tta=np.bool_(False)).probability == plain
    assert predictor.predict(image, tta=None).probability == plain  # this bundle's default: no TTA
    assert 0.0 <= predictor.predict(image, tta=True).probability <= 1.0


def test_a_single_path_is_refused_by_the_list_methods(predictor: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "lesion.png"
    Image.fromarray(_lesion()).save(path)
    for single in (str(path), path, path.read_bytes()):
        with pytest.raises(TypeError, match=r"predict_batch\(\) takes a list of file paths.*pass \[x\]"):
            predictor.predict_batch(single)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"predict_many\(\) takes a list of images"):
            predictor.predict_many(single)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a single ndarray"):
        predictor.predict_many(_lesion())  # type: ignore[arg-type]
    frame = predictor.predict_batch([path])
    assert frame["path"].tolist() == [str(path)] and frame["error"].tolist() == [""]
    # A batch array (N, H, W, 3) is a list of images.
    assert len(predictor.predict_many(np.stack([_lesion(0), _lesion(1)]))) == 2  # type: ignore[arg-type]


def test_no_images_give_no_predictions(predictor: Predictor) -> None:
    assert predictor.predict_many([]) == []
    frame = predictor.predict_batch([])
    assert frame.empty and "probability" in frame.columns


def test_explain_refuses_a_layer_name_and_says_where_the_layer_comes_from(predictor: Predictor) -> None:
    with pytest.raises(TypeError, match="layer explained comes from the bundle.*last_conv_layer"):
        predictor.explain(_lesion(), layer_name="last_conv_act")


def test_explain_takes_a_0_to_1_float_image(predictor: Predictor) -> None:
    # compute_heatmap refuses 0..1 floats and points here; the Predictor converts any image.
    image = _lesion()
    as_float = predictor.explain(image.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(as_float.heatmap, predictor.explain(image).heatmap)


def test_a_premultiplied_grey_alpha_image_is_predicted(predictor: Predictor) -> None:
    la = Image.fromarray(_lesion()).convert("LA")
    expected = predictor.predict(la).probability
    assert predictor.predict(la.convert("La")).probability == pytest.approx(expected, abs=1e-3)


# ----------------------------------------------------------- bundle.json against the model


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_size": 64}, r"input_size 64, but the model's input is 32x32 pixels"),
        ({"feature_layer": "nope"}, r"field feature_layer names the layer 'nope', but the model has no such layer"),
    ],
    ids=["input_size", "feature_layer"],
)
def test_a_bundle_json_that_disagrees_with_its_model_is_refused_at_load(
    bundle_dir: Path, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    folder = _edit(_copy(bundle_dir, tmp_path), **changes)
    with pytest.raises(BundleError, match=message) as info:
        Predictor.from_bundle(folder)
    assert str(folder) in str(info.value) and "bundle.json" in str(info.value)


def test_a_wrong_last_conv_layer_is_refused_when_explaining(bundle_dir: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_bundle(_edit(_copy(bundle_dir, tmp_path), last_conv_layer="nope"))
    assert 0.0 <= predictor.predict(_lesion()).probability <= 1.0  # predictions do not need it
    with pytest.raises(BundleError, match="field last_conv_layer names the layer 'nope'"):
        predictor.explain(_lesion())


def test_an_ensemble_checks_each_member(bundle_dir: Path, tmp_path: Path) -> None:
    good = _copy(bundle_dir, tmp_path, "good")
    bad = _edit(_copy(bundle_dir, tmp_path, "bad"), input_size=48)

    def ensemble(run_id: str, members: list[Path]) -> Path:
        meta = {"kind": "ensemble", "backbone": "ensemble(tiny)", "input_size": SIZE,
                "members": member_refs(members, tmp_path / run_id), "decision": DECISION}
        return write_bundle(meta, {"notes.txt": b"two tiny members\n"}, out_dir=tmp_path, run_id=run_id)

    served = Predictor(load(ensemble("ok", [good, _copy(bundle_dir, tmp_path, "other")])))
    assert len(served.members) == 2 and 0.0 <= served.predict(_lesion()).probability <= 1.0
    with pytest.raises(BundleError, match=r"bad: bundle.json says input_size 48"):
        Predictor(load(ensemble("mixed", [good, bad])))


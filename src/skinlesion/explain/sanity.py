"""Model-parameter randomisation test (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"):
a faithful explanation must change when the model's weights are re-drawn."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from skinlesion.explain.common import (
    RANDOMIZATION_SCOPES,
    check_inputs,
    check_threshold,
    is_input_or_preprocessing,
    positive_int,
    resolve_target,
    top_index,
)
from skinlesion.explain.gradcam import compute_heatmap
from skinlesion.models.quiet import quiet_tensorflow

if TYPE_CHECKING:
    import keras


def _weighted_layers(model: keras.Model) -> list[Any]:
    """Layers that hold learned weights, bottom to top (input preprocessing excluded)."""
    return [
        layer
        for layer in model.layers
        if layer.weights and not is_input_or_preprocessing(layer)
    ]

def _head_layers(model: keras.Model) -> list[Any]:
    top = top_index(model)
    return [layer for layer in _weighted_layers(model) if model.layers.index(layer) > top]

def _initializer_for(layer: Any, variable_name: str) -> Any | None:
    aliases = {
        "kernel": ("kernel_initializer", "depthwise_initializer"),
        "depthwise_kernel": ("depthwise_initializer",),
        "pointwise_kernel": ("pointwise_initializer",),
    }
    for attr in aliases.get(variable_name, (f"{variable_name}_initializer",)):
        initializer = getattr(layer, attr, None)
        if initializer is not None:
            return initializer
    return None

def _redraw(layer: Any, seed: int) -> list[np.ndarray]:
    """Fresh values for a layer's weights: its own initialisers (seeded), else N(0, std)."""
    import keras

    rng = np.random.default_rng(seed)
    values = []
    for offset, variable in enumerate(layer.weights):
        shape, dtype = tuple(variable.shape), variable.dtype
        initializer = _initializer_for(layer, variable.name.split("/")[-1])
        if initializer is not None:
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed * 1009 + offset
            fresh = type(initializer).from_config(config)
            values.append(keras.ops.convert_to_numpy(fresh(shape, dtype=dtype)))
        else:
            current = keras.ops.convert_to_numpy(variable)
            std = float(np.std(current)) or 0.05
            values.append(rng.normal(0.0, std, shape).astype(current.dtype))
    return values

def randomize_model(
    model: keras.Model,
    scope: str = "cascade",
    n_layers: int | None = None,
    seed: int = 0,
) -> keras.Model:
    """A copy of ``model`` with its top weights re-drawn (model-parameter randomisation test).

    ``scope="head"``: the weighted layers after the global pooling. ``"cascade"``: the top
    ``n_layers`` weighted layers (default: the head plus the top-most backbone layer).
    ``"all"``: every weighted layer (input preprocessing such as Normalization is left alone).
    Weights come from each layer's own initialiser (seeded) or N(0, std of the old weights).
    ``model`` itself is not modified.
    """
    import keras

    if scope not in RANDOMIZATION_SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose one of {RANDOMIZATION_SCOPES}.")
    weighted = _weighted_layers(model)
    head = _head_layers(model)
    if scope == "head":
        if not head:
            raise ValueError(
                f"Model {model.name!r} has no weighted layers after its global pooling."
            )
        chosen = head
    elif scope == "all":
        chosen = weighted
    else:
        if n_layers is None:
            n_layers = len(head) + 1
        n_layers = positive_int("n_layers", n_layers)
        if n_layers > len(weighted):
            raise ValueError(
                f"n_layers={n_layers} but model {model.name!r} has only {len(weighted)} "
                "weighted layers."
            )
        chosen = weighted[-n_layers:]

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for i, layer in enumerate(chosen):
        target = copy.get_layer(layer.name)
        target.set_weights(_redraw(target, seed + i))
    return copy

def randomized_layer_names(
    model: keras.Model, scope: str = "cascade", n_layers: int | None = None
) -> list[str]:
    """Names of the layers :func:`randomize_model` would re-draw, bottom to top."""
    if scope not in RANDOMIZATION_SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose one of {RANDOMIZATION_SCOPES}.")
    if scope == "head":
        return [layer.name for layer in _head_layers(model)]
    weighted = _weighted_layers(model)
    if scope == "all":
        return [layer.name for layer in weighted]
    if n_layers is None:
        n_layers = len(_head_layers(model)) + 1
    return [layer.name for layer in weighted[-positive_int("n_layers", n_layers):]]

def compare_maps(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation and SSIM between two [0, 1] maps of the same shape.

    Spearman is NaN when either map is constant (e.g. an all-zero Grad-CAM): rank correlation
    is undefined there, which is itself a sign the explanation changed.
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Maps must have the same shape, got {a.shape} and {b.shape}.")
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    # SSIM's default 7x7 window must fit inside the map; shrink it (odd, >= 3) for tiny maps.
    win = min(7, *(d if d % 2 else d - 1 for d in a.shape))
    if win < 3:
        raise ValueError(f"Maps of shape {a.shape} are too small for SSIM (need >= 3x3).")
    ssim = float(structural_similarity(a, b, data_range=1.0, win_size=win))
    return {"spearman": rho, "ssim": ssim}

def sanity_check(
    model: keras.Model,
    image: np.ndarray,
    method: str = "gradcam",
    layer_name: str | None = None,
    *,
    target: str = "predicted",
    cascade_steps: Sequence[int] | None = None,
    seed: int = 0,
    return_maps: bool = False,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Model-parameter randomisation test: does the map change when the weights do?

    Returns ``{label: {"spearman", "ssim", "layers"[, "heatmap"]}}`` with labels "head" and
    "cascade_<n>" for each n in ``cascade_steps`` (default: the head plus 1, 2, 4 and 8 more
    layers, and all weighted layers, capped at the model's depth); with ``return_maps`` also an
    "original" entry and each map. Faithful explanations give low similarity. The target class
    is fixed from the original model's prediction so every map explains the same class.
    ``kwargs`` go to :func:`compute_heatmap` (e.g. ``max_N``, ``seed`` for SmoothGrad).
    """
    image, layer_name = check_inputs(model, image, method, layer_name)
    resolved = resolve_target(model, image, target, check_threshold(kwargs.pop("threshold", 0.5)))
    original = compute_heatmap(
        model, image, method, layer_name=layer_name, target=resolved, **kwargs
    )

    n_weighted, n_head = len(_weighted_layers(model)), len(_head_layers(model))
    if cascade_steps is None:
        # Cascading from the top; steps inside the head would repeat the "head" run.
        steps = {n_head + k for k in (1, 2, 4, 8)}
        cascade_steps = sorted({n for n in steps if n < n_weighted} | {n_weighted})
    runs: list[tuple[str, str, int | None]] = [("head", "head", None)]
    runs += [(f"cascade_{n}", "cascade", int(n)) for n in cascade_steps]

    results: dict[str, dict[str, Any]] = {}
    if return_maps:
        results["original"] = {"spearman": 1.0, "ssim": 1.0, "layers": [], "heatmap": original}
    for label, scope, n in runs:
        randomized = randomize_model(model, scope, n, seed=seed)
        with quiet_tensorflow(logging.ERROR):  # every randomised copy is a new model, so a new trace: no retracing warning
            heatmap = compute_heatmap(
                randomized, image, method, layer_name=layer_name, target=resolved, **kwargs
            )
        entry: dict[str, Any] = {
            **compare_maps(original, heatmap),
            "layers": randomized_layer_names(model, scope, n),
        }
        if return_maps:
            entry["heatmap"] = heatmap
        results[label] = entry
    return results

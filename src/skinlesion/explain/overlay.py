"""Showing explanations: a heat map blended over the image (:func:`overlay`, as PNG bytes with
:func:`overlay_png_bytes`) and a row of overlays (:func:`plot_explanations`).

Needs neither TensorFlow nor pyplot state (figures use the object API), so it works in web
servers and threads.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from skinlesion.explain.common import resize_map

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """RGB uint8 for display; floats in 0..1 are taken as 0..1, otherwise as 0..255."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an RGB image of shape (height, width, 3), got {image.shape}.")
    if image.dtype == np.uint8:
        return image
    image = np.nan_to_num(image.astype(np.float32))
    if image.size and image.max() <= 1.0:
        image = image * 255.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)

def _colour_map(heatmap: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"Unknown matplotlib colormap {cmap!r}; try 'jet', 'inferno', 'viridis' or 'turbo'."
        ) from None
    return (colormap(np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0).astype(np.float32)

def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet"
) -> Image.Image:
    """Blend a colour-mapped [0, 1] heat map over an RGB image; returns a PIL RGB image.

    The map is resized (bilinear) to the image if needed; ``alpha`` is the map's weight.
    """
    from PIL import Image

    rgb = _as_uint8_rgb(image)
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"Heat map must be 2-D (height, width), got shape {heatmap.shape}.")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("Heat map contains NaN or infinite values.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}.")
    if heatmap.shape != rgb.shape[:2]:
        heatmap = resize_map(heatmap, rgb.shape[:2])
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * _colour_map(heatmap, cmap)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), mode="RGB")

def overlay_png_bytes(image: np.ndarray, heatmap: np.ndarray, **kw: Any) -> bytes:
    """:func:`overlay` encoded as PNG bytes (for web responses and notebooks)."""
    buffer = io.BytesIO()
    overlay(image, heatmap, **kw).save(buffer, format="PNG")
    return buffer.getvalue()

def plot_explanations(
    image: np.ndarray,
    heatmaps: dict[str, np.ndarray],
    title: str | None = None,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> Figure:
    """A one-row figure: the original image, then one overlay per heat map (dict order)."""
    from matplotlib.figure import Figure

    rgb = _as_uint8_rgb(image)
    panels = [("original", rgb)] + [
        (name, np.asarray(overlay(rgb, heatmap, alpha=alpha, cmap=cmap)))
        for name, heatmap in heatmaps.items()
    ]
    figure = Figure(figsize=(2.6 * len(panels), 2.9 if title else 2.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for ax, (name, panel) in zip(axes, panels):
        ax.imshow(panel)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure

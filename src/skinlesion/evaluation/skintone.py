"""Skin tone by Individual Typology Angle (ITA), for skin-tone subgroup tables.

ITA = arctan((L* - 50) / b*) * 180 / pi in CIELAB (D65, via ``skimage.color.rgb2lab``), measured
on *skin* pixels only. :func:`skin_mask` finds them as follows (all sizes scale with the image;
it works on a copy shrunk to at most :data:`WORK_SIZE` pixels a side, for speed and so the
morphology sees the same scale whatever the input resolution):

1. **Dermoscope vignette / black corners**: pixels with L* < :data:`BLACK_L` that are connected
   to the image border, dilated by 3 % of the image size to drop their soft rim; any other
   near-black pixel is dropped too.
2. **Hairs** (and other thin dark lines, such as ruler marks): a morphological black top-hat
   of L* (closing minus image, the DullRazor idea) above :data:`HAIR_TOPHAT_L`, dilated by 1 px.
3. **Specular highlights / bubbles**: L* > :data:`SPECULAR_L` with chroma < :data:`SPECULAR_CHROMA`
   (whitish), or L* > 97 whatever the chroma.
4. **Lesion**: Otsu's threshold on a Gaussian-blurred L* over the pixels left (used only when
   the two Otsu classes differ by at least :data:`MIN_LESION_CONTRAST` L* units, i.e. there is a
   dark region at all), or, if higher, a robust outlier cut (median - max(3 MAD, that contrast))
   that catches lesions too small for Otsu. The dark connected components reaching the central
   disc (radius 25 % of the short side) are the lesion; holes are filled and it is dilated by
   5 % of the size to drop its halo.
5. A 2 % strip along the image border is dropped (rulers, frame artefacts, JPEG edges).

If fewer than :data:`MIN_SKIN_FRACTION` of the pixels are left the ITA is NaN, and
:func:`estimate_ita_details` says why.

The angle is computed as ``atan2(L* - 50, b*)``, identical to the textbook formula for b* > 0
(all real skin). Uncalibrated dermoscopy photos often have a blue cast that pushes the skin's b*
to 0 or below; there ``arctan`` would jump from +90 to -90 degrees and call pale skin "dark",
while ``atan2`` continues smoothly past +/-90 degrees, so pale skin stays "very light" and dark
skin "dark". Such estimates carry a note.

Aggregation: ITA of the *median L** and *median b** of the skin pixels, not the median of per-pixel
ITA. Per-pixel ITA divides by b*, so JPEG noise on low-chroma pixels throws single values to
+/-90 degrees; medians of the two components are robust and, since ITA is monotonic in each of
them, give a typical-pixel angle.

Categories (Del Bino et al. 2013): very light > 55, light 41-55, intermediate 28-41, tan 10-28,
brown -30-10, dark < -30 degrees; a value on a boundary goes to the darker category.

:func:`image_ita` measures many image files in threads and reuses an earlier result for files
whose size and modification time are unchanged (the ``ita.csv`` cache of a report folder).

ITA from an uncalibrated dermoscopy photo depends on lighting and camera, so it is a rough
proxy for constitutive skin colour, good for flagging skewed test sets, not for individuals.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

ITA_CATEGORIES: tuple[str, ...] = ("very light", "light", "intermediate", "tan", "brown", "dark")
UNKNOWN_CATEGORY = "unknown"
# Lower bounds (exclusive) of each category in ITA_CATEGORIES, in degrees.
_ITA_LOWER_BOUNDS: tuple[float, ...] = (55.0, 41.0, 28.0, 10.0, -30.0, -math.inf)

WORK_SIZE = 256
BLACK_L = 15.0
HAIR_TOPHAT_L = 10.0
SPECULAR_L = 90.0
SPECULAR_CHROMA = 12.0
MIN_LESION_CONTRAST = 6.0
MIN_SKIN_FRACTION = 0.05

SUBGROUP_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "roc_auc")


@dataclass(frozen=True)
class ItaEstimate:
    """ITA of one image with what it was computed from; ``note`` says why ``ita`` is NaN or shaky."""

    ita: float
    l_star: float
    b_star: float
    skin_fraction: float
    note: str | None = None  # why ita is NaN, or a caveat about it

    @property
    def category(self) -> str:
        return ita_category(self.ita)


def _as_rgb_float(img: ArrayLike) -> NDArray[np.float64]:
    """RGB image as float64 in [0, 1]; accepts uint8/uint16/float arrays, RGBA and PIL images."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"expected a colour image of shape (H, W, 3) or (H, W, 4); got shape {arr.shape}. "
            "ITA needs colour, so convert greyscale images back to RGB at the source."
        )
    if min(arr.shape[:2]) < 16:
        raise ValueError(f"image is too small to find skin in ({arr.shape[1]}x{arr.shape[0]} px)")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        return arr / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError("float images must hold finite values in [0, 1]; divide uint8 data by 255")
        return arr.astype(np.float64)
    raise ValueError(f"unsupported image dtype {arr.dtype}; pass uint8 RGB or float RGB in [0, 1]")


def _shrink(rgb: NDArray[np.float64]) -> NDArray[np.float64]:
    h, w = rgb.shape[:2]
    scale = WORK_SIZE / max(h, w)
    if scale >= 1.0:
        return rgb
    from PIL import Image

    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    small = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(small) / 255.0


def _disk(radius: float) -> NDArray[np.uint8]:
    from skimage.morphology import disk

    return disk(max(1, int(round(radius))))


def _lesion_mask(l_blur: NDArray[np.float64], candidate: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Dark central region of blurred L* over ``candidate`` pixels (Otsu or outlier cut; may be empty)."""
    from skimage.filters import threshold_otsu

    values = l_blur[candidate]
    if values.size < 50 or np.ptp(values) < 1e-6:
        return np.zeros_like(candidate)
    # Otsu misses a lesion covering only ~1 % of the frame (it splits the skin's shading
    # instead), so pixels far darker than the typical skin count as lesion too.
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    threshold = median - max(3.0 * mad, MIN_LESION_CONTRAST)
    t = threshold_otsu(values)
    dark_side = values[values <= t]
    light_side = values[values > t]
    if dark_side.size and light_side.size and light_side.mean() - dark_side.mean() >= MIN_LESION_CONTRAST:
        threshold = max(threshold, t)
    dark = candidate & (l_blur <= threshold)
    labels, n = ndimage.label(dark)
    if n == 0:
        return np.zeros_like(candidate)
    h, w = candidate.shape
    yy, xx = np.ogrid[:h, :w]
    central = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (0.25 * min(h, w)) ** 2
    # Every dark component reaching the centre: variegated lesions often split into several.
    keep = np.unique(labels[central & dark])
    keep = keep[keep > 0]
    lesion = np.isin(labels, keep)
    return ndimage.binary_fill_holes(lesion)


def _skin_mask_small(rgb: NDArray[np.float64]) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Skin mask and Lab image at working resolution (see the module docstring for the steps)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb)
    lightness, a_star, b_star = lab[..., 0], lab[..., 1], lab[..., 2]
    h, w = lightness.shape
    size = min(h, w)

    black = lightness < BLACK_L
    labels, _ = ndimage.label(black)
    border_ids = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    vignette = np.isin(labels, border_ids[border_ids > 0])
    vignette = ndimage.binary_dilation(vignette, _disk(0.03 * size)) | black

    closed = ndimage.grey_closing(lightness, footprint=_disk(0.02 * size + 1))
    hair = ndimage.binary_dilation(closed - lightness > HAIR_TOPHAT_L, _disk(1))

    chroma = np.hypot(a_star, b_star)
    specular = ((lightness > SPECULAR_L) & (chroma < SPECULAR_CHROMA)) | (lightness > 97.0)
    specular = ndimage.binary_dilation(specular, _disk(1))

    edge = max(1, round(0.02 * size))
    frame = np.zeros((h, w), bool)
    frame[edge:-edge, edge:-edge] = True

    candidate = frame & ~vignette & ~hair & ~specular
    l_blur = ndimage.gaussian_filter(lightness, sigma=max(1.0, 0.01 * size))
    lesion = _lesion_mask(l_blur, candidate)
    if lesion.any():
        lesion = ndimage.binary_dilation(lesion, _disk(0.05 * size))
    return candidate & ~lesion, lab


def skin_mask(img: ArrayLike) -> NDArray[np.bool_]:
    """Boolean (H, W) mask of the skin pixels :func:`estimate_ita` measures, at the input's size."""
    rgb = _as_rgb_float(img)
    mask, _ = _skin_mask_small(_shrink(rgb))
    h, w = rgb.shape[:2]
    if mask.shape == (h, w):
        return mask
    # Nearest-neighbour index map back to the full size: keeps the mask exactly boolean.
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(int)
    return mask[rows[:, None], cols[None, :]]


def ita_from_lab(l_star: ArrayLike, b_star: ArrayLike) -> NDArray[np.float64] | float:
    """ITA in degrees from L* and b* (``atan2``: the usual arctan for b* > 0, continuous past it)."""
    lightness = np.asarray(l_star, dtype=np.float64)
    b = np.asarray(b_star, dtype=np.float64)
    ita = np.degrees(np.arctan2(lightness - 50.0, b))
    return float(ita) if ita.ndim == 0 else ita


def estimate_ita_details(img: ArrayLike) -> ItaEstimate:
    """ITA of the skin around the lesion, with the medians, the skin fraction and any caveat."""
    rgb = _shrink(_as_rgb_float(img))
    mask, lab = _skin_mask_small(rgb)
    fraction = float(mask.mean())
    note: str | None
    if fraction < MIN_SKIN_FRACTION:
        note = (
            f"only {fraction:.1%} of the image is usable skin (need {MIN_SKIN_FRACTION:.0%}): "
            "the lesion, vignette, hairs or highlights cover almost everything"
        )
        return ItaEstimate(math.nan, math.nan, math.nan, fraction, note)
    l_med = float(np.median(lab[..., 0][mask]))
    b_med = float(np.median(lab[..., 2][mask]))
    note = None
    if b_med <= 0:
        note = (
            f"median skin b* is {b_med:.1f} <= 0 (blue colour cast): ITA is beyond +/-90 degrees "
            "and the category rests on L* alone"
        )
    return ItaEstimate(float(ita_from_lab(l_med, b_med)), l_med, b_med, fraction, note)


def estimate_ita(img: ArrayLike) -> float:
    """ITA in degrees of the skin around the lesion; NaN when it cannot be determined.

    Use :func:`estimate_ita_details` to learn why a value is NaN or outside +/-90 degrees.
    """
    return estimate_ita_details(img).ita


def ita_category(ita: float | None) -> str:
    """Del Bino category of an ITA value ("unknown" for NaN or None)."""
    if ita is None or not math.isfinite(float(ita)):
        return UNKNOWN_CATEGORY
    for name, lower in zip(ITA_CATEGORIES, _ITA_LOWER_BOUNDS):
        if ita > lower:
            return name
    return ITA_CATEGORIES[-1]


def _as_categories(categories: Sequence[str] | ArrayLike) -> NDArray[Any]:
    """Categories as an object array of str; None and NaN (missing in pandas) become "unknown"."""

    def name(c: Any) -> str:
        if c is None or (isinstance(c, float) and math.isnan(c)):
            return UNKNOWN_CATEGORY
        return str(c)

    return np.asarray([name(c) for c in np.asarray(categories, dtype=object).ravel()], dtype=object)


def _category_order(categories: NDArray[Any]) -> list[str]:
    """Skin-tone order for ITA categories (all of them, so empty bins show), else first-seen order."""
    seen = list(dict.fromkeys(categories.tolist()))
    known = (*ITA_CATEGORIES, UNKNOWN_CATEGORY)
    if all(c in known for c in seen):
        return list(ITA_CATEGORIES) + ([UNKNOWN_CATEGORY] if UNKNOWN_CATEGORY in seen else [])
    return seen


def subgroup_table(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    categories: Sequence[str] | ArrayLike,
    threshold: float,
    min_n: int = 30,
    n_resamples: int | None = None,
    seed: int = 0,
    *,
    metrics: Sequence[str] = SUBGROUP_METRICS,
) -> list[dict[str, Any]]:
    """Per-category counts and metrics with bootstrap CIs, one dict per category.

    Each row has ``category, n, n_pos, n_neg, note`` and, for every name in ``metrics`` (see
    ``skinlesion.metrics.classification.METRIC_NAMES``), ``<name>, <name>_low, <name>_high``. CIs come from
    ``skinlesion.metrics.stats.summarize_with_ci`` only for groups with ``n >= min_n`` and both
    classes; smaller or one-class groups get whatever point values are defined (others NaN),
    NaN CIs and a ``note`` saying why. With ITA categories every category gets a row, so an
    absent skin tone shows as n=0 rather than silently disappearing. ``n_resamples`` defaults to
    ``skinlesion.metrics.stats.N_BOOTSTRAP``.
    """
    # Imported here so this module (and ITA estimation) works without the metrics module.
    from skinlesion.metrics.classification import summarize
    from skinlesion.metrics.stats import N_BOOTSTRAP, summarize_with_ci

    n_resamples = N_BOOTSTRAP if n_resamples is None else n_resamples
    labels = np.asarray(y_true).ravel()
    probs = np.asarray(y_prob, dtype=np.float64).ravel()
    cats = _as_categories(categories)
    if not (labels.shape == probs.shape == cats.shape):
        raise ValueError(
            f"y_true, y_prob and categories must have one entry per image; got lengths "
            f"{labels.size}, {probs.size} and {cats.size}"
        )
    if int(min_n) < 1:
        raise ValueError(f"min_n must be >= 1, got {min_n}")

    rows: list[dict[str, Any]] = []
    for cat in _category_order(cats):
        sel = cats == cat
        yt, yp = labels[sel], probs[sel]
        n, n_pos = int(sel.sum()), int(np.sum(yt == 1))
        row: dict[str, Any] = {"category": cat, "n": n, "n_pos": n_pos, "n_neg": n - n_pos}
        notes: list[str] = []
        values: dict[str, tuple[float, float, float]] = dict.fromkeys(metrics, (math.nan,) * 3)
        if n == 0:
            notes.append("no images in this group")
        else:
            one_class = n_pos == 0 or n_pos == n
            if one_class:
                notes.append("only one class present")
            if n < min_n:
                notes.append(f"too small to judge (n={n})")
            if one_class or n < min_n:
                point = summarize(yt, yp, threshold)
                values = {m: (float(point[m]), math.nan, math.nan) for m in metrics}
            else:
                ci = summarize_with_ci(yt, yp, threshold, n_resamples, seed)
                values = {m: (ci[m]["value"], ci[m]["low"], ci[m]["high"]) for m in metrics}
        for m, (value, low, high) in values.items():
            row[m], row[f"{m}_low"], row[f"{m}_high"] = float(value), float(low), float(high)
        row["note"] = "; ".join(notes)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Many files: threaded, with a cache keyed by (file, size, mtime)
# --------------------------------------------------------------------------------------------
def _as_float(value: Any) -> float:
    """A cached value as float (None or an unparsable value becomes NaN)."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _ita_one(file: Path, size: int) -> dict[str, Any]:
    from skinlesion.data.intake import ImageRejected, load_for_model

    try:
        est = estimate_ita_details(load_for_model(file, size))
    except (ImageRejected, OSError, ValueError) as exc:
        msg = getattr(exc, "message", None) or str(exc)
        return {"ita": math.nan, "l_star": math.nan, "b_star": math.nan, "skin_fraction": math.nan,
                "note": f"could not measure: {msg}"}
    return {"ita": est.ita, "l_star": est.l_star, "b_star": est.b_star,
            "skin_fraction": est.skin_fraction, "note": est.note or ""}

def image_ita(files: Sequence[str | os.PathLike[str]], *, size: int = 224, workers: int | None = None,
              previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """ITA per image file: columns file, size_bytes, mtime_ns, ita, category, l_star, b_star,
    skin_fraction, note. Rows of ``previous`` (an earlier result) are reused for files whose size
    and modification time are unchanged.

    Images are read as the model reads them (``intake.load_for_model``, centre square at
    ``size``). ITA takes ~40 ms an image, so threads (scipy/skimage release the GIL) keep
    1000 images well under a minute.
    """
    paths = [Path(f) for f in files]
    stats = []
    for f in paths:
        try:
            st = f.stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    known: dict[tuple[str, int, int], dict[str, Any]] = {}
    if previous is not None and len(previous):
        for r in previous.to_dict("records"):
            known[(str(r["file"]), int(r["size_bytes"]), int(r["mtime_ns"]))] = r
    todo = [i for i, (f, s) in enumerate(zip(paths, stats)) if (str(f), *s) not in known]
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as ex:
        fresh = dict(zip(todo, ex.map(lambda i: _ita_one(paths[i], size), todo)))
    rows = []
    for i, (f, (nbytes, mtime)) in enumerate(zip(paths, stats)):
        r = fresh.get(i) or known[(str(f), nbytes, mtime)]
        note = r.get("note")
        rows.append({"file": str(f), "size_bytes": nbytes, "mtime_ns": mtime, "ita": _as_float(r["ita"]),
                     "category": ita_category(_as_float(r["ita"])), "l_star": _as_float(r["l_star"]),
                     "b_star": _as_float(r["b_star"]), "skin_fraction": _as_float(r["skin_fraction"]),
                     "note": "" if note is None or (isinstance(note, float) and math.isnan(note)) else str(note)})
    return pd.DataFrame(rows, columns=["file", "size_bytes", "mtime_ns", "ita", "category", "l_star", "b_star",
                                       "skin_fraction", "note"])

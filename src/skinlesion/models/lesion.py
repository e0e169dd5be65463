"""The image cropped to its lesion: one framing for every collection.

The collections frame lesions differently (the Kaggle set's tight crops, HAM10000's lesion-centred
fields, ISIC 2017's fields of every size). A member trained with ``lesion_crop`` sees every image
cropped to a square about its lesion and resized back, in training and when served, so the scale
no longer tells the collections apart. The rule is classical and was fixed before any result
(``tools/lesion_crop_pilot.py`` measures it): Otsu's threshold on the smoothed luma, computed
inside a central disc (a full-field dermoscope's dark vignette does not set it), the largest darker
component that reaches the centre, its box grown by a margin, never tighter than ``MIN_SIDE`` of
the frame; where there is no such component the frame is kept.

The lesion is found on the image as the model sees it (the centre square at the model's input size),
and its square is cut from the decoded image (:func:`crop_from`), so a small lesion keeps the detail
that the model-size input had already lost: rule 2. Rule 1 (until 2026-12-08) cut it from the
model-size input; a floor crop of a 224-px input is 90 px scaled 2.5 times, where the Kaggle AUC was
lost (``tools/auc_strata.py --by crop``). On cached features, cutting from the decoded image raised
the crop probe on every held-out source (``tools/lesion_crop_pilot.py --from-original``; README).

Views: ``lc2_<view>`` is the crop, then ``<view>`` (``skinlesion.models.features.apply_view``).
Hand-written because no maintained package segments dermoscopic lesions without a trained model;
the pieces (Gaussian filter, Otsu, connected components) are scipy's and scikit-image's.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

SMOOTH_SIGMA = 2.0   # px at 224 (scaled with the side): hair and pores below this do not split the lesion
OTSU_RADIUS = 0.45   # x side: the threshold is computed inside this central disc
SEED_RADIUS = 0.15   # x side: the lesion's component must reach into this central disc
MIN_AREA = 0.005     # x side^2: smaller dark components are noise
MARGIN = 0.15        # the crop's side is the box's longer side x (1 + 2 MARGIN)
MIN_SIDE = 0.4       # x side: the crop never zooms in more than 2.5 times
RULE = 2             # the crop rule (module docstring); bundles record it (TrainConfig.lesion_crop)
PREFIX = f"lc{RULE}_"  # view name prefix: "lc2_fh" is the crop, mirrored (feature caches are keyed by it)

Box = tuple[int, int, int, int]  # (top, bottom, left, right), bottom and right exclusive
Crop = tuple[int, int, int]      # (top, left, side) of a square in the frame


def _disc(size: int, radius: float) -> np.ndarray:
    y, x = np.ogrid[:size, :size]
    return (y + 0.5 - size / 2) ** 2 + (x + 0.5 - size / 2) ** 2 <= (radius * size) ** 2


def lesion_box(image: np.ndarray) -> Box | None:
    """The lesion's box in a square uint8 RGB image: the largest component darker than Otsu's
    threshold (of the smoothed luma inside a central disc) that reaches the centre; None when
    there is none (or the image is flat)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    size = image.shape[0]
    luma = ndimage.gaussian_filter(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32),
                                   SMOOTH_SIGMA * size / 224)
    inside = luma[_disc(size, OTSU_RADIUS)]
    if np.ptp(inside) < 1:
        return None
    dark = luma < threshold_otsu(inside)
    seed = _disc(size, SEED_RADIUS)
    regions = [r for r in regionprops(label(dark)) if r.area >= MIN_AREA * size * size
               and seed[r.coords[:, 0], r.coords[:, 1]].any()]
    if not regions:
        return None
    top, left, bottom, right = max(regions, key=lambda r: r.area).bbox
    return top, bottom, left, right


def crop_square(box: Box | None, size: int) -> Crop:
    """The square crop about ``box`` in a ``size`` frame, shifted (never padded) to stay inside it;
    the whole frame for None."""
    if box is None:
        return 0, 0, size
    top, bottom, left, right = box
    side = int(round(max(bottom - top, right - left) * (1 + 2 * MARGIN)))
    side = min(max(side, int(round(MIN_SIDE * size))), size)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y0 = int(round(min(max(cy - side / 2, 0), size - side)))
    x0 = int(round(min(max(cx - side / 2, 0), size - side)))
    return y0, x0, side


def crop_of(image: np.ndarray) -> Crop:
    """Where :func:`lesion_crop` crops one square image."""
    return crop_square(lesion_box(image), image.shape[0])


def cut(square: Image.Image, crop: Crop, size: int) -> np.ndarray:
    """``crop`` (in a ``size`` frame) cut from ``square``, an RGB image of any side whose ``size`` reading is
    that frame, resized to ``size`` x ``size`` (bilinear, antialiased when it shrinks): uint8 (size, size, 3)."""
    from PIL import Image

    s = square.size[0] / size
    y0, x0, side = crop
    # Pillow's box resize reads the square's own pixels (sub-pixel box, no intermediate copy at ``size``).
    box = (x0 * s, y0 * s, (x0 + side) * s, (y0 + side) * s)
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR, box=box))


def crop_from(image: Image.Image, size: int) -> tuple[np.ndarray, Crop]:
    """The lesion crop of a decoded RGB image (``data.intake.read_image``) at ``size``, and where it lies in
    the model-size frame: the lesion is found on the ``size`` reading (``data.intake.to_model_array``), the
    square cut from the decoded pixels."""
    from skinlesion.data.intake import square_crop, to_model_array

    small = to_model_array(image, size)
    crop = crop_of(small)
    return (small if crop[2] == size else cut(square_crop(image), crop, size)), crop


def apply_crop(image: np.ndarray, crop: Crop) -> np.ndarray:
    """One square uint8 image cut to ``crop`` and resized back to its size (an array is its own original)."""
    from PIL import Image

    size = image.shape[0]
    return image if crop[2] == size else cut(Image.fromarray(np.ascontiguousarray(image)), crop, size)


def lesion_crop(batch: np.ndarray) -> np.ndarray:
    """A batch (N, H, W, 3) of square uint8 images, each cropped to its lesion and resized back (each array is
    its own original: a decoded file's crop comes from :func:`crop_from`)."""
    if not len(batch):
        return batch
    return np.stack([apply_crop(img, crop_of(img)) for img in batch])


def is_crop_view(view: str) -> bool:
    """Whether a view name is a lesion-crop view (``lc_<view>``)."""
    return view.startswith(PREFIX)


def base_view(view: str) -> str:
    """The view applied after the crop (``lc2_fh`` -> ``fh``); a plain view is its own base."""
    return view[len(PREFIX):] if is_crop_view(view) else view


def crop_views(views: Sequence[str], lesion_crop: bool) -> tuple[str, ...]:
    """``views`` as a member serves or trains on them: each behind the crop when ``lesion_crop`` (a name
    already behind it stays as it is)."""
    return tuple(PREFIX + v if lesion_crop and not is_crop_view(v) else v for v in views)

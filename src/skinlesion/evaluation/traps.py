"""Artefact traps: does pasting a ruler, ink, hair or dark corners next to a benign lesion make the
served model call it malignant?

Dermoscopic collections carry artefacts that go with the label: surgical ink marks and rulers are
drawn on lesions scheduled for excision (Winkler et al., JAMA Dermatol. 2019, measured a CNN's
melanoma score rising on marked nevi), and in the Kaggle set the dark vignette of full-field
dermoscopes is a malignant cue (README, robustness). A model that reads those cues changes its
answer when they appear *away from the lesion*, where they carry no information about it.

The painters (:data:`ARTEFACTS`) are pure functions ``(image uint8 HxWx3, rng) -> new image``
built on NumPy and Pillow; they paint only near the borders and corners and never touch the
central disk of radius :data:`KEEP_CLEAR` x side (where a centred lesion is):

* ``ruler``: a light ruler strip along one edge with millimetre-like ticks (every 2.5 % of the
  side, a long one every fifth), as rulers and scale bars appear in dermoscopy;
* ``ink``: violet surgical-marker strokes and dots in one corner;
* ``hair``: 4-8 dark curved hairs across one or two corners;
* ``vignette``: dark corners outside the inscribed circle (soft edge), a full-field dermoscope's.

:func:`run_traps` paints each artefact on benign test images and scores them with the
:class:`~skinlesion.serving.inference.Predictor` (TTA and calibration as served).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.data.datasets import DataError
from skinlesion.metrics.stats import mean_ci
from skinlesion.models.features import outside_circle_alpha

log = logging.getLogger(__name__)

KEEP_CLEAR = 0.4          # radius (fraction of the side) of the central disk no painter touches
INK_RGB = (92, 48, 150)   # gentian-violet surgical marker
HAIR_RGB = (38, 26, 20)
RULER_RGB = (232, 230, 222)
VIGNETTE_RGB = (8, 8, 8)  # as skinlesion.models.features.ZOOM_OUT_FILL: near-black, not 0
DEFAULT_N = 500
TRAPS_FILES = ("traps.json", "per_image.csv", "examples.png")  # what run_traps writes
_WRITER = "`skinlesion traps`"

Painter = Callable[[np.ndarray, "np.random.Generator | int | None"], np.ndarray]


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 32:
        raise ValueError(f"image too small to paint artefacts on: {image.shape[:2]}")
    return image


def central_disk(shape: tuple[int, ...], radius: float = KEEP_CLEAR) -> np.ndarray:
    """Boolean mask of the pixels within ``radius`` x the shorter side of the image centre."""
    h, w = shape[:2]
    y, x = np.ogrid[:h, :w]
    r = radius * min(h, w)
    return (y + 0.5 - h / 2) ** 2 + (x + 0.5 - w / 2) ** 2 <= r * r


def _composite(image: np.ndarray, layer: Any) -> np.ndarray:
    """Alpha-composite a Pillow RGBA ``layer`` over ``image``; the central disk stays untouched."""
    from PIL import Image

    out = np.asarray(Image.alpha_composite(Image.fromarray(image).convert("RGBA"), layer).convert("RGB")).copy()
    keep = central_disk(image.shape)
    out[keep] = image[keep]
    return out


def _corner_points(corner: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corner point and the unit vectors along its two edges, pointing into the image."""
    cx, cy = (0.0 if corner in (0, 3) else float(w)), (0.0 if corner in (0, 1) else float(h))
    ex = np.array([1.0 if cx == 0 else -1.0, 0.0])
    ey = np.array([0.0, 1.0 if cy == 0 else -1.0])
    return np.array([cx, cy]), ex, ey


def paint_ruler(image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A light ruler strip with tick marks along one randomly chosen edge."""
    from PIL import Image, ImageDraw

    image = _check(image)
    g = _rng(rng)
    h, w = image.shape[:2]
    side = min(h, w)
    thick = max(6, round(0.08 * side))
    gap = round(g.uniform(0.01, 0.03) * side)
    length = round(g.uniform(0.5, 0.8) * side)
    edge = int(g.integers(4))  # 0 top, 1 right, 2 bottom, 3 left
    along = w if edge in (0, 2) else h
    start = int(g.integers(0, max(1, along - length)))
    # Draw it horizontally on its own canvas, then rotate into place.
    strip = Image.new("RGBA", (length, thick), (*RULER_RGB, 235))
    d = ImageDraw.Draw(strip)
    step = 0.025 * side
    lw = max(1, round(side / 300))
    for i, x in enumerate(np.arange(step / 2, length, step)):
        tick = thick * (0.75 if i % 5 == 0 else 0.4)
        d.line([(float(x), 0.0), (float(x), float(tick))], fill=(20, 20, 20, 255), width=lw)
    d.line([(0, 0), (length, 0)], fill=(20, 20, 20, 255), width=lw)
    if edge in (1, 3):
        strip = strip.rotate(90 if edge == 3 else -90, expand=True)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    if edge == 0:
        pos = (start, gap)
    elif edge == 2:
        strip = strip.rotate(180)
        pos = (start, h - gap - thick)
    elif edge == 1:
        pos = (w - gap - thick, start)
    else:
        pos = (gap, start)
    layer.paste(strip, pos)
    return _composite(image, layer)


def paint_ink(image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Violet surgical-marker strokes (1-2) and dots (0-3) in one randomly chosen corner."""
    from PIL import Image, ImageDraw

    image = _check(image)
    g = _rng(rng)
    h, w = image.shape[:2]
    side = min(h, w)
    corner, ex, ey = _corner_points(int(g.integers(4)), h, w)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    colour = (*INK_RGB, int(g.integers(170, 220)))
    width = max(2, round(g.uniform(0.015, 0.03) * side))
    reach = 0.22 * side
    for _ in range(int(g.integers(1, 3))):
        # A short wobbly stroke inside the corner square.
        p = corner + ex * g.uniform(0.03, 0.15) * side + ey * g.uniform(0.03, 0.15) * side
        pts = [tuple(p)]
        heading = g.uniform(0, 2 * np.pi)
        for _ in range(int(g.integers(4, 9))):
            heading += g.normal(0, 0.5)
            p = p + 0.03 * side * np.array([np.cos(heading), np.sin(heading)])
            rel = np.clip([(p - corner) @ ex, (p - corner) @ ey], 0.01 * side, reach)
            p = corner + ex * rel[0] + ey * rel[1]
            pts.append(tuple(p))
        d.line(pts, fill=colour, width=width, joint="curve")
    for _ in range(int(g.integers(0, 4))):
        c = corner + ex * g.uniform(0.03, 0.18) * side + ey * g.uniform(0.03, 0.18) * side
        r = g.uniform(0.008, 0.02) * side
        d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=colour)
    return _composite(image, layer)


def paint_hair(image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """4-8 thin dark curved hairs, each cutting across a corner (one or two corners)."""
    from PIL import Image, ImageDraw

    image = _check(image)
    g = _rng(rng)
    h, w = image.shape[:2]
    side = min(h, w)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    corners = g.choice(4, size=int(g.integers(1, 3)), replace=False)
    t = np.linspace(0.0, 1.0, 40)[:, None]
    for _ in range(int(g.integers(4, 9))):
        corner, ex, ey = _corner_points(int(g.choice(corners)), h, w)
        a = corner + ex * g.uniform(0.05, 0.32) * side - ey * 0.02 * side   # starts just off one edge
        b = corner + ey * g.uniform(0.05, 0.32) * side - ex * 0.02 * side   # ends just off the other
        ctrl = (a + b) / 2 + (ex + ey) * g.uniform(-0.04, 0.06) * side     # a gentle bow
        curve = (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t ** 2 * b      # quadratic Bezier
        width = max(1, round(g.uniform(0.004, 0.009) * side))
        d.line([tuple(p) for p in curve], fill=(*HAIR_RGB, int(g.integers(200, 250))), width=width, joint="curve")
    return _composite(image, layer)


def paint_vignette(image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Dark corners outside a circle of radius 0.5-0.55 x side (soft edge), as a full-field dermoscope."""
    from PIL import Image

    image = _check(image)
    g = _rng(rng)
    h, w = image.shape[:2]
    side = min(h, w)
    alpha = outside_circle_alpha(h, w, g.uniform(0.5, 0.55) * side, 0.03 * side)
    layer = np.zeros((h, w, 4), np.uint8)
    layer[..., :3] = VIGNETTE_RGB
    layer[..., 3] = np.rint(255 * alpha).astype(np.uint8)
    return _composite(image, Image.fromarray(layer, "RGBA"))


def paint_all(image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Every artefact at once (the vignette first, so the others stay visible on top of it)."""
    g = _rng(rng)
    out = image
    for fn in (paint_vignette, paint_ruler, paint_ink, paint_hair):
        out = fn(out, g)
    return out


ARTEFACTS: dict[str, Painter] = {
    "ruler": paint_ruler,
    "ink": paint_ink,
    "hair": paint_hair,
    "vignette": paint_vignette,
    "all": paint_all,
}


def paint(name: str, image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Artefact ``name`` (a key of :data:`ARTEFACTS`) painted on a copy of ``image``."""
    if name not in ARTEFACTS:
        raise ValueError(f"unknown artefact {name!r}; known: {', '.join(ARTEFACTS)}")
    return ARTEFACTS[name](image, rng)


# --------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------
_SEVERITY = {"benign-appearing": 0, "uncertain — refer": 1, "suspicious": 2}


def measure(predictor: Any, images: Sequence[np.ndarray], *, artefacts: Sequence[str] | None = None,
            ids: Sequence[str] | None = None, seed: int = 0, batch_size: int = 32) -> pd.DataFrame:
    """One row per (image, artefact): probability with and without the artefact, ``dp``, flips.

    Image ``i`` gets artefact ``k`` drawn with the seed ``(seed, i, k)``, so a run is reproducible
    and one image's draw does not depend on the others.
    """
    names = list(artefacts) if artefacts is not None else list(ARTEFACTS)
    unknown = [n for n in names if n not in ARTEFACTS]
    if unknown:
        raise ValueError(f"unknown artefact(s) {unknown}; known: {', '.join(ARTEFACTS)}")
    images = [_check(np.asarray(im)) for im in images]
    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")

    def predict(items: list[np.ndarray]) -> list[Any]:
        return [p for s in range(0, len(items), batch_size) for p in predictor.predict_many(items[s:s + batch_size])]

    ref = predict(images)
    threshold = float(predictor.policy.threshold)
    rows: list[dict[str, Any]] = []
    for k, name in enumerate(names):
        painted = [paint(name, im, np.random.default_rng([seed, i, k])) for i, im in enumerate(images)]
        for i, pred in enumerate(predict(painted)):
            r = ref[i]
            rows.append({
                "image": ids[i], "artefact": name, "ref_probability": r.probability, "probability": pred.probability,
                "dp": pred.probability - r.probability, "ref_decision": r.decision, "decision": pred.decision,
                "flip": float(pred.decision != r.decision),
                "more_suspicious": float(_SEVERITY.get(pred.decision, 0) > _SEVERITY.get(r.decision, 0)),
                "to_suspicious": float(pred.decision == "suspicious" and r.decision != "suspicious"),
                "crosses_threshold": float((pred.probability >= threshold) != (r.probability >= threshold)),
            })
        log.info("traps: %s done (%d images)", name, len(images))
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """``{artefact: {mean_dp, mean_dp_ci, p95_dp, mean_abs_dp, decision_flip_rate, ...}}``."""
    out: dict[str, Any] = {}
    for name, part in table.groupby("artefact", sort=False):
        dp = part["dp"].to_numpy(float)
        ci = mean_ci(dp, seed=seed)
        out[str(name)] = {
            "mean_dp": float(dp.mean()), "mean_dp_ci": [ci["low"], ci["high"]],
            "p95_dp": float(np.percentile(dp, 95)), "p05_dp": float(np.percentile(dp, 5)),
            "mean_abs_dp": float(np.abs(dp).mean()), "max_dp": float(dp.max()),
            "decision_flip_rate": float(part["flip"].mean()),
            "more_suspicious_rate": float(part["more_suspicious"].mean()),
            "flip_to_suspicious_rate": float(part["to_suspicious"].mean()),
            "threshold_cross_rate": float(part["crosses_threshold"].mean()),
            "n": int(len(part)),
        }
    return out


def benign_images(data: str | os.PathLike[str] | None = None, *, n: int | None = DEFAULT_N,
                  seed: int = 0) -> tuple[list[Path], str]:
    """(files, description): every image directly in the folder ``data`` (not its sub-folders: a
    ``test/`` folder's ``malignant/`` must not pass for benign; see
    :func:`~skinlesion.data.datasets.image_files`), else the Kaggle test split's benign images; at
    most ``n`` (seeded sample), in file-name order."""
    from skinlesion.data.datasets import image_files
    from skinlesion.data.sources import load_source

    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder of images")
        files = image_files(root, recursive=False)
        what = f"the folder {root.name}"
    else:
        src = load_source("kaggle")
        recs = src.records
        part = recs[(recs["split"] == "test") & (recs["label"] == 0)]
        files = sorted(src.paths(part))
        what = "the Kaggle test split (benign)"
    if not files:
        raise DataError(f"no images found in {what}")
    if n is not None and len(files) > n:
        pick = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files, what


def example_versions(image: np.ndarray, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``[("original", image), (artefact, painted), ...]`` with the seeds :func:`measure` uses for
    the first image, so an example shows what the first image of a run was scored on."""
    return [("original", image)] + [(k, paint(k, image, np.random.default_rng([seed, 0, i])))
                                    for i, k in enumerate(ARTEFACTS)]


def plot_examples(image: np.ndarray, seed: int = 0, title: str = "") -> Any:
    """A figure: the image and each artefact painted on it (matplotlib Figure)."""
    from matplotlib.figure import Figure

    panels = example_versions(image, seed)
    fig = Figure(figsize=(2.4 * len(panels), 2.7), layout="constrained")
    for ax, (name, im) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        ax.imshow(im)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def run_traps(bundle_path: str | os.PathLike[str], data: str | os.PathLike[str] | None = None, *,
              n: int | None = DEFAULT_N, seed: int = 0, out_dir: str | os.PathLike[str] | None = None,
              batch_size: int = 32) -> Path:
    """Paint every artefact on benign images, score them as served and write ``traps.json``,
    ``per_image.csv`` and ``examples.png`` to ``out_dir`` (default ``reports/traps/<run-id>``).

    The folder is replaced as a whole once all three are written
    (:func:`skinlesion.io.replacing_folder`): a failure part-way leaves the previous results as
    they were. A folder holding other files is refused before measuring.
    """
    from skinlesion import config
    from skinlesion.evaluation.robustness import decode
    from skinlesion.io import check_replaceable, replacing_folder, write_json
    from skinlesion.serving.inference import Predictor

    t0 = time.perf_counter()
    files, what = benign_images(data, n=n, seed=seed)
    predictor = Predictor.from_bundle(bundle_path)
    out = Path(out_dir) if out_dir else config.reports_dir() / "traps" / predictor.name
    check_replaceable(out, owns=TRAPS_FILES, what=_WRITER)  # before minutes of scoring
    arrays, ok = decode(files)
    if not arrays:
        raise DataError(f"none of the {len(files)} images of {what} could be read")
    ids = [files[i].name for i in ok]
    log.info("traps for %s on %d images of %s", predictor.name, len(arrays), what)
    table = measure(predictor, arrays, ids=ids, seed=seed, batch_size=batch_size)
    ref = table.drop_duplicates("image")
    result = {
        "bundle": predictor.name,
        "data": what,
        "n_images": len(arrays),
        "n_unreadable": len(files) - len(arrays),
        "seed": seed,
        "probability": "calibrated P(malignant) as served (Predictor: the bundle's TTA and calibration); "
                       "dp = with the artefact - without",
        "placement": f"borders and corners only; the central disk of radius {KEEP_CLEAR} x side is never painted",
        "artefact_definitions": {k: (fn.__doc__ or "").strip().splitlines()[0] for k, fn in ARTEFACTS.items()},
        "reference": {"mean_probability": float(ref["ref_probability"].mean()),
                      "decisions": {str(k): int(v) for k, v in ref["ref_decision"].value_counts().items()}},
        "threshold": float(predictor.policy.threshold),
        "synthetic": bool(predictor.meta.synthetic),
        "artefacts": summarise(table, seed),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with replacing_folder(out, owns=TRAPS_FILES, what=_WRITER) as tmp:
        write_json(tmp / "traps.json", result)
        table.to_csv(tmp / "per_image.csv", index=False, float_format="%.5g")
        plot_examples(arrays[0], seed, title=f"artefacts pasted away from the lesion ({ids[0]})").savefig(
            tmp / "examples.png", format="png", dpi=80)
    return out


# --------------------------------------------------------------------------------------------
# Tables and examples (notebook 04, README)
# --------------------------------------------------------------------------------------------
def results_table(result: dict[str, Any] | str | os.PathLike[str]) -> pd.DataFrame:
    """``traps.json`` (or its dict) as a table: one row per artefact."""
    from skinlesion.io import read_json

    r = result if isinstance(result, dict) else read_json(result)
    rows = []
    for name, v in r["artefacts"].items():
        lo, hi = v["mean_dp_ci"]
        rows.append({"artefact": name, "mean Δp": f"{v['mean_dp']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                     "p95 Δp": round(v["p95_dp"], 3), "mean |Δp|": round(v["mean_abs_dp"], 3),
                     "decision flips": f"{100 * v['decision_flip_rate']:.1f}%",
                     "more suspicious": f"{100 * v['more_suspicious_rate']:.1f}%",
                     "now suspicious": f"{100 * v['flip_to_suspicious_rate']:.1f}%", "n": v["n"]})
    return pd.DataFrame(rows).set_index("artefact")


def example_panel(predictor: Any, image: np.ndarray | str | os.PathLike[str], seed: int = 0,
                  title: str = "") -> tuple[Any, pd.DataFrame]:
    """(figure, table) for one benign image (an RGB array or a file): each artefact painted on it
    (the seeds of :func:`plot_examples`) and the served P(malignant) and decision of every version."""
    from matplotlib.figure import Figure

    from skinlesion.data.intake import read_image

    array = image if isinstance(image, np.ndarray) else np.asarray(read_image(image))
    panels = example_versions(_check(array), seed)
    preds = predictor.predict_many([p for _, p in panels])
    fig = Figure(figsize=(2.4 * len(panels), 2.9), layout="constrained")
    for ax, (name, im), pred in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, preds):
        ax.imshow(im)
        ax.set_title(f"{name}\np = {pred.probability:.2f}, {pred.decision}", fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    table = pd.DataFrame([{"version": name, "P(malignant)": round(p.probability, 3), "decision": p.decision,
                           "Δp": round(p.probability - preds[0].probability, 3)}
                          for (name, _), p in zip(panels, preds)]).set_index("version")
    return fig, table

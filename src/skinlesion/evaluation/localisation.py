"""Do the served explanations point at the lesion? Measured on HAM10000's lesion boxes.

For each image the served model's map (:meth:`Predictor.explain`, target "malignant", as the web
app shows it) is compared with the lesion's bounding box (``HAM10000_metadata_ext.csv``: top,
bottom, left, right in the 200x150 frame), mapped into the model's input square the way the
intake maps the image (centre square crop, then resize):

* **energy in box**: ``sum(map inside box) / sum(map)``; a uniform map scores the box's share of
  the square (reported as ``box_fraction``), so that is the chance level;
* **pointing game** (Zhang et al., 2016): a hit when the map's maximum lies inside the box, strict
  and with a tolerance of :data:`TOLERANCE_PX` pixels of the model input (as the paper's 15 px);
  a constant map (e.g. all zeros) has no maximum and counts as a miss;
* **baseline**: a centred Gaussian "map" (sigma = :data:`BASELINE_SIGMA` of the side): what
  "the lesion is in the middle" scores without looking at the image.

Means with 95 % percentile bootstrap CIs (``scipy.stats.bootstrap``, 2,000 resamples), over all
images and per true class. Images come from the bundle's HAM10000 *validation* split when its
``splits.csv`` has one (never trained on), else from all of HAM10000; stratified by label.

The randomisation sanity check (:func:`run_sanity`) repeats
:func:`skinlesion.explain.sanity.sanity_check` over many images and reports the mean Spearman
rank correlation and SSIM between the original and the randomised map per cascade step.
"""
from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.data.datasets import DataError
from skinlesion.metrics.stats import N_BOOTSTRAP, mean_ci

log = logging.getLogger(__name__)

TOLERANCE_PX = 15
BASELINE_SIGMA = 0.25
BOX_CSV = "HAM10000_metadata_ext.csv"
DEFAULT_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "smoothgrad")
BASELINE = "baseline: centred Gaussian"


# --------------------------------------------------------------------------------------------
# Boxes and scores (pure)
# --------------------------------------------------------------------------------------------
def box_in_model_frame(box: Sequence[float], image_wh: tuple[int, int], size: int) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) of a box given in the original image's pixels, in the model's
    ``size`` x ``size`` input after the intake's centre square crop and resize; clipped to it."""
    top, bottom, left, right = (float(v) for v in box)
    w, h = image_wh
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2  # as skinlesion.data.intake.square_crop
    scale = size / side

    def clip(v: float) -> float:
        return float(min(max(v, 0.0), float(size)))

    return (clip((top - y0) * scale), clip((bottom - y0) * scale),
            clip((left - x0) * scale), clip((right - x0) * scale))


def box_mask(box: Sequence[float], size: int, tolerance: float = 0.0) -> np.ndarray:
    """Boolean (size, size) mask of the pixels whose centres lie in the box grown by ``tolerance``."""
    top, bottom, left, right = box
    centres = np.arange(size) + 0.5
    rows = (centres >= top - tolerance) & (centres <= bottom + tolerance)
    cols = (centres >= left - tolerance) & (centres <= right + tolerance)
    return rows[:, None] & cols[None, :]


def energy_in_box(heatmap: np.ndarray, box: Sequence[float]) -> float:
    """Share of the map's total (non-negative) mass inside the box; NaN for an all-zero map."""
    h = np.clip(np.asarray(heatmap, np.float64), 0.0, None)
    total = h.sum()
    if total <= 0.0:
        return float("nan")
    return float(h[box_mask(box, h.shape[0])].sum() / total)


def pointing_hit(heatmap: np.ndarray, box: Sequence[float], tolerance: float = 0.0) -> float:
    """1.0 when the map's maximum is inside the box (grown by ``tolerance`` px), else 0.0.

    Ties: a hit only when every maximal pixel is inside (a plateau straddling the edge is not a
    point). A constant map points nowhere: 0.0.
    """
    h = np.asarray(heatmap, np.float64)
    if h.size == 0 or np.ptp(h) == 0.0:
        return 0.0
    peak = h >= h.max()
    return float(np.all(box_mask(box, h.shape[0], tolerance)[peak]))


def gaussian_baseline(size: int, sigma: float = BASELINE_SIGMA) -> np.ndarray:
    """A centred isotropic Gaussian "map" in [0, 1] (sigma as a fraction of the side)."""
    c = np.arange(size) + 0.5 - size / 2
    g = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * (sigma * size) ** 2))
    return (g / g.max()).astype(np.float32)


def score_map(heatmap: np.ndarray, box: Sequence[float], tolerance: float = TOLERANCE_PX) -> dict[str, float]:
    """The three localisation scores of one map against one box (model-frame coordinates)."""
    return {"energy_in_box": energy_in_box(heatmap, box), "pointing_hit": pointing_hit(heatmap, box),
            "pointing_hit_tol": pointing_hit(heatmap, box, tolerance)}


# --------------------------------------------------------------------------------------------
# Which images
# --------------------------------------------------------------------------------------------
def ham10000_with_boxes(bundle_path: str | os.PathLike[str], *, n: int | None = 300, seed: int = 0,
                        root: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, str]:
    """(table of images with boxes, description). Columns: image_id, file, label, diagnosis,
    top, bottom, left, right. The bundle's HAM10000 validation split if it has one, else all
    HAM10000 images; at most ``n``, stratified by label (half malignant when there are enough)."""
    from skinlesion.data.sources import load_source

    src = load_source("ham10000", root)
    csv = src.root / BOX_CSV
    if not csv.is_file():
        raise DataError(f"{csv} not found: lesion boxes ({BOX_CSV}: top, bottom, left, right) are needed")
    boxes = pd.read_csv(csv, usecols=["image_id", "top", "bottom", "left", "right"])
    if boxes["image_id"].duplicated().any():
        raise DataError(f"{csv}: duplicate image ids")
    edges = boxes[["top", "bottom", "left", "right"]].apply(pd.to_numeric, errors="coerce")
    bad = (edges.isna().any(axis=1) | (edges < 0).any(axis=1)
           | (edges["top"] >= edges["bottom"]) | (edges["left"] >= edges["right"]))
    if bad.any():
        # A box that is not one would still give a map score: a wrong number, not a missing one.
        raise DataError(f"{csv}: {int(bad.sum())} lesion boxes are not boxes (a missing or non-numeric edge, a "
                        f"negative one, or top >= bottom / left >= right), first {boxes['image_id'][bad].iloc[0]}")
    boxes[edges.columns] = edges
    recs = src.records.assign(file=[str(p) for p in src.paths(src.records)])
    splits = Path(bundle_path) / "splits.csv"
    what = "HAM10000 (all images; the bundle has no HAM10000 validation split)"
    if splits.is_file():
        table = pd.read_csv(splits)
        if "source" in table.columns:
            val = table[(table["source"] == "ham10000") & (table["split"] == "val")]
            if len(val):
                recs = recs[recs["image_id"].isin(set(val["image_id"]))]
                what = "HAM10000, the bundle's validation split (never trained on)"
    frame = recs.merge(boxes, on="image_id", how="inner")
    if frame.empty:
        raise DataError(f"no HAM10000 images with lesion boxes ({what})")
    if n is not None and len(frame) > n:
        parts = []
        want = {1: n // 2, 0: n - n // 2}
        malignant = frame[frame["label"] == 1]
        want[1] = min(want[1], len(malignant))
        want[0] = n - want[1]
        for label, k in want.items():
            part = frame[frame["label"] == label]
            parts.append(part.sample(n=min(k, len(part)), random_state=seed))
        frame = pd.concat(parts).sort_values("image_id")
    cols = ["image_id", "file", "label", "diagnosis", "top", "bottom", "left", "right"]
    return frame[cols].reset_index(drop=True), what


# --------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------
def _summary(table: pd.DataFrame, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, part in table.groupby("method", sort=False):
        row: dict[str, Any] = {}
        for subset, sub in (("all", part), ("malignant", part[part["label"] == 1]),
                            ("benign", part[part["label"] == 0])):
            row[subset] = {
                "energy_in_box": mean_ci(sub["energy_in_box"], seed=seed),
                "pointing_game": mean_ci(sub["pointing_hit"], seed=seed),
                "pointing_game_tolerance": mean_ci(sub["pointing_hit_tol"], seed=seed),
                "box_fraction": float(sub["box_fraction"].mean()) if len(sub) else None,
                "empty_maps": int(sub["empty"].sum()),
                "n": int(len(sub)),
            }
        out[str(method)] = row
    return out


def measure_localisation(predictor: Any, frame: pd.DataFrame, methods: Sequence[str] = DEFAULT_METHODS, *,
                         target: str = "malignant", seed: int = 0, tolerance: float = TOLERANCE_PX,
                         method_kwargs: dict[str, dict[str, Any]] | None = None,
                         progress: bool = False) -> pd.DataFrame:
    """One row per (image, method) with the localisation scores; the baseline is a "method".

    ``predictor`` is a :class:`~skinlesion.serving.inference.Predictor`; its maps are what it
    serves (:meth:`~skinlesion.serving.inference.Predictor.explain`, default TTA rule).

    Each file is read once, size-limited (:func:`~skinlesion.data.intake.read_file_bytes`); an
    image that cannot be used (missing, too large, not a regular file, corrupt) stops the
    measurement with its :class:`~skinlesion.data.intake.ImageRejected` / ``OSError``, as a
    corrupt one always has: every image of the sample is scored or none is.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from skinlesion.data.intake import read_file_bytes

    size = predictor.input_size
    baseline = gaussian_baseline(size)
    kwargs = method_kwargs or {}
    records = list(frame.itertuples())
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(records), disable=not progress, desc="localisation")
    for start in range(0, len(records), 32):
        chunk = records[start:start + 32]
        datas = [read_file_bytes(rec.file) for rec in chunk]
        preds = predictor.predict_many(datas)
        for rec, data, pred in zip(chunk, datas, preds):
            # The header of the bytes already read (predict_many decoded them, so they are an image).
            with Image.open(io.BytesIO(data)) as im:
                wh = im.size
            box = box_in_model_frame((rec.top, rec.bottom, rec.left, rec.right), wh, size)
            frac = float(box_mask(box, size).mean())
            base = {"image_id": rec.image_id, "label": int(rec.label), "diagnosis": rec.diagnosis,
                    "probability": pred.probability, "decision": pred.decision, "box_fraction": frac,
                    "box_top": box[0], "box_bottom": box[1], "box_left": box[2], "box_right": box[3]}
            for method in methods:
                t0 = time.perf_counter()
                extra = dict(kwargs.get(method, {}))
                if method == "smoothgrad":
                    extra.setdefault("seed", seed)
                e = predictor.explain(data, method, target=target, prediction=pred, **extra)
                rows.append({**base, "method": method, "views": len(e.views), **score_map(e.heatmap, box, tolerance),
                             "empty": bool(np.ptp(e.heatmap) == 0.0), "seconds": time.perf_counter() - t0})
            rows.append({**base, "method": BASELINE, "views": 0, **score_map(baseline, box, tolerance),
                         "empty": False, "seconds": 0.0})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def run_localisation(bundle_path: str | os.PathLike[str], *, n: int = 300, methods: Sequence[str] = DEFAULT_METHODS,
                     seed: int = 0, scorecam_max_n: int = 32, smooth_samples: int = 20,
                     out: str | os.PathLike[str] | None = None, progress: bool = False) -> Path:
    """Measure localisation and write ``localisation.json`` (+ ``localisation_per_image.csv``).

    Default output: ``reports/explain/localisation.json``. Returns the JSON's path.
    """
    from skinlesion import config
    from skinlesion.explain.common import METHODS
    from skinlesion.io import write_json
    from skinlesion.serving.inference import Predictor

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    t0 = time.perf_counter()
    predictor = Predictor.from_bundle(bundle_path)
    frame, what = ham10000_with_boxes(bundle_path, n=n, seed=seed)
    log.info("localisation of %s on %d images of %s", predictor.name, len(frame), what)
    kwargs = {"scorecam": {"max_N": scorecam_max_n}, "smoothgrad": {"smooth_samples": smooth_samples}}
    table = measure_localisation(predictor, frame, methods, seed=seed, method_kwargs=kwargs, progress=progress)
    views = {m: predictor.explain_views(m) for m in methods}
    result = {
        "bundle": predictor.name,
        "data": what,
        "n_images": int(len(frame)),
        "n_malignant": int((frame["label"] == 1).sum()),
        "target": "malignant (the map the web app and dashboard show)",
        "tolerance_px": TOLERANCE_PX,
        "input_size": predictor.input_size,
        "box_frame": "HAM10000_metadata_ext.csv boxes (200x150 frame) mapped through the intake's centre "
                     "square crop (150x150) and resize to the model input; clipped to it",
        "metrics": {
            "energy_in_box": "sum of the map inside the lesion box / sum of the map; chance = box_fraction "
                             "(a uniform map); all-zero maps are left out (empty_maps)",
            "pointing_game": "the map's maximum (every maximal pixel) inside the box; a constant map is a miss",
            "pointing_game_tolerance": f"the same with the box grown by {TOLERANCE_PX} px of the "
                                       f"{predictor.input_size} px input (Zhang et al. 2016 use 15 px)",
        },
        "baseline": f"a centred isotropic Gaussian, sigma = {BASELINE_SIGMA} of the side: 'the lesion is in the middle'",
        "methods": {m: {"views": list(views[m]),
                        **({"max_N": scorecam_max_n, "note": "Faster Score-CAM: the max_N channels with the "
                            "largest spatial variance (tf-keras-vis max_N), not all 1,280"} if m == "scorecam" else {}),
                        **({"smooth_samples": smooth_samples, "smooth_noise": 0.2} if m == "smoothgrad" else {})}
                    for m in methods},
        "ci": f"95 % percentile bootstrap over images ({N_BOOTSTRAP} resamples, seed {seed})",
        "seed": seed,
        "seconds_per_image": {str(m): float(g["seconds"].mean()) for m, g in table.groupby("method", sort=False)
                              if m != BASELINE},
        "synthetic": bool(predictor.meta.synthetic),
        "results": _summary(table, seed),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = Path(out) if out else config.reports_dir() / "explain" / "localisation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    table.to_csv(path.with_name(path.stem + "_per_image.csv"), index=False, float_format="%.5g")
    return path


# --------------------------------------------------------------------------------------------
# Randomisation sanity check over many images
# --------------------------------------------------------------------------------------------
def run_sanity(bundle_path: str | os.PathLike[str], *, n: int = 50, method: str = "gradcam", seed: int = 0,
               out: str | os.PathLike[str] | None = None, progress: bool = False) -> Path:
    """:func:`~skinlesion.explain.sanity.sanity_check` on ``n`` HAM10000 images (the same sample
    rule as the localisation) of every member-0 model; writes ``sanity.json`` with, per
    randomisation step, the mean and 95 % bootstrap CI of the Spearman rank correlation and SSIM
    between the original and the randomised map (default ``reports/explain/sanity.json``)."""
    from tqdm.auto import tqdm

    from skinlesion import config
    from skinlesion.data.intake import read_image
    from skinlesion.explain.sanity import sanity_check
    from skinlesion.io import write_json
    from skinlesion.serving.inference import Predictor, read_as, reading_of

    t0 = time.perf_counter()
    predictor = Predictor.from_bundle(bundle_path)
    member = predictor.members[0].bundle
    frame, what = ham10000_with_boxes(bundle_path, n=n, seed=seed)
    rows: list[dict[str, Any]] = []
    layers: dict[str, int] = {}
    for rec in tqdm(list(frame.itertuples()), disable=not progress, desc="sanity"):
        reading = reading_of(member)  # the image as this member sees it (its lesion crop for a crop member)
        image = read_as(read_image(rec.file), {reading})[reading]
        check = sanity_check(member.model, image, method, layer_name=member.meta.last_conv_layer,
                             target="malignant", seed=seed)
        for step, entry in check.items():
            layers[step] = len(entry["layers"])
            rows.append({"image_id": rec.image_id, "label": int(rec.label), "step": step,
                         "spearman": entry["spearman"], "ssim": entry["ssim"]})
    table = pd.DataFrame(rows)
    steps = {}
    for step, part in table.groupby("step", sort=False):
        steps[str(step)] = {"layers_randomised": layers[str(step)],
                            "spearman": mean_ci(part["spearman"], seed=seed),
                            "ssim": mean_ci(part["ssim"], seed=seed),
                            "undefined_spearman": int(part["spearman"].isna().sum())}
    result = {
        "bundle": predictor.name,
        "model_explained": member.meta.run_id,
        "method": method,
        "target": "malignant",
        "data": what,
        "n_images": int(len(frame)),
        "test": "Adebayo et al. 2018 model-parameter randomisation, cascading from the top: the map of the "
                "randomised model vs the original (identity view, no TTA). Low similarity = the map depends "
                "on the learnt weights",
        "spearman_note": "undefined (left out, counted in undefined_spearman) when either map is constant",
        "ci": f"95 % percentile bootstrap over images ({N_BOOTSTRAP} resamples, seed {seed})",
        "steps": steps,
        "synthetic": bool(predictor.meta.synthetic),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = Path(out) if out else config.reports_dir() / "explain" / "sanity.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    table.to_csv(path.with_name(path.stem + "_per_image.csv"), index=False, float_format="%.5g")
    return path


# --------------------------------------------------------------------------------------------
# Tables (notebook 04, README)
# --------------------------------------------------------------------------------------------
def _fmt(block: dict[str, Any] | None) -> str:
    if not block or block.get("mean") is None:
        return "n/a"
    return f"{block['mean']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"


def results_table(result: dict[str, Any] | str | os.PathLike[str], subset: str = "all") -> pd.DataFrame:
    """``localisation.json`` (or its dict) as a table: one row per method, means with 95 % CIs."""
    from skinlesion.io import read_json

    r = result if isinstance(result, dict) else read_json(result)
    tol = r["tolerance_px"]
    rows = []
    for method, block in r["results"].items():
        b = block[subset]
        rows.append({"method": method, "energy in box": _fmt(b["energy_in_box"]),
                     "pointing game": _fmt(b["pointing_game"]), f"pointing ±{tol} px": _fmt(b["pointing_game_tolerance"]),
                     "empty maps": b["empty_maps"], "n": b["n"]})
    return pd.DataFrame(rows).set_index("method")


def sanity_table(result: dict[str, Any] | str | os.PathLike[str]) -> pd.DataFrame:
    """``sanity.json`` (or its dict) as a table: one row per randomisation step."""
    from skinlesion.io import read_json

    r = result if isinstance(result, dict) else read_json(result)
    return pd.DataFrame([{"step": step, "layers randomised": v["layers_randomised"], "Spearman": _fmt(v["spearman"]),
                          "SSIM": _fmt(v["ssim"]), "undefined": v["undefined_spearman"]}
                         for step, v in r["steps"].items()]).set_index("step")

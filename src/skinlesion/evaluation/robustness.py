"""How stable the served model's answer is under changes that should not change it.

Each transform acts on the *decoded original* image (full resolution), before the Predictor's
own intake (centre square crop, resize), as the same lesion photographed, stored or sent
differently would. JPEG and WebP re-encodings go in as bytes, the rest as uint8 arrays. The
reference is the Predictor's answer for the untouched image; for every transform we report the
mean and 95th percentile of ``|p_transformed - p_reference|`` on the calibrated probability, the
fraction of images whose decision string changes, the fraction whose probability crosses the
bundle's threshold, and the signed mean of ``p_transformed - p_reference`` with a bootstrap CI:
a change that moves most images the same way is a cue the model reads, not resampling noise.

Transforms (:data:`TRANSFORMS`, in this order):

* the 8 dihedral views, named as :data:`skinlesion.models.features.VIEWS` (``id`` is a
  determinism check and must give 0): a dermoscopic image has no "up";
* ``jpeg_q75``, ``webp_q80``: lossy re-encoding (chroma subsampling as Pillow defaults);
* ``downscale_0.5``: half the resolution (antialiased bilinear), resized back by the intake;
* ``zoom_in_15``: the central 1/1.15 of each side (the lesion looks 15 % larger);
* ``zoom_out_15``: a dark border of 7.5 % of each side on every edge (15 % smaller), as a
  full-field dermoscope frames the lesion with its black vignette;
* ``warmer``, ``cooler``: colour temperature, red x1.08 and blue x0.92 (or the reverse);
* ``brightness_1.15``: every channel x1.15 (clipped).
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.data.datasets import DataError
from skinlesion.metrics.stats import mean_ci
from skinlesion.models.features import WEBP_QUALITY, downscale, scale_channels

log = logging.getLogger(__name__)

ZOOM = 1.15
TEMPERATURE_SHIFT = 0.08
BRIGHTNESS = 1.15
DARK_BORDER = (8, 8, 8)  # a dermoscope's vignette is near-black, rarely exactly 0
DEFAULT_N = 500
ROBUSTNESS_FILES = ("robustness.json", "per_image.csv", "robustness.png")  # what run_robustness writes
_WRITER = "`skinlesion robustness`"

Transformed = np.ndarray | bytes


def _view(name: str) -> Callable[[np.ndarray], np.ndarray]:
    from skinlesion.models.features import apply_view

    def fn(img: np.ndarray) -> np.ndarray:
        return apply_view(img[None], name)[0]

    return fn


def _encode(fmt: str, quality: int) -> Callable[[np.ndarray], bytes]:
    def fn(img: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, quality=quality)
        return buf.getvalue()

    return fn


def zoom_in(img: np.ndarray, factor: float = ZOOM) -> np.ndarray:
    """The central ``1/factor`` of each side (no resampling: the intake resizes it)."""
    h, w = img.shape[:2]
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[top:top + ch, left:left + cw])


def zoom_out(img: np.ndarray, factor: float = ZOOM, fill: tuple[int, int, int] = DARK_BORDER) -> np.ndarray:
    """``img`` centred on a dark canvas ``factor`` times its size (each side)."""
    h, w = img.shape[:2]
    ph, pw = round(h * factor), round(w * factor)
    out = np.empty((ph, pw, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    top, left = (ph - h) // 2, (pw - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def _transforms() -> dict[str, Callable[[np.ndarray], Transformed]]:
    from skinlesion.models.features import VIEWS

    t: dict[str, Callable[[np.ndarray], Transformed]] = {v: _view(v) for v in VIEWS}
    t["jpeg_q75"] = _encode("JPEG", 75)
    t[f"webp_q{WEBP_QUALITY}"] = _encode("WEBP", WEBP_QUALITY)
    t["downscale_0.5"] = downscale
    t["zoom_in_15"] = zoom_in
    t["zoom_out_15"] = zoom_out
    t["warmer"] = lambda im: scale_channels(im, (1 + TEMPERATURE_SHIFT, 1.0, 1 - TEMPERATURE_SHIFT))
    t["cooler"] = lambda im: scale_channels(im, (1 - TEMPERATURE_SHIFT, 1.0, 1 + TEMPERATURE_SHIFT))
    t["brightness_1.15"] = lambda im: scale_channels(im, (BRIGHTNESS,) * 3)
    return t


TRANSFORMS: dict[str, Callable[[np.ndarray], Transformed]] = _transforms()
DIHEDRAL: tuple[str, ...] = ("id", "r90", "r180", "r270", "fh", "fh_r90", "fh_r180", "fh_r270")


def apply_transform(name: str, image: np.ndarray) -> Transformed:
    """Transform ``name`` of one decoded RGB uint8 image (array, or encoded bytes)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](np.asarray(image, np.uint8))


def _predict(predictor: Any, items: list[Transformed], batch_size: int) -> list[Any]:
    """Predictions for ``items`` (None where the intake refuses one), in batches."""
    from skinlesion.data.intake import ImageRejected

    out: list[Any] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        try:
            out += predictor.predict_many(chunk)
        except ImageRejected:
            # One refused image would sink the batch; redo it one by one to keep the rest.
            for item in chunk:
                try:
                    out += predictor.predict_many([item])
                except ImageRejected as exc:
                    log.warning("transformed image refused by the intake: %s", exc)
                    out.append(None)
    return out


def measure(predictor: Any, images: Sequence[np.ndarray], *, transforms: Sequence[str] | None = None,
            ids: Sequence[str] | None = None, batch_size: int = 32) -> pd.DataFrame:
    """Per image and transform: probability, raw probability, decision and their reference values.

    ``images`` are decoded RGB uint8 arrays (full resolution); ``predictor`` is a
    :class:`~skinlesion.serving.inference.Predictor`. Returns one row per (image, transform)
    with ``dp = probability - ref_probability`` and ``flip`` (decision differs from the
    reference); a transformed image the intake refuses has NaN there and is left out of
    :func:`summarise`.
    """
    names = list(transforms) if transforms is not None else list(TRANSFORMS)
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {unknown}; known: {', '.join(TRANSFORMS)}")
    images = [np.ascontiguousarray(np.asarray(im, np.uint8)) for im in images]
    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    threshold = float(predictor.policy.threshold)
    ref = _predict(predictor, list(images), batch_size)
    keep = [i for i, r in enumerate(ref) if r is not None]
    rows: list[dict[str, Any]] = []
    for name in names:
        preds = _predict(predictor, [TRANSFORMS[name](images[i]) for i in keep], batch_size)
        for i, pred in zip(keep, preds):
            r = ref[i]
            row = {"image": ids[i], "transform": name, "ref_probability": r.probability,
                   "ref_raw_probability": r.raw_probability, "ref_decision": r.decision,
                   "probability": np.nan, "raw_probability": np.nan, "decision": "", "dp": np.nan, "flip": np.nan,
                   "crosses_threshold": np.nan}
            if pred is not None:
                row.update(probability=pred.probability, raw_probability=pred.raw_probability,
                           decision=pred.decision, dp=pred.probability - r.probability,
                           flip=float(pred.decision != r.decision),
                           crosses_threshold=float((pred.probability >= threshold) != (r.probability >= threshold)))
            rows.append(row)
        log.info("robustness: %s done (%d images)", name, len(keep))
    return pd.DataFrame(rows)


def _stats(part: pd.DataFrame, *, ci: bool = True) -> dict[str, Any]:
    ok = part.dropna(subset=["dp"])
    if not len(ok):
        return {"mean_abs_dp": None, "p95_abs_dp": None, "decision_flip_rate": None, "threshold_cross_rate": None,
                "mean_dp": None, "n": 0} | ({"mean_dp_ci": None} if ci else {})
    dp = ok["dp"].to_numpy(float)
    out: dict[str, Any] = {"mean_abs_dp": float(np.abs(dp).mean()), "p95_abs_dp": float(np.percentile(np.abs(dp), 95)),
                           "decision_flip_rate": float(ok["flip"].mean()),
                           "threshold_cross_rate": float(ok["crosses_threshold"].mean()),
                           "mean_dp": float(dp.mean()), "n": int(len(ok))}
    if ci:
        interval = mean_ci(dp)
        out["mean_dp_ci"] = [interval["low"], interval["high"]]
    return out


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    """``{"transforms": {name: {mean_abs_dp, p95_abs_dp, decision_flip_rate, threshold_cross_rate,
    mean_dp, mean_dp_ci, n}}, "groups": {...}}``.

    ``decision_flip_rate`` counts any change of the decision string, i.e. a crossing of either
    edge of the refer band; ``threshold_cross_rate`` a crossing of the bundle's threshold, the
    binary operating point of its sensitivity/specificity figures (it lies inside the band, so
    either can happen without the other). ``mean_dp_ci`` is a 95 % percentile bootstrap over images.
    ``groups["dihedral"]`` pools the 7 non-identity views (each image counted 7 times, so no CI:
    its rows are not independent).
    """
    out: dict[str, Any] = {"transforms": {name: _stats(g) for name, g in table.groupby("transform", sort=False)}}
    views = table[table["transform"].isin([v for v in DIHEDRAL if v != "id"])]
    if len(views):
        out["groups"] = {"dihedral": {**_stats(views, ci=False), "views": sorted(views["transform"].unique())}}
    return out


# --------------------------------------------------------------------------------------------
# Which images
# --------------------------------------------------------------------------------------------
def select_images(bundle_path: str | os.PathLike[str], data: str | None = None, *, n: int | None = DEFAULT_N,
                  seed: int = 0) -> tuple[list[Path], pd.DataFrame, str]:
    """(files, their records, description) of the images to test on.

    ``data`` is a registered source name (or a folder-per-class directory): its official test
    split when it has one, else all of it. Default: the bundle's own test split when its
    ``splits.csv`` names sources, else the Kaggle test split. At most ``n`` images, seeded.
    """
    from skinlesion.bundle.format import load_meta
    from skinlesion.data.sources import load_source
    from skinlesion.data.training_data import roots_for

    bundle_path = Path(bundle_path)
    frame: pd.DataFrame | None = None
    what = ""
    if data is None:
        meta = load_meta(bundle_path)
        splits_file = bundle_path / (meta.training.splits_file or "splits.csv")
        if meta.kind != "ensemble" and splits_file.is_file():
            table = pd.read_csv(splits_file)
            if "source" in table.columns:
                test = table[table["split"] == "test"]
                if len(test):
                    roots = roots_for(test, meta.training.data_dir)
                    frame = test.assign(file=[str(roots[s] / p) for s, p in zip(test["source"], test["path"])])
                    what = f"the bundle's test split ({', '.join(sorted(test['source'].unique()))})"
        if frame is None:
            data = "kaggle"
    if frame is None:
        src = load_source(data or "kaggle")
        recs = src.records
        test = recs[recs["split"] == "test"]
        part = test if len(test) else recs
        frame = part.assign(file=[str(p) for p in src.paths(part)])
        what = f"{src.name} {'test split' if len(test) else '(all images)'}"
    if frame.empty:
        raise DataError(f"no images to test robustness on ({what})")
    if n is not None and len(frame) > n:
        frame = frame.sample(n=n, random_state=seed).sort_index()
    missing = [f for f in frame["file"] if not Path(f).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {what} are not on disk (e.g. {missing[0]}); "
                        "pass --data with a source that is here")
    return [Path(f) for f in frame["file"]], frame.reset_index(drop=True), what


def decode(files: Sequence[Path]) -> tuple[list[np.ndarray], list[int]]:
    """Decoded RGB uint8 arrays of ``files`` and the indices that could be read."""
    from skinlesion.data.intake import ImageRejected, read_image

    arrays, ok = [], []
    for i, f in enumerate(files):
        try:
            arrays.append(np.asarray(read_image(f), np.uint8))
            ok.append(i)
        except (ImageRejected, OSError) as exc:
            log.warning("skipped unreadable image %s: %s", f, exc)
    return arrays, ok


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def plot(summary: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Bar charts per transform (PNG): decision flips, mean |dp|, and the signed mean dp with its CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = summary["transforms"]
    names = list(rows)
    flips = [100 * (rows[k]["decision_flip_rate"] or 0.0) for k in names]
    dps = [rows[k]["mean_abs_dp"] or 0.0 for k in names]
    p95 = [rows[k]["p95_abs_dp"] or 0.0 for k in names]
    signed = np.array([rows[k]["mean_dp"] or 0.0 for k in names])
    ci = np.array([rows[k]["mean_dp_ci"] or [0.0, 0.0] for k in names], float).reshape(-1, 2)
    fig = Figure(figsize=(max(7.0, 0.5 * len(names) + 2), 9.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    x = np.arange(len(names))
    ax1.bar(x, flips, color="tab:red")
    ax1.axhline(1.0, color="grey", ls="--", lw=1, label="goal 1 %")
    ax1.set_ylabel("decision flips (%)")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.bar(x, dps, color="tab:blue", label="mean |Δp|")
    ax2.scatter(x, p95, color="black", marker="_", s=120, label="95th percentile |Δp|")
    ax2.axhline(0.02, color="grey", ls="--", lw=1, label="goal mean 0.02")
    ax2.set_ylabel("|Δp| (calibrated probability)")
    ax2.legend(loc="upper right", fontsize=8)
    ax3.bar(x, signed, color=np.where(signed >= 0, "tab:orange", "tab:green"))
    ax3.errorbar(x, signed, yerr=np.abs(ci.T - signed), fmt="none", ecolor="black", lw=1, capsize=3)
    ax3.axhline(0.0, color="grey", lw=1)
    ax3.set_ylabel("mean Δp, signed (95 % CI)")
    ax3.set_xticks(x, names, rotation=45, ha="right")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def run_robustness(bundle_path: str | os.PathLike[str], data: str | None = None, *, n: int | None = DEFAULT_N,
                   seed: int = 0, out_dir: str | os.PathLike[str] | None = None,
                   transforms: Sequence[str] | None = None, batch_size: int = 32) -> Path:
    """Measure a bundle's robustness and write ``robustness.json``, ``robustness.png`` and
    ``per_image.csv`` to ``out_dir`` (default ``reports/robustness/<run-id>[-<data>]``).

    The folder is replaced as a whole once all three are written
    (:func:`skinlesion.io.replacing_folder`): a failure part-way leaves the previous results as
    they were. A folder holding other files is refused before measuring. Returns the output folder.
    """
    import time

    from skinlesion import config
    from skinlesion.io import check_replaceable, replacing_folder, write_json
    from skinlesion.serving.inference import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.from_bundle(bundle_path)
    name = predictor.name if data is None else f"{predictor.name}-{Path(data).name}"
    out = Path(out_dir) if out_dir else config.reports_dir() / "robustness" / name
    check_replaceable(out, owns=ROBUSTNESS_FILES, what=_WRITER)  # before minutes of measuring
    files, frame, what = select_images(bundle_path, data, n=n, seed=seed)
    arrays, ok = decode(files)
    if not arrays:
        raise DataError(f"none of the {len(files)} images of {what} could be read")
    frame = frame.iloc[ok].reset_index(drop=True)
    ids = [f"{s}:{p}" for s, p in zip(frame["source"], frame["path"])] if "source" in frame else None
    log.info("robustness of %s on %d images of %s", predictor.name, len(arrays), what)
    table = measure(predictor, arrays, transforms=transforms, ids=ids, batch_size=batch_size)
    summary = summarise(table)
    result = {
        "bundle": predictor.name,
        "data": what,
        "n_images": len(arrays),
        "n_unreadable": len(files) - len(arrays),
        "seed": seed,
        "probability": "calibrated P(malignant) as served (with the bundle's own TTA setting); dp = transformed - untouched",
        "reference": "the prediction on the untouched image (decoded, then the Predictor's own intake)",
        "synthetic": bool(predictor.meta.synthetic),
        "seconds": round(time.perf_counter() - t0, 1),
        **summary,
    }
    with replacing_folder(out, owns=ROBUSTNESS_FILES, what=_WRITER) as tmp:
        write_json(tmp / "robustness.json", result)
        table.to_csv(tmp / "per_image.csv", index=False)
        plot(summary, tmp / "robustness.png", title=f"{predictor.name}: {len(arrays)} images of {what}")
    return out

"""A threshold that survives a new site: re-fit temperature and threshold on a few labelled images.

A new clinic's dermatoscope and population shift the model's probabilities, so the threshold
frozen on the training collections no longer gives the sensitivity it promised.
:func:`calibrate_site` re-fits the calibration temperature and the decision policy on a small
labelled sample of the site (the model's weights are untouched) and writes them into a **new**
bundle that records where they came from; the parent bundle is only read.
:func:`site_learning_curve` measures how many site images that takes: for N = 25, 50, 100, 200
it re-fits on N random site images and scores sensitivity and specificity on the site images
not used, several times over.

Everything uses the Predictor's *raw* probability, the quantity the bundle's own temperature
acts on (for an ensemble, the mean of its members' calibrated probabilities), so the re-fitted
policy plugs into the Predictor unchanged. An ensemble keeps its members and their calibration;
only its own temperature and policy are re-fitted.

Sampling: a calibration sample of N images is stratified by class in the site's proportions,
but with at least :data:`MIN_PER_CLASS` of each class, because the threshold is a quantile of
the malignant scores and cannot be set from two malignant cases.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.bundle.format import BUNDLE_FILE, member_refs
from skinlesion.data.datasets import DataError
from skinlesion.data.sources import Source

log = logging.getLogger(__name__)

MIN_SITE_IMAGES = 20
MIN_PER_CLASS = 5
CURVE_SIZES: tuple[int, ...] = (25, 50, 100, 200)
CURVE_REPEATS = 20
SITE_FILE = "site_calibration.csv"


# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------
def read_site(site: str | os.PathLike[str]) -> Source:
    """A site's labelled images: a folder ``DIR/{benign,malignant}/*``, a registered source name, or
    ``SOURCE:SPLIT`` for one official split of a source (e.g. ``isic2017:test``)."""
    from dataclasses import replace

    from skinlesion.data.sources import READERS, load_source, read_folder

    name = os.fspath(site)
    if name in READERS:
        return load_source(name)
    base, _, split = name.partition(":")
    if base in READERS and split:
        src = load_source(base)
        part = src.records[src.records["split"] == split].reset_index(drop=True)
        if part.empty:
            raise DataError(f"source {base} has no {split!r} split (it has {sorted(set(src.records['split']))})")
        return replace(src, records=part, info=replace(src.info, name=name))
    path = Path(name)
    if not path.is_dir():
        raise DataError(f"site {name!r} is neither a folder (DIR/benign, DIR/malignant) nor a registered "
                        f"source ({', '.join(READERS)})")
    return read_folder(path)


def site_fingerprint(source: Source, records: pd.DataFrame | None = None) -> str:
    """sha256 over the sorted relative paths, labels and file sizes of a site's images."""
    frame = source.records if records is None else records
    h = hashlib.sha256()
    for p, y in sorted(zip(frame["path"].astype(str), frame["label"].astype(int))):
        h.update(f"{p}\t{y}\t{(source.root / p).stat().st_size}\n".encode())
    return h.hexdigest()


def check_site_set(labels: Sequence[int] | np.ndarray, what: str = "the site set") -> None:
    """Raise :class:`DataError` unless ``labels`` hold both classes, >= 20 images, >= 5 per class."""
    y = np.asarray(labels, dtype=int)
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "benign" if n_pos == 0 else "malignant"
        raise DataError(f"{what} has only {only} images ({len(y)}); re-fitting a threshold needs both "
                        f"benign and malignant images (at least {MIN_PER_CLASS} of each)")
    if len(y) < MIN_SITE_IMAGES or min(n_pos, n_neg) < MIN_PER_CLASS:
        raise DataError(f"{what} is too small: {n_neg} benign + {n_pos} malignant; re-fitting a threshold "
                        f"needs at least {MIN_SITE_IMAGES} images and {MIN_PER_CLASS} of each class")


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``n`` items drawn by class in proportion, with >= MIN_PER_CLASS per class."""
    labels = np.asarray(labels, dtype=int)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if n >= len(labels):
        return np.arange(len(labels))
    k_pos = int(round(n * len(pos) / len(labels)))
    k_pos = min(len(pos), max(k_pos, MIN_PER_CLASS), n - min(len(neg), MIN_PER_CLASS))
    k_neg = min(len(neg), n - k_pos)
    k_pos = min(len(pos), n - k_neg)
    chosen = np.concatenate([rng.choice(pos, k_pos, replace=False), rng.choice(neg, k_neg, replace=False)])
    return np.sort(chosen)


def _predictor(bundle_path: str | os.PathLike[str]) -> Any:
    from skinlesion.serving.inference import Predictor

    return Predictor.from_bundle(bundle_path)


def score_site(predictor: Any, source: Source, records: pd.DataFrame | None = None, *,
               progress: bool = False) -> pd.DataFrame:
    """``path, label, raw_probability`` of the site images the Predictor can read (others logged)."""
    frame = source.records if records is None else records
    preds = predictor.predict_batch(source.paths(frame), progress=progress)
    preds["path"] = frame["path"].to_numpy()
    preds["label"] = frame["label"].to_numpy().astype(int)
    bad = preds["error"].fillna("") != ""
    if bad.any():
        log.warning("site: %d unreadable image(s) left out, e.g. %s: %s", int(bad.sum()),
                    preds.loc[bad, "path"].iloc[0], preds.loc[bad, "error"].iloc[0])
    ok = preds[~bad]
    return pd.DataFrame({"path": ok["path"].to_numpy(), "label": ok["label"].to_numpy(),
                         "raw_probability": ok["raw_probability"].to_numpy(float)})


def _score_readable(predictor: Any, source: Source, idx: np.ndarray, rng: np.random.Generator, *,
                    progress: bool = False) -> pd.DataFrame:
    """:func:`score_site` of the images at ``idx``, each unreadable one replaced by another image
    of its class not yet drawn (in ``rng``'s order), so that one bad file in a site folder costs
    the sample nothing while the site has readable images to spare."""
    labels = source.records["label"].to_numpy(dtype=int)
    wanted = np.bincount(labels[idx], minlength=2)
    drawn = set(idx.tolist())
    # Each class's spare images in one seeded order, tried in chunks (not one round per missing image).
    spare = {c: [j for j in rng.permutation(np.flatnonzero(labels == c)) if j not in drawn] for c in (0, 1)}
    scored = score_site(predictor, source, source.records.iloc[idx], progress=progress)
    while True:
        short = wanted - np.bincount(scored["label"].to_numpy(dtype=int), minlength=2)
        extra = []
        for c in (0, 1):
            if short[c] > 0:
                take = max(int(short[c]), 16)
                extra += spare[c][:take]
                spare[c] = spare[c][take:]
        if not extra:
            # Scored in chunks, so a class may have more than it asked for: the ones scored first are kept.
            y = scored["label"].to_numpy(dtype=int)
            keep = np.zeros(len(scored), dtype=bool)
            for c in (0, 1):
                keep[np.flatnonzero(y == c)[:wanted[c]]] = True
            return scored[keep].reset_index(drop=True)
        more = score_site(predictor, source, source.records.iloc[sorted(extra)])
        scored = pd.concat([scored, more], ignore_index=True)


def _fit(y: np.ndarray, raw: np.ndarray, parent: Any) -> Any:
    from skinlesion.metrics.calibration import build_decision_policy

    return build_decision_policy(y, raw, parent.target_sensitivity, band_sensitivity=parent.band_sensitivity,
                                 band_specificity=parent.band_specificity)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "site"


# --------------------------------------------------------------------------------------------
# calibrate: a new bundle
# --------------------------------------------------------------------------------------------
def calibrate_site(
    bundle_path: str | os.PathLike[str],
    site: str | os.PathLike[str] | Source,
    *,
    n: int = 100,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    progress: bool = False,
) -> Path:
    """Re-fit temperature and threshold of ``bundle_path`` on ``n`` labelled site images.

    Writes a new bundle (default under ``models/site/``, apart from the models served; it is
    served only when named, e.g. with ``SKINLESION_MODEL``) holding the parent's files unchanged, ``site_calibration.csv``
    (the images used, their raw and re-calibrated probabilities) and a ``bundle.json`` whose
    ``decision`` and ``calibration`` are the re-fitted ones, plus a ``provenance`` block.
    Returns its folder. The parent is only read.
    """
    from skinlesion import config
    from skinlesion.bundle.format import new_run_id, read_meta, write_bundle
    from skinlesion.io import sha256_file

    parent_path = Path(bundle_path)
    # The cheap checks first: a site set that cannot work is refused before the model loads.
    if n < MIN_SITE_IMAGES:
        raise DataError(f"--n {n} is too small; use at least {MIN_SITE_IMAGES} site images")
    source = site if isinstance(site, Source) else read_site(site)
    check_site_set(source.records["label"], f"site {source.name}")
    predictor = _predictor(parent_path)
    parent_raw = read_meta(parent_path)
    parent_policy = predictor.policy
    if source.name in predictor.meta.training.sources:
        log.warning("the bundle was trained on source %s: its images are not a new site, so the re-fitted "
                    "threshold will look better than it is", source.name)

    rng = np.random.default_rng(seed)
    idx = stratified_sample(source.records["label"].to_numpy(), n, rng)
    check_site_set(source.records["label"].iloc[idx], f"the {len(idx)}-image calibration sample of site {source.name}")
    scored = _score_readable(predictor, source, idx, rng, progress=progress)
    check_site_set(scored["label"], f"the readable calibration sample of site {source.name}")
    y, raw = scored["label"].to_numpy(), scored["raw_probability"].to_numpy()
    policy = _fit(y, raw, parent_policy)
    scored["probability"] = policy.calibrate(raw)
    scored["decision"] = [policy.decide(float(p)) for p in scored["probability"]]
    scored.insert(0, "source", source.name)
    log.info("site %s: %d images, T %.3f -> %.3f, threshold %.3f -> %.3f", source.name, len(scored),
             parent_policy.temperature, policy.temperature, parent_policy.threshold, policy.threshold)

    meta = {k: v for k, v in parent_raw.items()
            if k not in {"files", "run_id", "created", "versions", "schema_version", "provenance"}}
    parent_metrics = dict(parent_raw.get("metrics") or {})
    meta["decision"] = policy.to_dict()
    meta["calibration"] = {"method": "temperature (re-fitted on site images)", "temperature": policy.temperature}
    # "val" is, as everywhere, the data the threshold and temperature were fitted on: here the site sample.
    meta["metrics"] = {"val": dict(policy.validation_metrics), "parent_val": parent_metrics.get("val", {})}
    meta["provenance"] = {
        "kind": "site calibration",
        "parent_run_id": predictor.meta.run_id,
        "parent_path": config.display_path(parent_path),
        "parent_bundle_json_sha256": sha256_file(parent_path / BUNDLE_FILE),
        "parent_decision": parent_raw.get("decision"),
        "parent_calibration": parent_raw.get("calibration"),
        "parent_versions": parent_raw.get("versions"),
        "parent_provenance": parent_raw.get("provenance"),
        "site": {
            "name": source.name, "root": config.display_path(source.root),
            "fingerprint": site_fingerprint(source), "n_images": len(source.records),
            "n_malignant": int(source.records["label"].sum()),
        },
        "n": int(len(scored)),
        "n_requested": int(n),
        "n_malignant": int(y.sum()),
        "seed": int(seed),
        "sampling": f"stratified by class, at least {MIN_PER_CLASS} per class",
        "probabilities": ("raw output as served (dihedral TTA)" if predictor.default_tta else "raw output as served")
                         + (", i.e. the mean of the members' calibrated probabilities" if predictor.bundle.kind == "ensemble"
                            else ""),
        "file": SITE_FILE,
    }
    files: dict[str, Any] = {name: parent_path / name for name in parent_raw["files"]}
    files[SITE_FILE] = scored
    out = Path(out_dir) if out_dir else config.models_dir() / "site"
    run_id = run_id or f"{new_run_id(str(meta.get('backbone') or 'model'))}-site-{_slug(source.name)}"
    if predictor.bundle.kind == "ensemble":
        # The same member bundles, named relative to where the new bundle goes.
        meta["members"] = member_refs([m.bundle.path for m in predictor.members], out / run_id)
    path = write_bundle(meta, files, out_dir=out, run_id=run_id)
    log.info("site-calibrated bundle written: %s", config.display_path(path))
    return path


# --------------------------------------------------------------------------------------------
# The learning curve
# --------------------------------------------------------------------------------------------
def _sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    call = p >= threshold
    pos, neg = y == 1, y == 0
    sens = float(call[pos].mean()) if pos.any() else math.nan
    spec = float((~call[neg]).mean()) if neg.any() else math.nan
    return sens, spec


def curve_runs(scored: pd.DataFrame, parent_policy: Any, sizes: Sequence[int] = CURVE_SIZES,
               repeats: int = CURVE_REPEATS, seed: int = 0) -> pd.DataFrame:
    """One row per (N, repeat): the policy re-fitted on N site images, scored on the rest.

    ``scored`` has ``label`` and ``raw_probability`` (from :func:`score_site`). A size that
    leaves fewer than :data:`MIN_PER_CLASS` held-out images of a class is skipped (logged).
    """
    from skinlesion.metrics.calibration import apply_temperature

    y_all = scored["label"].to_numpy(int)
    raw_all = scored["raw_probability"].to_numpy(float)
    check_site_set(y_all, "the site set")
    if repeats < 1:
        raise DataError(f"repeats must be at least 1, not {repeats}")
    rows: list[dict[str, Any]] = []
    for size in sizes:
        if size < MIN_SITE_IMAGES:
            raise DataError(f"curve size {size} is below the minimum of {MIN_SITE_IMAGES} site images")
        for r in range(repeats):
            rng = np.random.default_rng([seed, size, r])
            cal = stratified_sample(y_all, size, rng)
            held = np.setdiff1d(np.arange(len(y_all)), cal)
            y_ho = y_all[held]
            if min(int(y_ho.sum()), int(len(y_ho) - y_ho.sum())) < MIN_PER_CLASS:
                log.warning("curve: N=%d leaves too few held-out site images of a class (%d); skipped",
                            size, len(held))
                break
            policy = _fit(y_all[cal], raw_all[cal], parent_policy)
            p_ho = apply_temperature(raw_all[held], policy.temperature)
            sens, spec = _sens_spec(y_ho, p_ho, policy.threshold)
            rows.append({"n": int(size), "repeat": r, "n_calibration": int(len(cal)),
                         "n_calibration_malignant": int(y_all[cal].sum()), "n_held_out": int(len(held)),
                         "n_held_out_malignant": int(y_ho.sum()), "temperature": policy.temperature,
                         "threshold": policy.threshold, "sensitivity": sens, "specificity": spec})
    if not rows:
        # Nothing to plot or summarise: say so before any report file is written.
        raise DataError(f"none of the curve sizes {list(sizes)} leaves {MIN_PER_CLASS} held-out site images of each "
                        f"class among the {len(y_all)} scored ({int(y_all.sum())} malignant); use smaller sizes "
                        "or a larger site set")
    return pd.DataFrame(rows, columns=["n", "repeat", "n_calibration", "n_calibration_malignant", "n_held_out",
                                       "n_held_out_malignant", "temperature", "threshold", "sensitivity",
                                       "specificity"])


def summarise_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Per N: repeats, and mean, standard deviation, 10th and 90th percentile of sensitivity and
    specificity (and the mean threshold and temperature) over the repeats."""
    rows = []
    for size, g in runs.groupby("n", sort=True):
        row: dict[str, Any] = {"n": int(size), "repeats": int(len(g)), "n_held_out": float(g["n_held_out"].mean())}
        for m in ("sensitivity", "specificity"):
            v = g[m].to_numpy(float)
            row.update({f"{m}_mean": float(np.mean(v)), f"{m}_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                        f"{m}_p10": float(np.percentile(v, 10)), f"{m}_p90": float(np.percentile(v, 90))})
        row["threshold_mean"] = float(g["threshold"].mean())
        row["temperature_mean"] = float(g["temperature"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _site_records(site_records: Source | pd.DataFrame, root: str | os.PathLike[str] | None) -> Source:
    if isinstance(site_records, Source):
        return site_records
    from skinlesion.data.sources import SourceInfo

    frame = site_records.reset_index(drop=True)
    base = Path(root) if root is not None else Path("/")
    if root is None and not all(Path(p).is_absolute() for p in frame["path"]):
        raise DataError("site records with relative paths need root=")
    return Source(SourceInfo("site", "site records", "", "unknown", "dermoscopic", ""), base, frame)


def site_learning_curve(
    bundle: str | os.PathLike[str],
    site_records: Source | pd.DataFrame,
    sizes: Sequence[int] = CURVE_SIZES,
    repeats: int = CURVE_REPEATS,
    seed: int = 0,
    *,
    root: str | os.PathLike[str] | None = None,
    max_images: int | None = 2000,
) -> pd.DataFrame:
    """Held-out-site sensitivity and specificity after re-fitting on N site images, per N.

    ``site_records`` is a :class:`Source` or a records table (``path``, ``label``; paths
    relative to ``root`` or absolute). At most ``max_images`` site images are scored (a seeded
    stratified sample), once; every repeat then re-fits on N of them and scores the rest at
    the re-fitted threshold. Returns :func:`summarise_curve` of :func:`curve_runs`.
    """
    predictor = _predictor(bundle)
    source = _site_records(site_records, root)
    scored = _score_pool(predictor, source, max_images, seed)
    return summarise_curve(curve_runs(scored, predictor.policy, sizes, repeats, seed))


def _score_pool(predictor: Any, source: Source, max_images: int | None, seed: int,
                progress: bool = False) -> pd.DataFrame:
    recs = source.records
    check_site_set(recs["label"], f"site {source.name}")
    if max_images is not None and len(recs) > max_images:
        recs = recs.iloc[stratified_sample(recs["label"].to_numpy(), max_images,
                                           np.random.default_rng([seed, 1]))].reset_index(drop=True)
    return score_site(predictor, source, recs, progress=progress)


def plot_curve(curve: pd.DataFrame, path: str | os.PathLike[str], *, target_sensitivity: float | None = None,
               frozen: Mapping[str, Any] | None = None, title: str = "") -> Path:
    """Held-out sensitivity and specificity (mean and 10-90 % band) against N (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for m, colour in (("sensitivity", "tab:red"), ("specificity", "tab:blue")):
        ax.plot(curve["n"], curve[f"{m}_mean"], "o-", color=colour, label=f"{m} (re-fitted, held-out site images)")
        ax.fill_between(curve["n"], curve[f"{m}_p10"], curve[f"{m}_p90"], color=colour, alpha=0.15)
        if frozen and isinstance(frozen.get(m), float) and math.isfinite(frozen[m]):
            ax.axhline(frozen[m], color=colour, ls=":", lw=1.2, label=f"{m} at the parent's frozen threshold")
    if target_sensitivity is not None:
        ax.axhline(target_sensitivity, color="grey", ls="--", lw=1, label=f"target sensitivity {target_sensitivity:.2f}")
    ax.set_xscale("log")
    ax.set_xticks(list(curve["n"]), [str(v) for v in curve["n"]])
    ax.set_xlabel("site images used for re-fitting (N)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("rate (mean, 10-90 % band over repeats)")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def write_curve(
    bundle_path: str | os.PathLike[str],
    site: str | os.PathLike[str] | Source,
    *,
    sizes: Sequence[int] = CURVE_SIZES,
    repeats: int = CURVE_REPEATS,
    seed: int = 0,
    max_images: int | None = 2000,
    out_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    progress: bool = False,
) -> Path:
    """The learning curve as ``curve.json``, ``curve.csv`` (per N), ``runs.csv`` (per repeat) and
    ``curve.png`` in ``out_dir / run_id`` (default ``reports/site/<bundle run id>-<site>``)."""
    from skinlesion import config
    from skinlesion.io import write_json
    from skinlesion.metrics.calibration import apply_temperature

    source = site if isinstance(site, Source) else read_site(site)
    check_site_set(source.records["label"], f"site {source.name}")
    predictor = _predictor(bundle_path)
    scored = _score_pool(predictor, source, max_images, seed, progress)
    runs = curve_runs(scored, predictor.policy, sizes, repeats, seed)
    curve = summarise_curve(runs)
    y, raw = scored["label"].to_numpy(int), scored["raw_probability"].to_numpy(float)
    sens, spec = _sens_spec(y, apply_temperature(raw, predictor.policy.temperature), predictor.policy.threshold)
    frozen: dict[str, Any] = {"sensitivity": sens, "specificity": spec, "threshold": float(predictor.policy.threshold),
              "n": int(len(y)), "note": "the parent bundle's frozen policy on every scored site image"}
    out = Path(out_dir) if out_dir else config.reports_dir() / "site"
    folder = out / (run_id or f"{predictor.name}-{_slug(source.name)}")
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "bundle": predictor.name,
        "site": {"name": source.name, "root": config.display_path(source.root),
                 "fingerprint": site_fingerprint(source), "n_scored": int(len(y)), "n_malignant": int(y.sum())},
        "target_sensitivity": float(predictor.policy.target_sensitivity),
        "sizes": [int(s) for s in sizes], "repeats": int(repeats), "seed": int(seed),
        "method": ("per repeat: a stratified sample of N site images (>= 5 per class) re-fits temperature and "
                   "threshold; sensitivity and specificity are measured on the other scored site images"),
        "frozen": frozen,
        "curve": curve.to_dict(orient="records"),
    }
    write_json(folder / "curve.json", result)
    curve.to_csv(folder / "curve.csv", index=False)
    runs.to_csv(folder / "runs.csv", index=False)
    plot_curve(curve, folder / "curve.png", target_sensitivity=float(predictor.policy.target_sensitivity),
               frozen=frozen, title=f"{predictor.name} on {source.name}")
    return folder

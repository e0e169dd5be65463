"""Several photos of one lesion: what combining them buys, measured on HAM10000.

HAM10000 has several photos of many lesions (``lesion_id``). Given per-image predictions of a
model that never saw HAM10000 (the leave-one-source-out run of a recipe, ``predictions.csv`` under
``reports/generalisation/<recipe>/``), this compares, on the same lesions:

* **per image**: every photo scored on its own (the AUC over images; lesions with more photos
  weigh more);
* **one photo per lesion**: what a user with a single photo gets (one photo drawn at random per
  lesion, redrawn in every bootstrap resample);
* **per lesion**: the photos of a lesion combined by
  :func:`skinlesion.serving.combine.combine_probabilities` (sigmoid of the mean logit).

Two sets of lesions: all of them (single-photo lesions are equal under every rule) and only the
lesions with at least two photos, where the rule can make a difference. Confidence intervals come
from one paired bootstrap over *lesions* (all photos of a lesion move together, since photos of
one lesion are not independent), stratified by the lesion's label: :func:`skinlesion.metrics.
stats.bootstrap_indices` draws the lesions, and the AUCs are computed with each lesion weighted by
how often it was drawn. Sensitivity and specificity are at the run's frozen threshold.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from skinlesion import config
from skinlesion.data.datasets import DataError
from skinlesion.io import read_json, write_json

RULES = ("per_image", "single_photo", "per_lesion")


def lesion_table(predictions: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Per-image predictions joined to their lesion: columns path, lesion, label, probability.

    ``predictions`` has columns path, probability, y_true (and error); ``records`` is the
    source's record table (path, label, group). Every prediction must find its record and agree
    on the label; a lesion with photos of both labels is an error.
    """
    preds = predictions[predictions["error"].fillna("") == ""] if "error" in predictions else predictions
    merged = preds[["path", "probability", "y_true"]].merge(records[["path", "label", "group"]], on="path",
                                                             how="left", validate="one_to_one")
    if merged["group"].isna().any():
        missing = merged.loc[merged["group"].isna(), "path"].head(3).tolist()
        raise DataError(f"{int(merged['group'].isna().sum())} predicted image(s) are not in the source's records, e.g. {missing}")
    if (merged["label"].astype(int) != merged["y_true"].astype(int)).any():
        raise DataError("the predictions' labels disagree with the source's records; were they made on another copy?")
    mixed = merged.groupby("group")["label"].nunique()
    if (mixed > 1).any():
        raise DataError(f"lesion(s) with photos of both labels: {mixed[mixed > 1].index[:3].tolist()}")
    return pd.DataFrame({"path": merged["path"], "lesion": merged["group"], "label": merged["label"].astype(int),
                         "probability": merged["probability"].astype(float)})


def _rates(y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float) -> tuple[float, float]:
    pos, neg = y == 1, y == 0
    called = p >= threshold
    return float(w[pos & called].sum() / w[pos].sum()), float(w[neg & ~called].sum() / w[neg].sum())


def _scores(table: pd.DataFrame, threshold: float, n_resamples: int, seed: int) -> dict[str, Any]:
    """Point estimates and paired lesion-bootstrap CIs of the three rules on ``table``'s lesions."""
    from skinlesion.metrics.stats import bootstrap_indices
    from skinlesion.serving.combine import combine_probabilities

    codes, lesions = pd.factorize(table["lesion"], sort=True)
    n_les = len(lesions)
    y_img, p_img = table["label"].to_numpy(), table["probability"].to_numpy()
    grouped = table.assign(code=codes).groupby("code", sort=True)
    y_les = grouped["label"].first().to_numpy()
    p_les = grouped["probability"].agg(combine_probabilities).to_numpy()
    # Photos sorted by lesion, so lesion l's photos are order[start[l]:start[l] + count[l]].
    order = np.argsort(codes, kind="stable")
    count = np.bincount(codes, minlength=n_les)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    rng = np.random.default_rng(seed + 1)

    def single(draw_rng: np.random.Generator) -> np.ndarray:
        pick = order[start + (draw_rng.random(n_les) * count).astype(int)]
        return p_img[pick]

    ones_img, ones_les = np.ones(len(y_img)), np.ones(n_les)
    # One photo per lesion has no single point estimate: its expected AUC is estimated by the mean
    # over 200 draws (the bootstrap below redraws the photo in every resample).
    singles = [single(np.random.default_rng(seed + 2 + k)) for k in range(200)]
    point = {
        "per_image": (roc_auc_score(y_img, p_img), *_rates(y_img, p_img, ones_img, threshold)),
        "single_photo": tuple(np.mean([(roc_auc_score(y_les, s), *_rates(y_les, s, ones_les, threshold))
                                       for s in singles], axis=0)),
        "per_lesion": (roc_auc_score(y_les, p_les), *_rates(y_les, p_les, ones_les, threshold)),
    }
    boot = {r: np.empty((n_resamples, 3)) for r in RULES}
    idx = bootstrap_indices(y_les, n_resamples, seed, stratified=True)
    for r in range(n_resamples):
        w_les = np.bincount(idx[r], minlength=n_les).astype(float)
        w_img = w_les[codes]
        s = single(rng)
        boot["per_image"][r] = (roc_auc_score(y_img, p_img, sample_weight=w_img), *_rates(y_img, p_img, w_img, threshold))
        boot["single_photo"][r] = (roc_auc_score(y_les, s, sample_weight=w_les), *_rates(y_les, s, w_les, threshold))
        boot["per_lesion"][r] = (roc_auc_score(y_les, p_les, sample_weight=w_les), *_rates(y_les, p_les, w_les, threshold))

    def ci(values: np.ndarray) -> list[float]:
        return [float(v) for v in np.percentile(values, [2.5, 97.5])]

    out: dict[str, Any] = {
        "n_images": int(len(table)), "n_lesions": int(n_les), "n_malignant_lesions": int(y_les.sum()),
        "photos_per_lesion": {str(k): int(v) for k, v in zip(*np.unique(count, return_counts=True))},
    }
    for rule in RULES:
        out[rule] = {name: float(point[rule][i]) for i, name in enumerate(("roc_auc", "sensitivity", "specificity"))}
        out[rule].update({f"{name}_ci": ci(boot[rule][:, i]) for i, name in enumerate(("roc_auc", "sensitivity", "specificity"))})
    for base in ("per_image", "single_photo"):
        d = boot["per_lesion"][:, 0] - boot[base][:, 0]
        out[f"auc_per_lesion_minus_{base}"] = {"value": out["per_lesion"]["roc_auc"] - out[base]["roc_auc"],
                                               "ci": ci(d), "fraction_of_resamples_above_0": float(np.mean(d > 0))}
    return out


def lesion_group_benefit(predictions_csv: str | os.PathLike[str], *, held_out: str = "ham10000",
                         summary_json: str | os.PathLike[str] | None = None, n_resamples: int | None = None,
                         seed: int = 0) -> dict[str, Any]:
    """Per-image vs one-photo vs per-lesion AUC (and sensitivity/specificity at the frozen
    threshold) of a leave-one-source-out run's predictions on the ``held_out`` source's lesions.

    ``predictions_csv`` is a ``reports/generalisation/<recipe>/predictions.csv`` (columns source,
    path, probability, error, y_true, held_out); the threshold is the run's frozen one for that
    source, read from ``summary.json`` beside it (or ``summary_json``).
    """
    from skinlesion.data.sources import load_source
    from skinlesion.metrics.stats import N_BOOTSTRAP
    from skinlesion.serving.combine import RULE

    predictions_csv = Path(predictions_csv)
    if not predictions_csv.is_file():
        raise DataError(f"no predictions at {predictions_csv}; run `skinlesion generalise` for the recipe first")
    preds = pd.read_csv(predictions_csv, keep_default_na=False)
    need = {"path", "probability", "y_true", "held_out"}
    if need - set(preds.columns):
        raise DataError(f"{predictions_csv} lacks the column(s) {sorted(need - set(preds.columns))}")
    preds = preds[preds["held_out"] == held_out]
    if preds.empty:
        raise DataError(f"{predictions_csv} has no rows held out on {held_out!r}")
    summary_path = Path(summary_json) if summary_json else predictions_csv.parent / "summary.json"
    summary = read_json(summary_path, DataError)
    try:
        threshold = float(summary["held_out"][held_out]["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{summary_path} records no frozen threshold for {held_out!r}") from exc
    source = load_source(held_out)
    table = lesion_table(preds, source.records)
    n_resamples = N_BOOTSTRAP if n_resamples is None else int(n_resamples)
    multi = table[table.groupby("lesion")["lesion"].transform("size") >= 2]
    return {
        "source": held_out, "predictions": config.display_path(predictions_csv),
        "model": f"leave-one-source-out run of {summary.get('recipe', predictions_csv.parent.name)} "
                 f"trained without {held_out}",
        "rule": RULE, "threshold": threshold,
        "bootstrap": (f"{n_resamples} paired resamples of lesions (all photos of a lesion together), stratified by "
                      f"the lesion's label, seed {seed}; 95 % percentile intervals; a lesion drawn k times weighs k"),
        "all_lesions": _scores(table, threshold, n_resamples, seed),
        "lesions_with_several_photos": _scores(multi, threshold, n_resamples, seed),
        "command": "python tools/lesion_groups.py",
    }


def write_lesion_group_benefit(out: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
    """Run :func:`lesion_group_benefit` on the default recipe's LOSO predictions and write it
    (strict JSON; default ``reports/lesion_groups/<held_out>.json``)."""
    held_out = kwargs.get("held_out", "ham10000")
    predictions = kwargs.pop("predictions_csv", None) or (
        config.reports_dir() / "generalisation" / config.DEFAULT_MODEL / "predictions.csv")
    result = lesion_group_benefit(predictions, **kwargs)
    path = Path(out) if out else config.reports_dir() / "lesion_groups" / f"{held_out}.json"
    return write_json(path, result)

"""Evaluation of a bundle on the official test split, the de-duplicated test subset and
external folder-per-class sets, each reported separately."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.bundle.meta import BundleMeta
from skinlesion.data.datasets import DataError, scan_class_folders
from skinlesion.evaluation.common import set_file_stem
from skinlesion.io import write_json
from skinlesion.metrics.stats import N_BOOTSTRAP


@dataclass
class EvalSet:
    name: str
    root: Path
    paths: list[str]      # relative to root
    labels: np.ndarray


def evaluation_sets(
    bundle_meta: BundleMeta,
    bundle_path: Path,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    external: tuple[str, ...] = (),
    dedup_file: str | os.PathLike[str] | None = None,
    include_test: bool = True,
) -> list[EvalSet]:
    """The bundle's own test split (and its de-duplicated subset) plus any external folders."""
    from skinlesion.data.audit import load_dedup_test

    sets: list[EvalSet] = []
    if include_test and bundle_meta.training.sources and not bundle_meta.training.data_dir:
        sets += _multi_source_test_sets(bundle_path / (bundle_meta.training.splits_file or "splits.csv"), data_dir)
    elif include_test:
        training = bundle_meta.training
        if not (data_dir or training.data_dir) or not training.splits_file:
            raise DataError(f"{bundle_path} records no training data folder or splits file; "
                            "evaluate with --external DIR")
        root = Path(data_dir or str(training.data_dir))
        splits = pd.read_csv(bundle_path / training.splits_file)
        test = splits[splits["split"] == "test"]
        if test.empty:
            raise DataError(f"{bundle_path} has no test split; evaluate with --external DIR")
        if not (root / test["path"].iloc[0]).exists():
            raise DataError(f"test images of this bundle are not under {root}; pass --data-dir")
        sets.append(EvalSet("test", root, test["path"].tolist(), test["label"].to_numpy()))
        dedup = load_dedup_test(dedup_file)
        if dedup is not None:
            clean = test[test["path"].isin(set(dedup["path"]))]
            if len(clean):
                sets.append(EvalSet("test_dedup", root, clean["path"].tolist(), clean["label"].to_numpy()))
    for ext in external:
        from skinlesion.data.sources import READERS, load_source

        if ext in READERS and not Path(ext).exists():
            # A registered source (e.g. pad_ufes_20, the phone photos the gate should set aside): all its images.
            src = load_source(ext)
            sets.append(EvalSet(f"external:{ext}", src.root, src.records["path"].tolist(),
                                src.records["label"].to_numpy()))
            continue
        scan = scan_class_folders(ext, require_both=False)
        root = Path(ext)
        sets.append(EvalSet(f"external:{root.name}", root, [p.relative_to(root).as_posix() for p in scan.paths],
                            np.asarray(scan.labels)))
    names = [s.name for s in sets]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        # Reports, predictions_<set>.csv and metrics are keyed by the set's name: one would overwrite the other.
        raise DataError(f"two evaluation sets would both be called {clash[0]!r}: give the --external folders "
                        "different names (or the same one only once)")
    return sets


def _multi_source_test_sets(splits_file: Path, data_dir: str | os.PathLike[str] | None) -> list[EvalSet]:
    """Per source of a multi-source bundle: its test split de-duplicated against training
    (``test:<source>``) and, where duplicates were removed, the whole official split
    (``test_official:<source>``, comparable with numbers published for that set)."""
    from skinlesion.data.training_data import roots_for

    table = pd.read_csv(splits_file)
    roots = roots_for(table, data_dir)
    sets: list[EvalSet] = []
    for src in table["source"].unique():
        rows = table[table["source"] == src]
        test = rows[rows["split"] == "test"]
        official = rows[(rows["split"] == "test") | rows["reason"].astype(str).str.contains("was test", regex=False)]
        if test.empty:
            continue
        root = Path(roots[src])
        if not (root / test["path"].iloc[0]).exists():
            raise DataError(f"test images of source {src} are not under {root}; set its root (skinlesion data sources)")
        sets.append(EvalSet(f"test:{src}", root, test["path"].tolist(), test["label"].to_numpy()))
        if len(official) > len(test):
            sets.append(EvalSet(f"test_official:{src}", root, official["path"].tolist(), official["label"].to_numpy()))
    return sets


def predict_set(predictor, s: EvalSet, *, tta: bool | None = None, progress: bool = True) -> pd.DataFrame:
    """Per-image predictions for an evaluation set (unreadable images listed with an error)."""
    df = predictor.predict_batch([s.root / p for p in s.paths], tta=tta, progress=progress)
    df["path"] = s.paths
    df["y_true"] = s.labels
    return df


def score_predictions(df: pd.DataFrame, threshold: float, *, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Metrics at the frozen threshold and at 0.5 (the seed's convention), with bootstrap CIs;
    with an image-type gate, also how many images it set aside and the metrics without them."""
    ok = df[df["error"].fillna("") == ""]
    out: dict[str, Any] = {"n": int(len(ok)), "n_unreadable": int(len(df) - len(ok))}
    if len(ok) == 0:
        out["notes"] = ["no readable images"]
        return out
    out.update(_score(ok, threshold, n_resamples=n_resamples, seed=seed))
    if "image_type" in ok and (ok["image_type"].fillna("unknown") != "unknown").any():
        # The image-type gate: how many it set aside, and the metrics on the images it let through
        # (the headline metrics above stay on all readable images, so runs with and without a gate compare).
        types = ok["image_type"].fillna("unknown").astype(str)
        kept = types.isin(["dermoscopic", "unknown"])
        out["gate"] = {"n": int(len(ok)), "set_aside": int((~kept).sum()), "set_aside_rate": float((~kept).mean()),
                       "by_type": {str(k): int(v) for k, v in types.value_counts().items()}}
        if (~kept).any() and kept.any():
            out["dermoscopic_only"] = {"n": int(kept.sum()),
                                       **_score(ok[kept.to_numpy()], threshold, n_resamples=n_resamples, seed=seed)}
    return out


def _score(ok: pd.DataFrame, threshold: float, *, n_resamples: int, seed: int) -> dict[str, Any]:
    """Metrics of readable rows at the frozen threshold and at 0.5, calibration and notes."""
    from skinlesion.metrics import stats
    from skinlesion.metrics.classification import summarize

    y, p = ok["y_true"].to_numpy().astype(int), ok["probability"].to_numpy()
    out: dict[str, Any] = {}
    out["at_threshold"] = stats.summarize_with_ci(y, p, threshold=threshold, n_resamples=n_resamples, seed=seed)
    out["at_0.5"] = stats.summarize_with_ci(y, p, threshold=0.5, n_resamples=n_resamples, seed=seed)
    out["threshold"] = threshold
    from skinlesion.metrics.calibration import brier_score, expected_calibration_error

    out["ece"] = float(expected_calibration_error(y, p))
    out["brier"] = float(brier_score(y, p))
    notes = summarize(y, p, threshold=threshold).get("notes", [])
    if notes:
        out["notes"] = notes
    return out


def evaluate_bundle(
    bundle_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    external: tuple[str, ...] = (),
    tta: bool | None = None,
    n_resamples: int = N_BOOTSTRAP,
    include_test: bool = True,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Score a bundle on every evaluation set: (metrics per set, predictions per set)."""
    from skinlesion.serving.inference import Predictor

    predictor = Predictor.from_bundle(bundle_path)
    sets = evaluation_sets(predictor.meta, predictor.bundle.path, data_dir=data_dir, external=external,
                           include_test=include_test)
    if not sets:
        raise DataError("nothing to evaluate: no test split and no --external folder")
    results: dict[str, Any] = {
        "bundle": predictor.name, "backbone": predictor.meta.backbone,
        "synthetic": predictor.meta.synthetic, "tta": predictor.default_tta if tta is None else tta,
        "threshold": predictor.policy.threshold, "n_resamples": int(n_resamples), "sets": {},
    }
    preds: dict[str, pd.DataFrame] = {}
    for s in sets:
        df = predict_set(predictor, s, tta=tta, progress=progress)
        preds[s.name] = df
        results["sets"][s.name] = score_predictions(df, predictor.policy.threshold, n_resamples=n_resamples)
    return results, preds


def format_results(results: dict[str, Any]) -> str:
    """A compact text table of the headline metrics with 95 % CIs."""
    lines = []
    if results.get("synthetic"):
        lines.append("SYNTHETIC MODEL: these numbers are about generated images, not skin cancer.")
    keys = ["roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy", "f1"]
    for name, r in results["sets"].items():
        lines.append(f"{name}: n={r.get('n')}" + (f" ({r['n_unreadable']} unreadable)" if r.get("n_unreadable") else ""))
        for label, key in ((f"frozen threshold {results['threshold']:.3f}", "at_threshold"), ("threshold 0.5", "at_0.5")):
            if key not in r:
                continue
            cells = []
            for k in keys:
                v = r[key].get(k)
                if v is None:
                    continue
                if np.isnan(v["value"]):
                    cells.append(f"{k} n/a")
                else:
                    cells.append(f"{k} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]")
            lines.append(f"  {label}: " + "; ".join(cells))
        for note in r.get("notes", []):
            lines.append(f"  note: {note}")
        gate = r.get("gate")
        if gate and gate["set_aside"]:
            lines.append(f"  image-type gate set aside {gate['set_aside']} of {gate['n']} "
                         f"({100 * gate['set_aside_rate']:.1f} %: {gate['by_type']})")
            d = r.get("dermoscopic_only", {}).get("at_threshold", {})
            if d:
                lines.append(f"  dermoscopic only (n={r['dermoscopic_only']['n']}): " + "; ".join(
                    f"{k} {d[k]['value']:.3f} [{d[k]['low']:.3f}, {d[k]['high']:.3f}]" for k in keys
                    if k in d and not np.isnan(d[k]["value"])))
    return "\n".join(lines)


def save_results(results: dict[str, Any], preds: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write metrics.json and per-set predictions CSVs to ``reports/<run>/``.

    A ``predictions_*.csv`` of an earlier evaluation into the same folder whose set this one
    does not have is removed: left beside the new metrics.json it would read as part of it.
    """
    out = Path(out_dir) if out_dir else config.reports_dir() / results["bundle"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", results)
    written = set()
    for name, df in preds.items():
        path = out / f"predictions_{set_file_stem(name)}.csv"
        df.to_csv(path, index=False)
        written.add(path.name)
    for stale in out.glob("predictions_*.csv"):
        if stale.name not in written:
            stale.unlink()
    return out

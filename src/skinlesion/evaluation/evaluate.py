"""Evaluation of a bundle on the official test split, the de-duplicated test subset and
external folder-per-class sets, each reported separately.

The report folder (``reports/<run-id>/`` or ``--out``) is written as a whole: see
:func:`write_evaluation` and :func:`save_results`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.bundle.meta import BundleMeta
from skinlesion.data.datasets import DataError, scan_class_folders
from skinlesion.evaluation.common import set_file_stem
from skinlesion.io import atomic_write_text, check_replaceable, replacing_folder, write_json
from skinlesion.metrics.stats import N_BOOTSTRAP

# What an evaluation report folder holds: save_results' metrics.json and predictions, write_report's
# figures, report.md and ita.csv, write_model_card's MODEL_CARD.md. A folder with anything else is
# not replaced (io.check_replaceable): those files are someone else's.
REPORT_FILES = ("metrics.json", "predictions_*.csv", "figures", "report.md", "ita.csv", "MODEL_CARD.md")
# Carried into the new folder: the per-image ITA cache, keyed by file, size and mtime (valid across runs).
REPORT_KEEP = ("ita.csv",)
_WRITER = "`skinlesion evaluate`"


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
    """The bundle's own test split (and its de-duplicated subset) plus any external folders.

    Every test image of the bundle must be under its folder (``data_dir``, else the one it was
    trained on): with some missing, the metrics would be of another set than the test split, so
    it is refused (:class:`DataError` counting and naming them). Images that are there but cannot
    be read are scored as unreadable, as before. The de-duplicated subset comes from
    ``reports/audit`` (``dedup_file``) only when that audit was made from these test images
    (:func:`skinlesion.data.audit.dedup_subset`).
    """
    from skinlesion.data.audit import dedup_subset

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
        _check_complete(test["path"].tolist(), root, "this bundle", "pass --data-dir with the folder it was trained on")
        sets.append(EvalSet("test", root, test["path"].tolist(), test["label"].to_numpy()))
        clean = dedup_subset(test, root, dedup_file)
        if clean is not None:
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
        _check_complete(test["path"].tolist(), root, f"source {src}", "set its root (skinlesion data sources)")
        sets.append(EvalSet(f"test:{src}", root, test["path"].tolist(), test["label"].to_numpy()))
        if len(official) > len(test):
            sets.append(EvalSet(f"test_official:{src}", root, official["path"].tolist(), official["label"].to_numpy()))
    return sets


def _check_complete(paths: Sequence[str], root: Path, whose: str, fix: str) -> None:
    """Refuse a test split with files missing under ``root`` (DataError naming a few)."""
    missing = [p for p in paths if not (root / p).exists()]
    if not missing:
        return
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    if len(missing) == len(paths):
        raise DataError(f"test images of {whose} are not under {root} (none of its {len(paths)}, e.g. {shown}); {fix}")
    raise DataError(f"{len(missing)} of the {len(paths)} test images of {whose} are missing under {root} "
                    f"(e.g. {shown}); metrics on the rest would not be those of its test split. Restore them or "
                    f"{fix} (a set of your own: --external DIR)")


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


def report_dir_for(results: Mapping[str, Any], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """The report folder of an evaluation: ``out_dir``, else ``reports/<run-id>``."""
    return Path(out_dir) if out_dir else config.reports_dir() / str(results["bundle"])


def check_report_dir(out_dir: str | os.PathLike[str]) -> None:
    """Refuse (FileExistsError) a report folder that holds files an evaluation does not write,
    before any scoring: writing the report replaces the whole folder."""
    check_replaceable(out_dir, owns=REPORT_FILES, keep=REPORT_KEEP, what=_WRITER)


@contextlib.contextmanager
def report_folder(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`skinlesion.io.replacing_folder` for an evaluation report folder: yields an empty
    temporary folder (holding only the previous ``ita.csv``, a cache) that replaces ``out_dir``
    when the ``with`` body succeeds; on failure ``out_dir`` stays as it was."""
    with replacing_folder(out_dir, owns=REPORT_FILES, keep=REPORT_KEEP, what=_WRITER) as tmp:
        yield tmp


def write_results(results: Mapping[str, Any], preds: Mapping[str, pd.DataFrame], folder: str | os.PathLike[str]) -> None:
    """Write metrics.json and one ``predictions_<set>.csv`` per set into ``folder`` (in place:
    the folder :func:`report_folder` yields)."""
    folder = Path(folder)
    write_json(folder / "metrics.json", results)
    for name, df in preds.items():
        df.to_csv(folder / f"predictions_{set_file_stem(name)}.csv", index=False)


def save_results(results: dict[str, Any], preds: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write metrics.json and per-set predictions CSVs to ``reports/<run>/`` (or ``out_dir``).

    The folder is replaced as a whole (:func:`report_folder`): a failure part-way leaves the
    previous folder as it was. What the previous evaluation wrote does not survive beside the new
    metrics (it would read as part of them): its ``predictions_*.csv`` of other sets, and its
    report.md, MODEL_CARD.md and figures/, which :func:`skinlesion.evaluation.report.write_report`
    and ``write_model_card`` write anew; only ``ita.csv`` (a cache) is carried over. A folder with
    other files is refused (FileExistsError) and left alone. :func:`write_evaluation` writes
    results, report and card in one replacement.
    """
    out = report_dir_for(results, out_dir)
    with report_folder(out) as tmp:
        write_results(results, preds, tmp)
    return out


def write_evaluation(
    results: dict[str, Any],
    preds: dict[str, pd.DataFrame],
    bundle_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    skin_tone: bool = True,
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
    n_resamples: int = N_BOOTSTRAP,
) -> Path:
    """The whole report folder of an evaluation (what ``skinlesion evaluate`` writes), in one
    replacement: metrics.json, predictions, figures, report.md, ita.csv and MODEL_CARD.md are
    all written into a temporary sibling folder, which then replaces ``out_dir`` (default
    ``reports/<run-id>``). A failure anywhere (scoring a figure, the skin-tone table, the card)
    leaves the previous report, card and predictions exactly as they were, and no temporary
    folder behind. The rule for what survives is :func:`save_results`'. Returns the folder.
    """
    from skinlesion.evaluation.model_card import model_card
    from skinlesion.evaluation.report import write_report

    out = report_dir_for(results, out_dir)
    final = check_replaceable(out, owns=REPORT_FILES, keep=REPORT_KEEP, what=_WRITER)
    with report_folder(out) as tmp:
        write_results(results, preds, tmp)
        write_report(results, preds, bundle_path, tmp, skin_tone=skin_tone, roots=roots, n_resamples=n_resamples)
        # The card names the report folder it read: the final one, not the temporary folder.
        card = model_card(bundle_path, tmp).replace(f"`{config.display_path(tmp)}`", f"`{config.display_path(final)}`")
        atomic_write_text(tmp / "MODEL_CARD.md", card)
    return out

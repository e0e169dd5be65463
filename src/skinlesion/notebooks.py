"""What the research notebooks share, and the runner behind ``make notebooks`` (``tools/notebooks.py``).

Notebooks read their parameters from ``SKINLESION_NB_*`` environment variables (papermill can
still inject values after the ``parameters`` cell), so the same notebook runs on the full data
(``make notebooks``) and on a small sample under nbval in CI (``SKINLESION_NB_SAMPLE``).
Everything here is computation; figures come from :mod:`skinlesion.evaluation.plots`.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import CLASS_NAMES, config
from skinlesion.data.datasets import DataError, scan_class_folders
from skinlesion.seeds import DEFAULT_SEED

NOTEBOOKS: tuple[str, ...] = (
    "01_data_exploration.ipynb",
    "02_transfer_learning.ipynb",
    "03_evaluation.ipynb",
    "04_gradcam_explanations.ipynb",
)
ENV_PREFIX = "SKINLESION_NB_"
MAX_NOTEBOOK_BYTES = 3 * 1024 * 1024
# TensorFlow's C++ start-up lines (written before absl logging is initialised, so
# TF_CPP_MIN_LOG_LEVEL cannot silence them) are noise in committed outputs.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\])")
# A tiny synthetic stand-in when no real data is found (CI always has the real data).
SYNTHETIC_PER_CLASS = {"train": 60, "test": 20}


# ---------------------------------------------------------------------------- parameters


def env_param(name: str, default: Any) -> Any:
    """``SKINLESION_NB_<NAME>`` cast to the type of ``default`` (lists: comma-separated)."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, (list, tuple)):
        return [s.strip() for s in raw.split(",") if s.strip()]
    return raw


def sample_or_none(n: int) -> int | None:
    """The notebooks' SAMPLE parameter: 0 means the full data."""
    return int(n) if n and int(n) > 0 else None


def show_path(path: str | os.PathLike[str]) -> str:
    """A path as a reader should see it: relative to the project root (see ``config.display_path``)."""
    return config.display_path(path)


def dataset_root(data_dir: str | None = None) -> tuple[Path, bool]:
    """(dataset root, synthetic?): the real data if found, else a small synthetic stand-in."""
    from skinlesion.data.synth import generate_dataset, is_synthetic

    root = config.resolve_data_dir(data_dir or None)
    if (root / "train").is_dir():
        return root, is_synthetic(root)
    shared = config.shared_dataset()
    if (shared / "train").is_dir():
        return shared, False
    synth = config.data_dir() / "synthetic-notebooks"
    if not is_synthetic(synth):
        generate_dataset(synth, n_train_per_class=SYNTHETIC_PER_CLASS["train"],
                         n_test_per_class=SYNTHETIC_PER_CLASS["test"], size=300, seed=0, overwrite=True)
    return synth, True


# ---------------------------------------------------------------------------- 01 exploration


def overview(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Image counts per split and class of a ``{train,test}/{benign,malignant}`` dataset."""
    root = Path(root)
    rows = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder; expected {{train,test}}/{{benign,malignant}}/")
        counts = scan_class_folders(root / split).class_counts
        rows.append({"split": split, **{c: int(counts.get(c, 0)) for c in CLASS_NAMES}})
    df = pd.DataFrame(rows).set_index("split")
    df["total"] = df.sum(axis=1)
    df["malignant %"] = (100 * df["malignant"] / df["total"]).round(1)
    return df


def file_table(root: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per image: path (relative to root), split, label name and label index."""
    root = Path(root)
    rows = []
    for split in ("train", "test"):
        scan = scan_class_folders(root / split)
        for p, y in zip(scan.paths, scan.labels):
            rows.append({"path": Path(p).relative_to(root).as_posix(), "split": split,
                         "label": int(y), "class": CLASS_NAMES[int(y)]})
    return pd.DataFrame(rows)


def stratified_sample(df: pd.DataFrame, n_per_class: int | None, seed: int = 42,
                      by: Sequence[str] = ("split", "label")) -> pd.DataFrame:
    """Up to ``n_per_class`` rows per group (all rows when None), reproducibly."""
    if n_per_class is None:
        return df.reset_index(drop=True)
    parts = [g.sample(n=min(len(g), n_per_class), random_state=seed) for _, g in df.groupby(list(by))]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def _image_stats(path: Path) -> dict[str, Any]:
    from PIL import Image

    with Image.open(path) as im:
        fmt, mode, (w, h) = im.format, im.mode, im.size
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    mean, std = rgb.reshape(-1, 3).mean(0), rgb.reshape(-1, 3).std(0)
    return {"width": w, "height": h, "format": fmt, "mode": mode,
            "mean_r": mean[0], "mean_g": mean[1], "mean_b": mean[2],
            "std_r": std[0], "std_g": std[1], "std_b": std[2], "bytes": path.stat().st_size}


def image_statistics(root: str | os.PathLike[str], files: pd.DataFrame, workers: int = 4) -> pd.DataFrame:
    """Size, format and per-channel colour statistics of each image in ``files`` (threaded decode)."""
    root = Path(root)
    with ThreadPoolExecutor(workers) as pool:
        stats = list(pool.map(_image_stats, [root / p for p in files["path"]]))
    return pd.concat([files.reset_index(drop=True), pd.DataFrame(stats)], axis=1)


def split_summary(splits: pd.DataFrame) -> pd.DataFrame:
    """Counts per split and class of a splits table (columns split, label)."""
    t = pd.crosstab(splits["split"], splits["label"].map(dict(enumerate(CLASS_NAMES))))
    t = t.reindex(["train", "val", "test"]).fillna(0).astype(int)
    t["total"] = t.sum(axis=1)
    return t


def load_or_run_audit(root: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(duplicate pairs, de-duplicated test ids, where they came from).

    Reuses ``reports/audit`` when it covers this dataset's test images (the audit hashes every
    image, a minute or two); otherwise runs it without writing anything.
    """
    from skinlesion.data.audit import audit

    folder = config.reports_dir() / "audit"
    pairs_f, dedup_f = folder / "duplicates.csv", folder / "dedup_test.csv"
    root = Path(root)
    if pairs_f.is_file() and dedup_f.is_file():
        pairs, dedup = pd.read_csv(pairs_f), pd.read_csv(dedup_f)
        if len(dedup) and all((root / p).exists() for p in dedup["path"].head(20)):
            return pairs, dedup, f"{show_path(folder)} (from `skinlesion data audit`)"
    pairs, test = audit(root, file_table(root), progress=False)
    return pairs, test[~test["leaked"]].reset_index(drop=True), "computed now"


def shared_sources() -> tuple[dict[str, Any], dict[str, str]]:
    """The dermoscopic sources found (Kaggle, HAM10000, ISIC 2017) and why any are missing."""
    from skinlesion.data.sources import DERMOSCOPIC_SOURCES, find_sources

    return find_sources(DERMOSCOPIC_SOURCES)


def sources_table(found: dict[str, Any]) -> pd.DataFrame:
    """One row per source: images per label and official split, lesion groups, licence."""
    rows = []
    for name, src in found.items():
        d = src.summary()
        rows.append({"source": name, "images": d["images"], "benign": d["benign"], "malignant": d["malignant"],
                     "lesion groups": d["groups"],
                     "official splits": ", ".join(f"{k} {sum(v.values())}" for k, v in d["splits"].items()),
                     "diagnoses": ", ".join(f"{k} {v}" for k, v in list(d["diagnoses"].items())[:7]),
                     "licence": d["licence"]})
    return pd.DataFrame(rows).set_index("source")


def load_or_run_source_audit(found: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(pairs, overlap table, origin) of the cross-source duplicate audit.

    Reuses ``reports/audit/sources`` (written by ``skinlesion data audit --sources ...``) when it
    covers these sources; otherwise hashes every image now (about a minute), writing nothing.
    """
    from skinlesion.data.audit import audit_records, overlap_table
    from skinlesion.data.sources import combined_records

    records = combined_records(list(found.values()))
    folder = config.reports_dir() / "audit" / "sources"
    if (folder / "pairs.csv").is_file():
        pairs = pd.read_csv(folder / "pairs.csv")
        known = set(zip(records["source"], records["image_id"]))
        sides = set(zip(pairs["source_a"], pairs["image_a"])) | set(zip(pairs["source_b"], pairs["image_b"]))
        if sides <= known and set(pairs["source_a"]) | set(pairs["source_b"]) <= set(found):
            return pairs, overlap_table(pairs, records), f"{show_path(folder)} (from `skinlesion data audit --sources`)"
    pairs = audit_records(records, {n: s.root for n, s in found.items()}, progress=False)
    return pairs, overlap_table(pairs, records), "computed now"


def duplicate_summary(pairs: pd.DataFrame, n_test: int, n_dedup: int) -> pd.DataFrame:
    """How many test images have an exact or near duplicate in train/val, and label conflicts."""
    per_kind = pairs.drop_duplicates("test_path").groupby("kind").size() if len(pairs) else pd.Series(dtype=int)
    conflicts = int((pairs["test_label"] != pairs["train_label"]).sum()) if len(pairs) else 0
    return pd.DataFrame({"value": {
        "test images": n_test,
        "with an exact duplicate in train": int(per_kind.get("exact", 0)),
        "with a near duplicate in train": int(per_kind.get("near", 0)),
        "pairs whose labels disagree": conflicts,
        "de-duplicated test images": n_dedup,
    }})


def copies_by_diagnosis(pairs: pd.DataFrame, records: pd.DataFrame, source: str = "kaggle") -> pd.DataFrame:
    """Images of every other source with a copy (``exact`` or ``near``) in ``source``, per diagnosis.

    Columns: ``in source`` (images of that diagnosis), ``with a copy`` (how many have a copy in
    ``source``) and ``copies labelled malignant there`` (of those, how many have only malignant
    copies in ``source``): the facts behind "the Kaggle malignant class is other collections' melanomas".
    """
    copies = pairs[pairs["kind"].isin(["exact", "near"])]
    sides = []
    for mine, other in (("a", "b"), ("b", "a")):
        sel = copies[(copies[f"source_{mine}"] == source) & (copies[f"source_{other}"] != source)]
        sides.append(pd.DataFrame({"source": sel[f"source_{other}"].to_numpy(), "image_id": sel[f"image_{other}"].to_numpy(),
                                   "malignant there": sel[f"label_{mine}"].to_numpy().astype(int)}))
    found = pd.concat(sides, ignore_index=True).groupby(["source", "image_id"])["malignant there"].min().reset_index()
    diagnosis = records.set_index(["source", "image_id"])["diagnosis"]
    found["diagnosis"] = [diagnosis.loc[(s, i)] for s, i in zip(found["source"], found["image_id"])]
    per = found.groupby(["source", "diagnosis"]).agg(**{"with a copy": ("image_id", "size"),
                                                        "copies labelled malignant there": ("malignant there", "sum")})
    totals = records[records["source"] != source].groupby(["source", "diagnosis"]).size().rename("in source")
    out = pd.concat([totals, per], axis=1).fillna(0).astype(int)
    return out[out["with a copy"] > 0].sort_values("with a copy", ascending=False)


def ita_for_files(root: str | os.PathLike[str], files: pd.DataFrame) -> pd.DataFrame:
    """ITA skin-tone estimate and category per image (see :mod:`skinlesion.evaluation.skintone`)."""
    from skinlesion.evaluation.skintone import image_ita

    ita = image_ita([Path(root) / p for p in files["path"]])
    return pd.concat([files.reset_index(drop=True), ita[["ita", "category", "skin_fraction", "note"]]], axis=1)


# ---------------------------------------------------------------------------- 02 training


def train_backbones(backbones: Sequence[str], out_dir: str | os.PathLike[str], **config_kw: Any
                    ) -> tuple[dict[str, Path], dict[str, str]]:
    """Train one stage-1 (optionally fine-tuned) bundle per backbone into ``out_dir``.

    Returns ({backbone: bundle}, {backbone: why it was skipped}). A backbone whose ImageNet
    weights cannot be obtained is skipped with the reason — never trained from random weights.
    Each bundle is named ``nb-<backbone>`` and replaced on a rerun.
    """
    from skinlesion.models.backbones import BackboneError
    from skinlesion.training.train import TrainConfig, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundles: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in backbones:
        run_id = f"nb-{name}"
        if (out_dir / run_id).exists():
            shutil.rmtree(out_dir / run_id)
        try:
            bundles[name] = train(TrainConfig(backbone=name, out_dir=str(out_dir), run_id=run_id, **config_kw))
        except BackboneError as exc:
            skipped[name] = str(exc)
    return bundles, skipped


RECORDED_VALIDATION = "kaggle-only/validation.csv"  # under reports/: see recorded_validation


def _input_sizes(meta: Any, path: Path) -> str:
    """The input side of a bundle; an ensemble's members' sides, e.g. "224/260"."""
    from skinlesion.bundle.format import BundleError, load_meta

    if meta.kind != "ensemble":
        return str(meta.input_size)
    sizes = []
    for rel in meta.all_members:
        member = Path(rel) if Path(rel).is_absolute() else (path / rel).resolve()
        try:
            sizes.append(str(load_meta(member).input_size))
        except BundleError:  # a missing member still leaves the table readable
            sizes.append("?")
    return "/".join(dict.fromkeys(sizes)) or str(meta.input_size)


def recorded_validation(names: Sequence[str]) -> pd.DataFrame:
    """Validation rows of reference bundles that are not on this machine, as recorded in
    ``reports/kaggle-only/validation.csv`` (with a ``recorded_from`` column saying where from)."""
    path = config.reports_dir() / RECORDED_VALIDATION
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path, dtype={"input": str})
    return table[table["model"].isin(list(names))].set_index("model")


def validation_table(bundles: dict[str, Path], skipped: dict[str, str] | None = None,
                     recorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model: backbone, stage, input size, validation AUC and operating point.

    ``bundles`` are read from their bundle.json; ``skipped`` ({backbone: why}) become rows that
    say so (no numbers); ``recorded`` rows (:func:`recorded_validation`) stand in for bundles that
    are not here and are marked in the ``from`` column.
    """
    from skinlesion.bundle.format import load_meta

    rows = []
    for label, path in bundles.items():
        meta = load_meta(path)
        val = meta.val_metrics
        rows.append({
            "model": label, "backbone": meta.backbone or "ensemble", "stage": meta.stage or meta.kind,
            "input": _input_sizes(meta, Path(path)), "train images": meta.training.n_train,
            "views": ",".join(meta.training.views) or None,
            "val AUC": val.get("roc_auc"), "val sensitivity": val.get("sensitivity"),
            "val specificity": val.get("specificity"),
            "threshold": meta.decision.threshold if meta.decision else None, "from": "bundle.json",
        })
    for name, row in (recorded if recorded is not None else pd.DataFrame()).iterrows():
        if name not in bundles:
            rows.append({"model": name, **{k: row[k] for k in ("backbone", "stage", "input", "train images", "views",
                                                               "val AUC", "val sensitivity", "val specificity",
                                                               "threshold")},
                         "from": f"recorded ({show_path(config.reports_dir() / RECORDED_VALIDATION)})"})
    from skinlesion.models.registry import get_spec

    for name, why in (skipped or {}).items():
        offline = "could not be downloaded" in why or "offline" in why.lower()
        rows.append({"model": f"nb-{name}", "backbone": name,
                     "stage": "skipped: ImageNet weights unavailable offline" if offline else f"skipped: {why[:80]}",
                     "input": str(get_spec(name).input_size), "from": "not trained"})
    return pd.DataFrame(rows).set_index("model").sort_values("val AUC", ascending=False, na_position="last")


def reference_bundles(names: Sequence[str]) -> dict[str, Path]:
    """The bundles under ``models/`` with these names that exist (others are left out)."""
    return {n: config.models_dir() / n for n in names if (config.models_dir() / n / "bundle.json").is_file()}


# ---------------------------------------------------------------------------- 03 evaluation


def available_reports(names: Sequence[str]) -> dict[str, Path]:
    """Report folders (``reports/<name>/metrics.json``, written by ``skinlesion evaluate``)."""
    out = {}
    for n in names:
        folder = config.reports_dir() / n
        if (folder / "metrics.json").is_file():
            out[n] = folder
    return out


def metrics_table(results: dict[str, dict[str, Any]], set_name: str = "test",
                  at: str = "at_threshold",
                  keys: Sequence[str] = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")
                  ) -> pd.DataFrame:
    """Models x metrics as "0.951 [0.93, 0.97]" strings, from ``metrics.json`` contents."""
    rows = {}
    for name, res in results.items():
        s = (res.get("sets") or {}).get(set_name)
        if not s:
            continue
        row: dict[str, Any] = {"n": s.get("n")}
        for k in keys:
            v = (s.get(at) or {}).get(k)
            if isinstance(v, dict) and v.get("value") is not None:
                lo, hi = v.get("low"), v.get("high")
                row[k] = f"{v['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v['value']:.3f}"
            elif isinstance(v, (int, float)):
                row[k] = f"{v:.3f}"
        if at == "at_threshold":
            row["threshold"] = f"{s.get('threshold', float('nan')):.3f}"
        rows[name] = row
    return pd.DataFrame(rows).T


def most_confident_mistakes(preds: pd.DataFrame, threshold: float, k: int = 8) -> pd.DataFrame:
    """The wrong calls the model was most sure of: up to ``k`` missed malignant lesions, then up to
    ``k`` false alarms, each ranked by the probability it gave the wrong class.

    ``wrong_class_probability`` is 1 - P(malignant) for a missed malignant lesion and P(malignant)
    for a false alarm. (Ranking by distance from the threshold instead would hide the worst misses:
    with a low threshold a melanoma at P = 0.01 is only 0.2 from it, a benign lesion at 0.99 is 0.8.)
    """
    ok = preds[preds["error"].fillna("") == ""].copy()
    ok["predicted"] = (ok["probability"] >= threshold).astype(int)
    wrong = ok[ok["predicted"] != ok["y_true"]].copy()
    missed = wrong["y_true"] == 1
    wrong["mistake"] = np.where(missed, "missed malignant", "false alarm")
    wrong["wrong_class_probability"] = np.where(missed, 1.0 - wrong["probability"], wrong["probability"])
    parts = [wrong[wrong["mistake"] == kind].sort_values("wrong_class_probability", ascending=False).head(k)
             for kind in ("missed malignant", "false alarm")]
    return pd.concat(parts)


def sensitivity_against_target(results: dict[str, dict[str, Any]], set_name: str = "test",
                               target: float | None = None) -> pd.DataFrame:
    """Per model: sensitivity at the frozen threshold with its 95 % CI, against the validation
    target (default ``DEFAULT_TARGET_SENSITIVITY``, what the thresholds were fitted for)."""
    from skinlesion.metrics.classification import DEFAULT_TARGET_SENSITIVITY

    target = DEFAULT_TARGET_SENSITIVITY if target is None else float(target)
    rows = {}
    for name, res in results.items():
        s = ((res.get("sets") or {}).get(set_name) or {}).get("at_threshold", {}).get("sensitivity")
        if not s or s.get("value") is None:
            continue
        low, high = s.get("low"), s.get("high")
        verdict = ("no CI" if low is None or high is None else "CI below the target" if high < target
                   else "CI above the target" if low > target else "CI includes the target")
        rows[name] = {"sensitivity": s["value"], "low": low, "high": high, "target": target, "verdict": verdict}
    return pd.DataFrame(rows).T


def calibration_effect(evaluations: dict[str, tuple[dict[str, Any], dict[str, pd.DataFrame]]],
                       set_name: str = "test") -> pd.DataFrame:
    """Per model: ECE and Brier score of the raw and of the temperature-scaled probabilities on
    one set (same ECE binning as the reports), and whether scaling lowered the ECE."""
    from skinlesion.metrics.calibration import brier_score, expected_calibration_error

    rows = {}
    for name, (_, preds) in evaluations.items():
        df = preds.get(set_name)
        if df is None or "raw_probability" not in df.columns:
            continue
        ok = df[(df["error"].fillna("") == "") & df["raw_probability"].notna()]
        y = ok["y_true"].to_numpy().astype(int)
        raw, cal = ok["raw_probability"].to_numpy(float), ok["probability"].to_numpy(float)
        rows[name] = {"ECE raw": expected_calibration_error(y, raw), "ECE scaled": expected_calibration_error(y, cal),
                      "Brier raw": brier_score(y, raw), "Brier scaled": brier_score(y, cal)}
    table = pd.DataFrame(rows).T
    if not table.empty:
        table["scaling lowered ECE"] = table["ECE scaled"] < table["ECE raw"]
    return table


# ---------------------------------------------------------------------------- 04 explanations


def ensure_bundle(name: str, *, sample_per_class: int | None, data_dir: str | os.PathLike[str],
                  seed: int = 42) -> tuple[Path, str]:
    """(bundle, note): ``models/<name>`` if it exists, else a quick stage-1 EfficientNet-Lite0
    trained now on ``sample_per_class`` images per class (what CI does; it says so)."""
    path = config.models_dir() / name
    if (path / "bundle.json").is_file():
        return path, f"using the trained bundle {show_path(path)}"
    bundles, skipped = train_backbones(
        ["efficientnet_lite0"], config.models_dir() / "notebooks", data_dir=str(data_dir), seed=seed,
        max_train_per_class=sample_per_class or 200, max_eval_per_class=sample_per_class or 200,
        views=("id", "fh"), progress=False)
    if not bundles:
        raise DataError(f"no bundle {name!r} and a quick one could not be trained: {skipped}")
    path = bundles["efficientnet_lite0"]
    return path, (f"models/{name} not found (run the commands in 02 or `make run`); trained a quick "
                  f"stage-1 EfficientNet-Lite0 on a sample instead: {show_path(path)}")


def pick_examples(preds: pd.DataFrame, threshold: float, per_group: int = 1) -> pd.DataFrame:
    """The most confident correct and wrong predictions for each true class.

    Columns of ``preds``: path, y_true, probability (error optional). Adds ``group`` such as
    "malignant, correct". A group with no member (e.g. no wrong benign call) is simply absent.
    """
    ok = preds[preds.get("error", pd.Series("", index=preds.index)).fillna("") == ""].copy()
    ok["predicted"] = (ok["probability"] >= threshold).astype(int)
    ok["correct"] = ok["predicted"] == ok["y_true"]
    ok["margin"] = (ok["probability"] - threshold).abs()
    parts = []
    for y in (1, 0):
        for correct in (True, False):
            g = ok[(ok["y_true"] == y) & (ok["correct"] == correct)].sort_values("margin", ascending=False)
            g = g.head(per_group).assign(group=f"{CLASS_NAMES[y]}, {'correct' if correct else 'wrong'}")
            parts.append(g)
    return pd.concat(parts).reset_index(drop=True)


def sanity_table(result: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """:func:`skinlesion.explain.sanity.sanity_check` output as a table (one row per randomisation)."""
    rows = {k: {"randomised layers": len(v.get("layers", [])), "spearman": v["spearman"], "ssim": v["ssim"]}
            for k, v in result.items() if k != "original"}
    return pd.DataFrame(rows).T.astype({"randomised layers": int})


# ---------------------------------------------------------------------------- runner


def notebooks_dir() -> Path:
    return config.project_root() / "notebooks"


def clean_notebook(path: str | os.PathLike[str]) -> int:
    """Strip run-specific metadata (papermill timings, widget state, TensorFlow start-up noise)
    and number the cells 1..N, in place; return the file size in bytes."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    li = nb.metadata.get("language_info")
    if li:
        nb.metadata["language_info"] = {k: li[k] for k in ("name", "file_extension", "mimetype") if k in li}
    count = 0
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            # Sequential counts, as from one clean top-to-bottom run (nbval rejects a cell that
            # has outputs but no count).
            count += 1
            cell.execution_count = count
            outputs = []
            for out in cell.get("outputs", []):
                if "execution_count" in out:
                    out["execution_count"] = count
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    out["text"] = "".join(line for line in out["text"].splitlines(keepends=True)
                                          if not TF_NOISE.match(line))
                    if not out["text"].strip():
                        continue
                outputs.append(out)
            cell.outputs = outputs
    nbformat.write(nb, path)
    return path.stat().st_size


def run_notebook(path: Path, *, sample: int | None = None, timeout: int = 7200) -> float:
    """Execute one notebook in place (cwd = its folder), clean it, return seconds taken."""
    import papermill

    env_backup = os.environ.get(ENV_PREFIX + "SAMPLE")
    os.environ[ENV_PREFIX + "SAMPLE"] = str(sample or 0)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(path), str(path), cwd=str(path.parent), kernel_name="python3",
                                   progress_bar=False, log_output=False, execution_timeout=timeout)
    finally:
        if env_backup is None:
            os.environ.pop(ENV_PREFIX + "SAMPLE", None)
        else:
            os.environ[ENV_PREFIX + "SAMPLE"] = env_backup
    size = clean_notebook(path)
    if size > MAX_NOTEBOOK_BYTES:
        raise RuntimeError(f"{path.name} is {size / 2**20:.1f} MiB after execution (limit 3 MiB): "
                           "lower the figure size or dpi")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- 03 generalisation


def generalisation_tables(folder: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(held-out table, in-source reference table, experiments.md text) of the published LOSO run.

    Reads ``reports/generalisation/summary.json`` (the headline recipe) and that recipe's
    ``details.json``; empty tables when ``skinlesion generalise --publish`` has not been run.
    """
    import json

    root = Path(folder) if folder else config.reports_dir() / "generalisation"
    if not (root / "summary.json").is_file():
        return pd.DataFrame(), pd.DataFrame(), ""
    recipe = published_recipe(root)
    details = json.loads((root / recipe / "details.json").read_text())

    def table(block: dict[str, Any]) -> pd.DataFrame:
        rows = [{"source": k, "n": v["n"], "malignant": v["n_malignant"], "ROC AUC": v["roc_auc"],
                 "AUC 95% CI": f"[{v['roc_auc_ci'][0]:.3f}, {v['roc_auc_ci'][1]:.3f}]",
                 "sensitivity": v["sensitivity"], "specificity": v["specificity"], "threshold": v["threshold"],
                 **({"trained on": ", ".join(v["trained_on"])} if "trained_on" in v else {})}
                for k, v in block.items()]
        return pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()

    exp = root / "experiments.md"
    return table(details["held_out"]), table(details.get("reference", {})), exp.read_text() if exp.is_file() else ""


def loso_recipes(folder: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Every recipe under ``reports/generalisation/<recipe>/summary.json``: held-out ROC AUC and
    95 % CI per source, their mean, the worst source and (from ``details.json``) the in-source
    Kaggle test AUC of the model trained on every source and the recipe in words (empty before
    any LOSO run)."""
    import json

    root = Path(folder) if folder else config.reports_dir() / "generalisation"
    rows = {}
    for path in sorted(root.glob("*/summary.json")):
        held = json.loads(path.read_text()).get("held_out") or {}
        if not held:
            continue
        details_file = path.with_name("details.json")
        details = json.loads(details_file.read_text()) if details_file.is_file() else {}
        reference, cfg = details.get("reference") or {}, details.get("config") or {}
        aucs = {s: float(v["roc_auc"]) for s, v in held.items()}
        worst = min(aucs, key=aucs.__getitem__)
        row: dict[str, Any] = {"mean": float(np.mean(list(aucs.values()))), "worst": aucs[worst], "worst source": worst}
        for s, v in held.items():
            row[s] = aucs[s]
            row[f"{s} CI"] = tuple(float(x) for x in v["roc_auc_ci"])
        if "kaggle" in reference:  # the model trained on every source, on the Kaggle test split
            row["kaggle in-source"] = float(reference["kaggle"]["roc_auc"])
        if cfg.get("ensemble_of"):
            row["recipe"] = "the ensemble of " + " and ".join(f"`{m}`" for m in cfg["ensemble_of"])
        elif cfg:
            head = "a linear head" if not cfg.get("head_units") else f"a {cfg['head_units']}-unit head"
            stage = f"top {cfg['fine_tune']} layers fine-tuned" if cfg.get("fine_tune") else "stage 1"
            row["recipe"] = (f"{cfg.get('backbone')} {stage} on views "
                             f"{'+'.join(cfg.get('views') or [])}, {head}"
                             + (", dihedral TTA (threshold fitted on it)" if cfg.get("tta") else "")
                             + (f", {cfg['balance']}-balanced" if cfg.get("balance", "class") != "class" else "")
                             + (f", seed {cfg['seed']}" if cfg.get("seed", DEFAULT_SEED) != DEFAULT_SEED else ""))
        rows[path.parent.name] = row
    return pd.DataFrame(rows).T.sort_values("mean", ascending=False) if rows else pd.DataFrame()


def robustness_table(run_id: str, folder: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """``reports/robustness/<run_id>/robustness.json`` as a table (empty when not measured)."""
    import json

    path = Path(folder) if folder else config.reports_dir() / "robustness" / run_id / "robustness.json"
    if not path.is_file():
        return pd.DataFrame()
    data = json.loads(path.read_text())
    rows = {name: {"decision flips": v["decision_flip_rate"], "mean |Δp|": v["mean_abs_dp"],
                   "95th pct |Δp|": v["p95_abs_dp"], "n": v["n"]}
            for name, v in data["transforms"].items()}
    return pd.DataFrame(rows).T


def site_curves(recipe: str) -> pd.DataFrame:
    """Every ``reports/site/loso-<recipe>-*/curve.json``: held-out-site sensitivity/specificity per N."""
    import json

    rows = []
    for path in sorted((config.reports_dir() / "site").glob(f"loso-{recipe}-*/curve.json")):
        data = json.loads(path.read_text())
        frozen = data["frozen"]
        rows.append({"site": data["site"]["name"], "N": 0, "sensitivity": frozen["sensitivity"],
                     "specificity": frozen["specificity"], "note": "frozen threshold (no site data)"})
        for p in data["curve"]:
            rows.append({"site": data["site"]["name"], "N": p["n"], "sensitivity": p["sensitivity_mean"],
                         "specificity": p["specificity_mean"],
                         "note": f"mean of {p['repeats']} draws; spec 10-90 %: {p['specificity_p10']:.2f}-{p['specificity_p90']:.2f}"})
    return pd.DataFrame(rows)


def published_recipe(folder: str | os.PathLike[str] | None = None) -> str:
    """The recipe of ``reports/generalisation/summary.json`` (the default's), or "" before one is published."""
    import json

    path = Path(folder or config.reports_dir() / "generalisation") / "summary.json"
    return str(json.loads(path.read_text())["recipe"]) if path.is_file() else ""

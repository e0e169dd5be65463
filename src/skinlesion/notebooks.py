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
from skinlesion.io import read_json
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
    if isinstance(default, (int, float)):
        cast = int if isinstance(default, int) else float
        try:
            return cast(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not {'an integer' if cast is int else 'a number'} "
                             f"(the notebook parameter {name!r}, default {default!r})") from None
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


# ---------------------------------------------------------------------------- required inputs
# With these, a helper given a missing file or a malformed report or table fails with one exception
# (FileNotFoundError for a missing file, ValueError otherwise) that names what is missing, the file
# (relative to the project root) and what writes it (``made_by``, e.g. "`skinlesion ...` writes it").


def _names(items: Any) -> str:
    """``'a', 'b'``: names for a message."""
    return ", ".join(repr(str(i)) for i in items)


def _need(data: Any, keys: Sequence[str], where: str, made_by: str) -> dict[str, Any]:
    """``data`` itself, after checking that it is a JSON object holding ``keys`` (else ValueError)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object (got {type(data).__name__}); {made_by}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{where} lacks {_names(missing)}; {made_by}")
    return data


def _read_json(path: Path, made_by: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, holding ``keys``: FileNotFoundError when the file is missing,
    ValueError when it is not valid JSON, not an object or lacks a key."""
    where = show_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where} not found; {made_by}")
    try:
        data = read_json(path)  # the project's one JSON reader (UTF-8, errors name the file)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc.__cause__}); {made_by}") from exc
    return _need(data, keys, where, made_by)


def _need_columns(table: pd.DataFrame, columns: Sequence[str], what: str, made_by: str) -> None:
    """ValueError naming the ``columns`` that ``table`` lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {_names(missing)} (it has {_names(table.columns) or 'none'}); "
                         f"{made_by}")


def _read_csv(path: Path, columns: Sequence[str], made_by: str, **read_kw: Any) -> pd.DataFrame:
    """``pd.read_csv(path)`` with ``columns``: FileNotFoundError when missing, ValueError when empty or short of a column."""
    where = show_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where} not found; {made_by}")
    try:
        table = pd.read_csv(path, **read_kw)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{where} is empty; {made_by}") from exc
    _need_columns(table, columns, where, made_by)
    return table


def _pair(value: Any, where: str, made_by: str) -> tuple[float, float]:
    """A ``[low, high]`` interval as two floats (ValueError otherwise)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where} is not a [low, high] pair (got {value!r}); {made_by}")
    return float(value[0]), float(value[1])


PREDICTIONS_FROM = "`skinlesion evaluate models/<run>` writes such tables (reports/<run>/predictions_<set>.csv)"
DUPLICATE_COLUMNS = ("test_path", "test_label", "train_label", "kind")  # reports/audit/duplicates.csv
SOURCE_PAIR_COLUMNS = ("source_a", "image_a", "label_a", "source_b", "image_b", "label_b", "kind")


def _scored(preds: pd.DataFrame, columns: Sequence[str] = ("y_true", "probability")) -> pd.DataFrame:
    """The rows of a predictions table that were scored (``error`` empty; the column is optional)."""
    _need_columns(preds, columns, "the predictions table", PREDICTIONS_FROM)
    if "error" not in preds.columns:
        return preds.copy()
    return preds[preds["error"].fillna("") == ""].copy()


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
    """Up to ``n_per_class`` rows per group (all rows when None; none of an empty table), reproducibly."""
    if n_per_class is None:
        return df.reset_index(drop=True)
    _need_columns(df, by, "the table to sample", "file_table makes one")
    if df.empty:
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
    _need_columns(files, ("path",), "the files table", "file_table makes it")
    with ThreadPoolExecutor(workers) as pool:
        stats = list(pool.map(_image_stats, [root / p for p in files["path"]]))
    return pd.concat([files.reset_index(drop=True), pd.DataFrame(stats)], axis=1)


def split_summary(splits: pd.DataFrame) -> pd.DataFrame:
    """Counts per split and class of a splits table (columns split, label)."""
    _need_columns(splits, ("split", "label"), "the splits table",
                  "skinlesion.data.datasets.load_or_create_splits makes it")
    t = pd.crosstab(splits["split"], splits["label"].map(dict(enumerate(CLASS_NAMES))))
    t = t.reindex(["train", "val", "test"]).fillna(0).astype(int)
    t["total"] = t.sum(axis=1)
    return t


def load_or_run_audit(root: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(duplicate pairs, de-duplicated test ids, where they came from).

    Reuses ``reports/audit`` when its ``audit.json`` records this dataset's test images, as
    ``skinlesion evaluate`` does (an audit written before that record existed is reused when its
    first 20 listed files exist); otherwise runs the audit (a minute or two) without writing anything.
    """
    from skinlesion.data.audit import AUDIT_RECORD, audit, audit_record_problem

    folder = config.reports_dir() / "audit"
    pairs_f, dedup_f, record_f = folder / "duplicates.csv", folder / "dedup_test.csv", folder / AUDIT_RECORD
    root = Path(root)
    table = None  # the dataset's files, scanned once (after the audit's own files are read)
    if pairs_f.is_file() and dedup_f.is_file():
        made_by = "`skinlesion data audit` writes it"
        pairs = _read_csv(pairs_f, DUPLICATE_COLUMNS, made_by)
        dedup = _read_csv(dedup_f, ("path",), made_by)
        if record_f.is_file():
            table = file_table(root)
            covers = audit_record_problem(record_f, list(table.query("split == 'test'")["path"]), root) is None
        else:
            covers = all((root / p).exists() for p in dedup["path"].head(20))
        if len(dedup) and covers:
            return pairs, dedup, f"{show_path(folder)} (from `skinlesion data audit`)"
    pairs, test = audit(root, table if table is not None else file_table(root), progress=False)
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
        pairs = _read_csv(folder / "pairs.csv", SOURCE_PAIR_COLUMNS,
                          f"`skinlesion data audit --sources {','.join(found)}` writes it")
        known = set(zip(records["source"], records["image_id"]))
        sides = set(zip(pairs["source_a"], pairs["image_a"])) | set(zip(pairs["source_b"], pairs["image_b"]))
        if sides <= known and set(pairs["source_a"]) | set(pairs["source_b"]) <= set(found):
            return pairs, overlap_table(pairs, records), f"{show_path(folder)} (from `skinlesion data audit --sources`)"
    pairs = audit_records(records, {n: s.root for n, s in found.items()}, progress=False)
    return pairs, overlap_table(pairs, records), "computed now"


def duplicate_summary(pairs: pd.DataFrame, n_test: int, n_dedup: int) -> pd.DataFrame:
    """How many test images have an exact or near duplicate in train/val, and label conflicts."""
    if len(pairs):
        _need_columns(pairs, DUPLICATE_COLUMNS, "the duplicate pairs", "`skinlesion data audit` writes them "
                      "(reports/audit/duplicates.csv)")
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
    _need_columns(pairs, SOURCE_PAIR_COLUMNS, "the source pairs",
                  "`skinlesion data audit --sources` writes them (reports/audit/sources/pairs.csv)")
    _need_columns(records, ("source", "image_id", "diagnosis"), "the records",
                  "skinlesion.data.sources.combined_records makes them")
    copies = pairs[pairs["kind"].isin(["exact", "near"])]
    sides = []
    for mine, other in (("a", "b"), ("b", "a")):
        sel = copies[(copies[f"source_{mine}"] == source) & (copies[f"source_{other}"] != source)]
        sides.append(pd.DataFrame({"source": sel[f"source_{other}"].to_numpy(), "image_id": sel[f"image_{other}"].to_numpy(),
                                   "malignant there": sel[f"label_{mine}"].to_numpy().astype(int)}))
    found = pd.concat(sides, ignore_index=True).groupby(["source", "image_id"])["malignant there"].min().reset_index()
    diagnosis = records.set_index(["source", "image_id"])["diagnosis"]
    unknown = [key for key in zip(found["source"], found["image_id"]) if key not in diagnosis.index]
    if unknown:
        raise ValueError(f"{len(unknown)} image(s) of the source pairs are not in the records, e.g. {unknown[0]}: "
                         "pairs and records must come from the same sources")
    found["diagnosis"] = [diagnosis.loc[(s, i)] for s, i in zip(found["source"], found["image_id"])]
    per = found.groupby(["source", "diagnosis"]).agg(**{"with a copy": ("image_id", "size"),
                                                        "copies labelled malignant there": ("malignant there", "sum")})
    totals = records[records["source"] != source].groupby(["source", "diagnosis"]).size().rename("in source")
    out = pd.concat([totals, per], axis=1).fillna(0).astype(int)
    return out[out["with a copy"] > 0].sort_values("with a copy", ascending=False)


def ita_for_files(root: str | os.PathLike[str], files: pd.DataFrame) -> pd.DataFrame:
    """ITA skin-tone estimate and category per image (see :mod:`skinlesion.evaluation.skintone`)."""
    from skinlesion.evaluation.skintone import image_ita

    _need_columns(files, ("path",), "the files table", "file_table makes it")
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
RECORDED_COLUMNS = ("backbone", "stage", "input", "train images", "views", "val AUC", "val sensitivity",
                    "val specificity", "threshold")
# No command writes validation.csv: it was copied from notebook 02's table (its recorded_from column says which run).
RECORDED_FROM = ("no skinlesion command writes it: it records notebook 02's validation table of the reference "
                 "bundles (README, \"Notebooks\")")


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
    table = _read_csv(path, ("model", *RECORDED_COLUMNS), RECORDED_FROM, dtype={"input": str})
    return table[table["model"].isin(list(names))].set_index("model")


def validation_table(bundles: dict[str, Path], skipped: dict[str, str] | None = None,
                     recorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model: backbone, stage, input size, validation AUC and operating point.

    ``bundles`` are read from their bundle.json; ``skipped`` ({backbone: why}) become rows that
    say so (no numbers); ``recorded`` rows (:func:`recorded_validation`) stand in for bundles that
    are not here and are marked in the ``from`` column.
    """
    from skinlesion.bundle.format import load_meta

    recorded = recorded if recorded is not None else pd.DataFrame()
    if len(recorded):
        _need_columns(recorded, RECORDED_COLUMNS, "the recorded validation rows",
                      f"recorded_validation reads them from {show_path(config.reports_dir() / RECORDED_VALIDATION)}")
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
    for name, row in recorded.iterrows():
        if name not in bundles:
            rows.append({"model": name, **{k: row[k] for k in RECORDED_COLUMNS},
                         "from": f"recorded ({show_path(config.reports_dir() / RECORDED_VALIDATION)})"})
    from skinlesion.models.registry import get_spec

    for name, why in (skipped or {}).items():
        offline = "could not be downloaded" in why or "offline" in why.lower()
        rows.append({"model": f"nb-{name}", "backbone": name,
                     "stage": "skipped: ImageNet weights unavailable offline" if offline else f"skipped: {why[:80]}",
                     "input": str(get_spec(name).input_size), "from": "not trained"})
    if not rows:
        raise ValueError("validation_table got no bundle, no skipped backbone and no recorded row: nothing to tabulate; "
                         "bundles come from train_backbones or `skinlesion train`, recorded rows from "
                         f"recorded_validation ({show_path(config.reports_dir() / RECORDED_VALIDATION)})")
    # Explicit columns: a table of skipped backbones alone still has the numeric ones (empty).
    table = pd.DataFrame(rows, columns=["model", *RECORDED_COLUMNS, "from"]).set_index("model")
    return table.sort_values("val AUC", ascending=False, na_position="last")


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
    Columns of ``preds``: y_true, probability (error optional: rows with an error are left out).
    """
    ok = _scored(preds)
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
        ok = _scored(df)
        ok = ok[ok["raw_probability"].notna()]
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
    ok = _scored(preds)
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
    made_by = "skinlesion.explain.sanity.sanity_check makes it"
    steps = {k: _need(v, ("spearman", "ssim"), f"sanity-check step {k!r}", made_by)
             for k, v in result.items() if k != "original"}
    if not steps:
        raise ValueError(f"the sanity-check result has no randomisation step (it has {_names(result) or 'nothing'}); "
                         f"{made_by}, one entry per randomised scope")
    rows = {k: {"randomised layers": len(v.get("layers", [])), "spearman": v["spearman"], "ssim": v["ssim"]}
            for k, v in steps.items()}
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
    root = Path(folder) if folder else config.reports_dir() / "generalisation"
    if not (root / "summary.json").is_file():
        return pd.DataFrame(), pd.DataFrame(), ""
    recipe = published_recipe(root)
    details_file = root / recipe / "details.json"
    made_by = f"`skinlesion generalise --recipe {recipe}` writes it"
    details = _read_json(details_file, made_by, ("held_out",))
    keys = ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "threshold")

    def table(name: str) -> pd.DataFrame:
        where = f"{show_path(details_file)} {name}"
        block = _need(details.get(name, {}), (), where, made_by)
        rows = []
        for k, v in block.items():
            _need(v, keys, f"{where}[{k!r}]", made_by)
            low, high = _pair(v["roc_auc_ci"], f"{where}[{k!r}] roc_auc_ci", made_by)
            rows.append({"source": k, "n": v["n"], "malignant": v["n_malignant"], "ROC AUC": v["roc_auc"],
                         "AUC 95% CI": f"[{low:.3f}, {high:.3f}]",
                         "sensitivity": v["sensitivity"], "specificity": v["specificity"], "threshold": v["threshold"],
                         **({"trained on": ", ".join(v["trained_on"])} if "trained_on" in v else {})})
        return pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()

    exp = root / "experiments.md"
    return table("held_out"), table("reference"), exp.read_text() if exp.is_file() else ""


def loso_recipes(folder: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Every recipe under ``reports/generalisation/<recipe>/summary.json``: held-out ROC AUC and
    95 % CI per source, their mean, the worst source and (from ``details.json``) the in-source
    Kaggle test AUC of the model trained on every source and the recipe in words (empty before
    any LOSO run)."""
    root = Path(folder) if folder else config.reports_dir() / "generalisation"
    rows = {}
    for path in sorted(root.glob("*/summary.json")):
        made_by = f"`skinlesion generalise --recipe {path.parent.name}` writes it"
        held = _need(_read_json(path, made_by).get("held_out") or {}, (), f"{show_path(path)} held_out", made_by)
        if not held:
            continue
        for s, v in held.items():
            _need(v, ("roc_auc", "roc_auc_ci"), f"{show_path(path)} held_out[{s!r}]", made_by)
        details_file = path.with_name("details.json")
        details = _read_json(details_file, made_by) if details_file.is_file() else {}
        reference, cfg = details.get("reference") or {}, details.get("config") or {}
        aucs = {s: float(v["roc_auc"]) for s, v in held.items()}
        worst = min(aucs, key=aucs.__getitem__)
        row: dict[str, Any] = {"mean": float(np.mean(list(aucs.values()))), "worst": aucs[worst], "worst source": worst}
        for s, v in held.items():
            row[s] = aucs[s]
            row[f"{s} CI"] = _pair(v["roc_auc_ci"], f"{show_path(path)} held_out[{s!r}] roc_auc_ci", made_by)
        if "kaggle" in reference:  # the model trained on every source, on the Kaggle test split
            kaggle = _need(reference["kaggle"], ("roc_auc",), f"{show_path(details_file)} reference['kaggle']", made_by)
            row["kaggle in-source"] = float(kaggle["roc_auc"])
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


def robustness_table(run_id: str, path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """``reports/robustness/<run_id>/robustness.json`` (or the file ``path``) as a table; empty when not measured.

    Reports written before the signed shift was measured lack its columns (``mean Δp``, its CI and
    ``threshold crossed``); they are left out rather than shown empty.
    """
    path = Path(path) if path else config.reports_dir() / "robustness" / run_id / "robustness.json"
    if not path.is_file():
        return pd.DataFrame()
    made_by = f"`skinlesion robustness models/{run_id}` writes it"
    where = f"{show_path(path)} transforms"
    transforms = _need(_read_json(path, made_by, ("transforms",))["transforms"], (), where, made_by)
    keys = ("decision_flip_rate", "mean_abs_dp", "p95_abs_dp", "n")
    rows = {}
    for name, v in transforms.items():
        _need(v, keys, f"{where}[{name!r}]", made_by)
        row = {"decision flips": v["decision_flip_rate"], "mean |Δp|": v["mean_abs_dp"],
               "95th pct |Δp|": v["p95_abs_dp"]}
        if "mean_dp" in v:  # the direction of the change: a shift every image shares, or spread
            _need(v, ("mean_dp_ci", "threshold_cross_rate"), f"{where}[{name!r}]", made_by)
            low, high = _pair(v["mean_dp_ci"], f"{where}[{name!r}] mean_dp_ci", made_by)
            row.update({"mean Δp": v["mean_dp"], "mean Δp 95 % CI": f"[{low:+.3f}, {high:+.3f}]",
                        "threshold crossed": v["threshold_cross_rate"]})
        rows[name] = {**row, "n": v["n"]}
    return pd.DataFrame(rows).T


def site_curves(recipe: str) -> pd.DataFrame:
    """Every ``reports/site/loso-<recipe>-*/curve.json``: held-out-site sensitivity/specificity per N."""
    made_by = f"`skinlesion calibrate models/loso/loso-{recipe}-<source> --site <site> --curve` writes it"
    point_keys = ("n", "repeats", "sensitivity_mean", "specificity_mean", "specificity_p10", "specificity_p90")
    rows = []
    for path in sorted((config.reports_dir() / "site").glob(f"loso-{recipe}-*/curve.json")):
        where = show_path(path)
        data = _read_json(path, made_by, ("site", "frozen", "curve"))
        site = _need(data["site"], ("name",), f"{where} site", made_by)["name"]
        frozen = _need(data["frozen"], ("sensitivity", "specificity"), f"{where} frozen", made_by)
        rows.append({"site": site, "N": 0, "sensitivity": frozen["sensitivity"],
                     "specificity": frozen["specificity"], "note": "frozen threshold (no site data)"})
        for i, p in enumerate(data["curve"]):
            _need(p, point_keys, f"{where} curve[{i}]", made_by)
            rows.append({"site": site, "N": p["n"], "sensitivity": p["sensitivity_mean"],
                         "specificity": p["specificity_mean"],
                         "note": f"mean of {p['repeats']} draws; spec 10-90 %: {p['specificity_p10']:.2f}-{p['specificity_p90']:.2f}"})
    return pd.DataFrame(rows)


def published_recipe(folder: str | os.PathLike[str] | None = None) -> str:
    """The recipe of ``reports/generalisation/summary.json`` (the default's), or "" before one is published."""
    path = Path(folder or config.reports_dir() / "generalisation") / "summary.json"
    if not path.is_file():
        return ""
    made_by = "`skinlesion generalise --recipe NAME --publish` writes it"
    recipe = _read_json(path, made_by, ("recipe",))["recipe"]
    if not isinstance(recipe, str) or not recipe:
        raise ValueError(f"{show_path(path)} names no recipe (recipe = {recipe!r}); {made_by}")
    return recipe

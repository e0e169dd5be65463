"""Leave-one-source-out (LOSO) evaluation: how a training recipe holds up on a collection it never saw.

For each source S in turn, a model is trained with the recipe on every other source (their
training splits; threshold and temperature frozen on their validation splits) and scored on
S: its official test split where it has one (Kaggle, ISIC 2017), else all of it (HAM10000),
always after dropping every image whose group (same lesion or duplicate) reached training.
A model trained on all sources is scored on each source's own test split for reference.

``summary.json`` has exactly the shape the project's issue tracker asks for, plus a
``reference`` block and the recipe's configuration; ``report.md`` is the readable form;
``experiments.md`` gets one row per run (negative results stay).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion import config
from skinlesion.data.datasets import DataError
from skinlesion.data.splits import COPY_REASON
from skinlesion.io import atomic_write_text, write_json
from skinlesion.metrics.stats import N_BOOTSTRAP

log = logging.getLogger(__name__)

EXPERIMENT_COLUMNS = ("recipe", "LOSO AUC per held-out source", "mean", "worst",
                      "specificity at frozen threshold (sens)", "Kaggle test AUC", "wall time", "command")


def head_model(bundle: Any) -> Any:
    """The part of a loaded bundle's model after its pooled features: features -> P(malignant)."""
    import keras

    return keras.Model(bundle.model.get_layer(bundle.meta.feature_layer).output, bundle.model.output)


def stage1_view_outputs(
    bundle_path: Path, files: list[Path], views: Sequence[str], *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[int, str]] | None:
    """Raw (uncalibrated) outputs of a stage-1 bundle under each of ``views``, from cached backbone
    features: (outputs (n, len(views)), NaN where unreadable; ok mask; errors), or None.

    A stage-1 model is the frozen ImageNet backbone followed by the trained head, so its output
    equals the head applied to the cached features of the same decoded image (the same intake
    function feeds both; a test checks the equality against the Predictor). Recipe searches
    score tens of thousands of held-out images per run; this makes that seconds instead of
    minutes on a CPU. Anything else (fine-tuned, ensembles, random weights) returns None. A bundle
    that crops each image to its lesion sees every view behind its crop (``id`` is read as ``lc2_id``).
    """
    from skinlesion.bundle.format import load
    from skinlesion.models import backbones
    from skinlesion.models.features import extract_features
    from skinlesion.models.lesion import crop_views
    from skinlesion.serving.inference import check_crop_rule

    b = load(bundle_path)
    check_crop_rule(b)  # an older rule's bundle would be scored on this rule's crops
    views = crop_views(views, b.meta.lesion_crop)
    meta = b.meta
    cfg = meta.training.config
    if b.kind != "single" or meta.stage != "head" or not meta.weights or meta.weights == "random":
        return None
    backbone, size = str(meta.backbone), int(meta.input_size or 0)
    weights = cfg.get("weights") or "imagenet"
    if backbones.weights_tag(backbone, weights) != meta.weights:
        return None
    fe = backbones.front_end(cfg)
    extractor = backbones.build_feature_extractor(backbone, weights, size, **fe)
    feats, ok, errors = extract_features(extractor, files, backbone=backbones.feature_key(backbone, **fe),
                                         weights_tag=meta.weights, views=views, progress=progress)
    head = head_model(b)
    raw = np.full((len(files), len(views)), np.nan, dtype=np.float32)  # the head's own dtype
    if ok.any():
        raw[ok] = np.stack([np.asarray(head.predict(feats[ok, v], verbose=0, batch_size=1024)).ravel()
                            for v in range(len(views))], axis=1)
    return raw, ok, errors


def stage1_probabilities(bundle_path: Path, files: list[Path], *, progress: bool = False) -> pd.DataFrame | None:
    """Calibrated probabilities of a stage-1 bundle as served, from cached backbone features
    (:func:`stage1_view_outputs` over the bundle's served views), or None."""
    from skinlesion.bundle.format import load_meta

    meta = load_meta(bundle_path)
    if meta.decision is None:
        return None
    out = stage1_view_outputs(bundle_path, files, meta.served_views, progress=progress)
    if out is None:
        return None
    views_raw, ok, errors = out
    raw = np.full(len(files), np.nan)
    # Mean of the raw outputs over the views, then calibration: the Predictor's TTA rule.
    raw[ok] = np.mean([views_raw[ok, v] for v in range(views_raw.shape[1])], axis=0)
    prob = np.full(len(files), np.nan)
    prob[ok] = meta.decision.calibrate(raw[ok])
    return pd.DataFrame({"path": [str(f) for f in files], "probability": prob, "raw_probability": raw,
                         "error": [errors.get(i, "") for i in range(len(files))]})


def cached_probabilities(bundle_path: Path, files: list[Path], *, progress: bool = False) -> pd.DataFrame | None:
    """:func:`stage1_probabilities` of a bundle, or of an ensemble with at least one stage-1 member.

    An ensemble is served as the temperature-scaled mean of its members' calibrated probabilities
    (:func:`~skinlesion.serving.inference.ensemble_output`, as the Predictor serves it); its stage-1 members are scored here from cached features, the
    others by their own Predictor (the same TTA, which ``make_ensemble`` makes the members share).
    None when nothing can be taken from the cache.
    """
    from skinlesion.bundle.format import load
    from skinlesion.serving.inference import Predictor, ensemble_output

    b = load(bundle_path)
    if b.kind != "ensemble":
        return stage1_probabilities(bundle_path, files, progress=progress)
    members = [m.path for m in Predictor.member_bundles(b)]
    fast = [stage1_probabilities(m, files, progress=progress) for m in members]
    if all(f is None for f in fast):
        return None
    frames = [f if f is not None else Predictor.from_bundle(m).predict_batch(files, progress=progress)
              for f, m in zip(fast, members)]
    errors = ["; ".join(dict.fromkeys(e for e in row if e)) for row in zip(*(f["error"].fillna("") for f in frames))]
    ok = np.array([not e for e in errors], dtype=bool)
    prob, raw = np.full(len(files), np.nan), np.full(len(files), np.nan)
    if ok.any():
        prob[ok], raw[ok] = ensemble_output([f["probability"].to_numpy(float)[ok] for f in frames], b.meta.temperature)
    return pd.DataFrame({"path": [str(f) for f in files], "probability": prob, "raw_probability": raw, "error": errors})


def score_held_out(bundle_path: Path, frame: pd.DataFrame, roots: dict[str, Path], *,
                   n_resamples: int = N_BOOTSTRAP, seed: int = 0, progress: bool = False,
                   fast: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score a bundle on rows of a split table: the summary entry and per-image predictions.

    Stage-1 bundles are scored from cached features (``fast``, identical numbers); others by the
    one :class:`~skinlesion.serving.inference.Predictor`, exactly as a user of the bundle would.
    """
    from skinlesion.bundle.format import load
    from skinlesion.metrics import stats
    from skinlesion.serving.inference import Predictor

    if frame.empty:
        raise DataError("nothing to score: the held-out set is empty after de-duplication")
    files = [roots[s] / p for s, p in zip(frame["source"], frame["path"])]
    preds = cached_probabilities(bundle_path, files, progress=progress) if fast else None
    if preds is None:
        preds = Predictor.from_bundle(bundle_path).predict_batch(files, progress=progress)
    decision = load(bundle_path).meta.decision
    if decision is None:
        raise DataError(f"{bundle_path} has no frozen decision threshold")
    preds.insert(0, "source", frame["source"].to_numpy())
    preds["path"] = frame["path"].to_numpy()
    preds["y_true"] = frame["label"].to_numpy().astype(int)
    ok = preds[preds["error"].fillna("") == ""]
    y, p = ok["y_true"].to_numpy(), ok["probability"].to_numpy()
    threshold = float(decision.threshold)
    if len(np.unique(y)) < 2:
        raise DataError(f"the held-out set has one class only ({len(y)} images); AUC is undefined")
    ci = stats.bootstrap_ci(y, p, ["roc_auc", "sensitivity", "specificity"], n_resamples=n_resamples,
                            seed=seed, threshold=threshold)
    entry = {
        "n": int(len(ok)), "n_malignant": int(y.sum()), "n_unreadable": int(len(preds) - len(ok)),
        "roc_auc": ci["roc_auc"][0], "roc_auc_ci": [ci["roc_auc"][1], ci["roc_auc"][2]],
        "sensitivity": ci["sensitivity"][0], "sensitivity_ci": [ci["sensitivity"][1], ci["sensitivity"][2]],
        "specificity": ci["specificity"][0], "specificity_ci": [ci["specificity"][1], ci["specificity"][2]],
        "threshold": threshold,
    }
    return entry, preds


def held_out_frame(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """The held-out source's scored rows (its official test split where it has one, else all of it)."""
    return table[(table["source"] == source) & (table["split"] == "test")]


def leave_one_source_out(
    cfg: Any,
    sources: list[str],
    *,
    recipe: str,
    out_dir: Path | None = None,
    models_dir: Path | None = None,
    n_resamples: int = N_BOOTSTRAP,
    reference: bool = True,
    command: str = "",
    ensemble_of: tuple[str, ...] = (),
    retrain: bool = False,
) -> dict[str, Any]:
    """Train and score the recipe ``cfg`` (a TrainConfig) once per held-out source; write the reports.

    A fold bundle already trained with the same configuration is reused (a re-run after a crash)
    unless ``retrain``: then each is trained again and replaces the old one once it is written (for
    a code change that alters training, which the configuration does not show).

    With ``ensemble_of`` (recipe names), nothing is trained: each fold's model is the
    ``skinlesion ensemble`` of those recipes' bundles for the same fold (``models/loso/
    loso-<member>-<fold>``, from their own ``generalise`` runs), scored as it is served.
    """
    from skinlesion.training.train import train

    if len(sources) < 2:
        raise DataError("leave-one-source-out needs at least two sources")
    t0 = time.perf_counter()
    reused: list[bool] = []
    out_dir = out_dir or config.reports_dir() / "generalisation"
    models_dir = models_dir or config.models_dir() / "loso"
    summary: dict[str, Any] = {"recipe": recipe, "held_out": {}, "reference": {}}

    def fold_bundle(fold: str, train_on: list[str], holdout: tuple[str, ...]) -> Path:
        run_id = f"loso-{recipe}-{fold}"
        if ensemble_of:
            return _ensemble_or_reuse(ensemble_of, fold, models_dir, run_id, reused)
        return _train_or_reuse(train, dataclasses.replace(cfg, sources=tuple(train_on), holdout=holdout,
                                                          out_dir=str(models_dir), run_id=run_id),
                               models_dir / run_id, reused, retrain=retrain)

    all_preds: list[pd.DataFrame] = []
    for held in sources:
        train_on = [s for s in sources if s != held]
        bundle = fold_bundle(held, train_on, (held,))
        table = pd.read_csv(bundle / "splits.csv")
        frame = held_out_frame(table, held)
        roots = {s: config.source_root(s) for s in sources}
        entry, preds = score_held_out(bundle, frame, roots, n_resamples=n_resamples)
        entry["trained_on"] = train_on
        # Training-side images dropped because they share a lesion or a duplicate with a scored image.
        copies = table["reason"].astype(str).str.startswith(COPY_REASON)
        entry["excluded_as_duplicates"] = int(((table["split"] == "excluded") & ~copies).sum())
        # Training-side copies of a lesion another training source holds (--drop-copies-from).
        entry["excluded_as_copies"] = int(copies.sum())
        summary["held_out"][held] = entry
        all_preds.append(preds.assign(held_out=held))
        log.info("held out %s: AUC %.3f [%.3f, %.3f], sens %.3f, spec %.3f (n=%d)", held, entry["roc_auc"],
                 *entry["roc_auc_ci"], entry["sensitivity"], entry["specificity"], entry["n"])
    if reference:
        bundle = fold_bundle("all", sources, ())
        table = pd.read_csv(bundle / "splits.csv")
        roots = {s: config.source_root(s) for s in sources}
        for src in sources:
            frame = held_out_frame(table, src)
            if frame.empty or frame["label"].nunique() < 2:
                continue
            entry, preds = score_held_out(bundle, frame, roots, n_resamples=n_resamples)
            summary["reference"][src] = {**entry, "note": "in-source test split (de-duplicated), model trained on all sources"}
            all_preds.append(preds.assign(held_out=f"reference:{src}"))
    aucs = [v["roc_auc"] for v in summary["held_out"].values()]
    summary["mean_roc_auc"] = float(np.mean(aucs))
    summary["worst_roc_auc"] = float(np.min(aucs))
    summary["config"] = ({"ensemble_of": list(ensemble_of), "sources": list(sources)} if ensemble_of
                         else cfg.to_dict() if hasattr(cfg, "to_dict") else {})
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    previous = (out_dir / recipe / "details.json")
    if all(reused) and previous.is_file():
        # Every model was reused (a re-run to re-score or publish): keep the training run's wall time.
        import json

        summary["wall_seconds"] = json.loads(previous.read_text()).get("wall_seconds", summary["wall_seconds"])
    summary["command"] = command
    folder = out_dir / recipe
    write_json(folder / "details.json", summary)
    write_json(folder / "summary.json", strict_summary(summary))
    pd.concat(all_preds, ignore_index=True).to_csv(folder / "predictions.csv", index=False)
    atomic_write_text(folder / "report.md", report_markdown(summary))
    append_experiment(out_dir / "experiments.md", summary)
    return summary


SUMMARY_KEYS = ("n", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "threshold")


def strict_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary in exactly the published shape (``details.json`` keeps everything else)."""
    return {"recipe": summary["recipe"],
            "held_out": {s: {k: v[k] for k in SUMMARY_KEYS} for s, v in summary["held_out"].items()}}


def publish(recipe_dir: Path, out_dir: Path) -> None:
    """Make a recipe's LOSO results the project's headline ``summary.json`` / ``report.md``."""
    for name in ("summary.json", "report.md"):
        atomic_write_text(out_dir / name, (recipe_dir / name).read_text())


def _train_or_reuse(train_fn: Any, cfg: Any, path: Path, reused: list[bool], *, retrain: bool = False) -> Path:
    """Reuse a finished bundle of the same run id and configuration (a re-run after a crash); with
    ``retrain``, train it again and replace the old one once the new one is written."""
    import json

    from skinlesion.bundle.format import replacing

    meta = path / "bundle.json"
    if retrain:
        reused.append(False)
        return replacing(path, lambda: Path(train_fn(cfg)), announce=log.info)
    if meta.is_file():
        saved = json.loads(meta.read_text()).get("training", {}).get("config", {})
        # Options added after the bundle was trained count as their defaults.
        defaults = json.loads(json.dumps(type(cfg)().to_dict()))
        if {**defaults, **saved} == json.loads(json.dumps(cfg.to_dict())):
            log.info("reusing %s", config.display_path(path))
            reused.append(True)
            return path
        raise DataError(f"{path} exists with another configuration; remove it or choose another recipe name")
    reused.append(False)
    return Path(train_fn(cfg))


def _ensemble_or_reuse(members: tuple[str, ...], fold: str, models_dir: Path, run_id: str, reused: list[bool]) -> Path:
    """The ensemble of the member recipes' bundles for ``fold``: one made from the same member files is
    reused, one made from the same member folders whose bundles were since trained again (``--retrain``
    of a member recipe) is built again and replaces it; one of other members is refused."""
    import json

    from skinlesion.bundle.format import member_refs, replacing
    from skinlesion.io import sha256_file
    from skinlesion.training.ensemble import make_ensemble

    paths = [models_dir / f"loso-{m}-{fold}" for m in members]
    missing = [config.display_path(p) for p in paths if not (p / "bundle.json").is_file()]
    if missing:
        raise DataError(f"--ensemble-of needs each member recipe's LOSO bundles; missing {', '.join(missing)}: run "
                        "`skinlesion generalise --recipe <member> ...` with the member's options first (its command "
                        "is in reports/generalisation/<member>/report.md)")
    path = models_dir / run_id
    if (path / "bundle.json").is_file():
        saved = json.loads((path / "bundle.json").read_text())
        if saved.get("member_bundle_sha256") == [sha256_file(p / "bundle.json") for p in paths]:
            log.info("reusing %s", config.display_path(path))
            reused.append(True)
            return path
        if saved.get("members") != member_refs(paths, path):
            raise DataError(f"{path} exists with other members; remove it or choose another recipe name")
        log.info("members of %s were trained again: building it again", config.display_path(path))
    reused.append(False)
    # replacing() builds it directly when there is none yet, and puts an old one back if building fails.
    return replacing(path, lambda: make_ensemble(paths, out_dir=models_dir, run_id=run_id), announce=log.info)


def _fmt_entry(v: dict[str, Any]) -> str:
    return f"{v['roc_auc']:.3f} [{v['roc_auc_ci'][0]:.3f}, {v['roc_auc_ci'][1]:.3f}]"


def _copies(entry: dict[str, Any]) -> str:
    """", and N copies of other sources' lesions" where ``--drop-copies-from`` left training images out."""
    n = entry.get("excluded_as_copies", 0)
    return f", and {n} copies of other training sources' lesions (--drop-copies-from)" if n else ""


def report_markdown(summary: dict[str, Any]) -> str:
    """The LOSO summary as a Markdown report."""
    lines = [f"# Leave-one-source-out: recipe `{summary['recipe']}`", "",
             "Each row: a model trained on the other sources, scored on the held-out one (its official test split "
             "where it has one, else all of it). Training images that share a lesion or a duplicate with any scored "
             "image were removed from training first, so the scored sets stay the official sets. Sensitivity and specificity are at the threshold frozen on the training "
             "sources' validation data. 95 % stratified bootstrap CIs.", "",
             "| held-out source | trained on | n (malignant) | training images removed as duplicates | ROC AUC [95 % CI] | "
             "sensitivity | specificity | threshold |", "|---|---|---|---|---|---|---|---|"]
    for src, v in summary["held_out"].items():
        lines.append(f"| {src} | {', '.join(v['trained_on'])} | {v['n']} ({v['n_malignant']}) | "
                     f"{v['excluded_as_duplicates']}{_copies(v)} | {_fmt_entry(v)} | {v['sensitivity']:.3f} | "
                     f"{v['specificity']:.3f} | {v['threshold']:.3f} |")
    lines += ["", f"Mean LOSO AUC {summary['mean_roc_auc']:.3f}; worst {summary['worst_roc_auc']:.3f}.", ""]
    if summary.get("reference"):
        lines += ["## Reference: in-source test splits (model trained on all sources)", "",
                  "| source | n (malignant) | ROC AUC [95 % CI] | sensitivity | specificity |", "|---|---|---|---|---|"]
        for src, v in summary["reference"].items():
            lines.append(f"| {src} | {v['n']} ({v['n_malignant']}) | {_fmt_entry(v)} | {v['sensitivity']:.3f} | "
                         f"{v['specificity']:.3f} |")
        lines.append("")
    if summary.get("command"):
        lines += ["Command:", "", "```bash", summary["command"], "```", ""]
    lines.append(f"Wall time {summary['wall_seconds'] / 60:.1f} min on this machine.")
    return "\n".join(lines) + "\n"


def append_experiment(path: Path, summary: dict[str, Any]) -> None:
    """Add (or replace) the recipe's row in ``experiments.md``."""
    ho = summary["held_out"]
    kaggle = summary.get("reference", {}).get("kaggle")
    row = [
        f"`{summary['recipe']}`",
        "; ".join(f"{s} {v['roc_auc']:.3f}" for s, v in ho.items()),
        f"{summary['mean_roc_auc']:.3f}", f"{summary['worst_roc_auc']:.3f}",
        "; ".join(f"{s} {v['specificity']:.2f} ({v['sensitivity']:.2f})" for s, v in ho.items()),
        f"{kaggle['roc_auc']:.3f}" if kaggle else "—",
        f"{summary['wall_seconds'] / 60:.0f} min",
        f"`{summary.get('command', '')}`",
    ]
    header = ["# Recipe experiments (leave-one-source-out)", "",
              "One row per recipe run with `skinlesion generalise`; rows are never deleted (negative results stay). "
              "Recipes are compared on the LOSO columns only; the Kaggle column is its in-source test split "
              "(de-duplicated), scored by the model trained on all sources, for reference.", "",
              "| " + " | ".join(EXPERIMENT_COLUMNS) + " |", "|" + "---|" * len(EXPERIMENT_COLUMNS)]
    lines = path.read_text().splitlines() if path.exists() else header
    new = "| " + " | ".join(row) + " |"
    mine = [i for i, ln in enumerate(lines) if ln.startswith(f"| `{summary['recipe']}` |")]
    if mine:  # a re-run replaces its row in place, so the table keeps the order recipes were tried
        lines[mine[0]] = new
        lines = [ln for i, ln in enumerate(lines) if i not in mine[1:]]
    else:
        lines.append(new)
    atomic_write_text(path, "\n".join(lines) + "\n")

"""How often the image-type gate sets an image aside, measured both ways, with its settings
chosen by nested leave-one-source-out.

* Dermoscopic collections it never saw: for each shared dermoscopic source in turn, a gate is
  fitted without it (its images and their duplicates elsewhere removed from training, exactly
  as in leave-one-source-out) and scored on that source's held-out rows. This is the false
  alarm rate a new dermatoscope would meet. The settings of that gate (``GATE_CANDIDATES``) are
  chosen without the left-out source: each remaining source is left out in turn from a gate
  fitted on the other, and the candidate with the lowest balanced error (dermoscopic images of
  the inner left-out source flagged, validation phone photos and non-skin pictures kept) wins.
* Phone photos of lesions from patients it never saw (PAD-UFES-20 test patients) and non-skin
  pictures it never saw (held-out photographs and draws): the bundle's own gate.

The settings a bundle's gate should use are chosen the same way over all sources ("selection",
"final"). The existing distance check (Mahalanobis in feature space) is scored alone and OR-ed
with the gate, so the report shows whether it still adds something. Writes
``reports/gate/<run>/gate.json``: ``{"flagged_rate": {"<set>": {"n", "rate", "ci"}}}`` and more.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.bundle.format import Bundle, BundleError, load
from skinlesion.metrics.rates import rate_with_ci
from skinlesion.metrics.stats import N_BOOTSTRAP
from skinlesion.models.gate import DERMOSCOPIC, ImageTypeGate
from skinlesion.training.gate import (
    GATE_CANDIDATES,
    GATE_FILE,
    fit_on_frame,
    gate_inputs,
    gate_training_frame,
    settings_of,
)

log = logging.getLogger(__name__)

DERMOSCOPIC_SOURCES = ("kaggle", "ham10000", "isic2017")


def flags(gate: ImageTypeGate, feats: np.ndarray) -> np.ndarray:
    """True where the gate sets the image aside (not dermoscopic)."""
    types, _, _ = gate.classify(feats)
    return np.array([t != DERMOSCOPIC for t in types])


def _mask(frame: pd.DataFrame, ok: np.ndarray, **equal: str) -> np.ndarray:
    m = ok.copy()
    for column, value in equal.items():
        m &= (frame[column] == value).to_numpy()
    return m


def _methods(gate: ImageTypeGate, frame: pd.DataFrame, plain: np.ndarray, read: np.ndarray,
             ok: np.ndarray) -> dict[str, np.ndarray]:
    """Flags of every row by the gate (on the features it reads), the distance check fitted on
    the same dermoscopic training rows (plain view, as the Predictor computes it), and either."""
    from skinlesion.models.ood import fit_ood

    tr, va = (_mask(frame, ok, kind=DERMOSCOPIC, split=s) for s in ("train", "val"))
    f_gate = flags(gate, read)
    f_dist = fit_ood(plain[tr], plain[va]).is_ood(plain)
    return {"gate": f_gate, "distance": f_dist, "gate_or_distance": f_gate | f_dist}


def _rates(frame: pd.DataFrame, flagged: dict[str, np.ndarray], mask: np.ndarray, *, resamples: int,
           seed: int) -> dict[str, dict[str, Any]]:
    """One rate per method over ``mask`` rows, resampling the rows' groups."""
    groups = frame.loc[mask, "group"].to_numpy()
    return {m: rate_with_ci(f[mask], groups, n_resamples=resamples, seed=seed) for m, f in flagged.items()}


def balanced_error(flagged: np.ndarray, frame: pd.DataFrame, ok: np.ndarray, left_out: str) -> dict[str, float]:
    """What selection looks at: dermoscopic images of the left-out source set aside, and
    validation phone photos / non-skin pictures let through; ``error`` is their mean."""
    parts = {
        "dermoscopic_flagged": float(flagged[_mask(frame, ok, kind=DERMOSCOPIC, source=left_out, split="test")].mean()),
        "clinical_missed": float(1 - flagged[_mask(frame, ok, kind="clinical", split="val")].mean()),
        "other_missed": float(1 - flagged[_mask(frame, ok, kind="other", split="val")].mean()),
    }
    return {**parts, "error": float(np.mean(list(parts.values())))}


class _Features:
    """Features of every image any fold needs, computed (or read from the cache) once: the plain
    view of every image, and the mean over the gate's views of every image some fold reads
    (validation and scored rows)."""

    def __init__(self, bundle: Bundle, frames: list[pd.DataFrame], views: tuple[str, ...], progress: bool) -> None:
        paths = [p for f in frames for p in f["path"]]
        self.index = {p: i for i, p in enumerate(dict.fromkeys(paths))}
        read = {p for f in frames for p in f.loc[f["split"] != "train", "path"]}
        need = np.array([p in read for p in self.index])
        self.plain, self.read, self.ok = gate_inputs(bundle, list(self.index), need, views, progress=progress)

    def of(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = frame["path"].map(self.index).to_numpy()
        return self.plain[rows], self.read[rows], self.ok[rows]

    def ok_of(self, frame: pd.DataFrame) -> np.ndarray:
        return self.of(frame)[2]


def evaluate_gate(bundle_path: str | Path, *, sources: tuple[str, ...] = DERMOSCOPIC_SOURCES,
                  candidates: tuple[str, ...] = tuple(GATE_CANDIDATES), resamples: int = N_BOOTSTRAP,
                  seed: int = 42, progress: bool = False) -> dict[str, Any]:
    """Score the bundle's gate (and nested leave-one-source-out gates) on every held-out set."""
    from skinlesion.data.image_types import dermoscopic_frame
    from skinlesion.data.training_data import multi_source_data, roots_for

    b = load(bundle_path)
    entry = b.meta.raw.get("gate")
    if not entry:
        raise BundleError(f"{b.path} has no image-type gate; fit one with `skinlesion gate fit {b.path}`")
    gate = ImageTypeGate.load(b.file(entry.get("file", GATE_FILE)))
    views = b.meta.served_views
    if gate.views != views:
        raise BundleError(f"the gate of {b.path} reads view(s) {', '.join(gate.views)} but the bundle is served "
                          f"with {', '.join(views)}; refit it with `skinlesion gate fit {b.path}`")

    frames: dict[tuple[tuple[str, ...], tuple[str, ...]], pd.DataFrame] = {}

    def frame_for(train: tuple[str, ...], held: tuple[str, ...]) -> pd.DataFrame:
        if (train, held) not in frames:
            td = multi_source_data(list(train), holdout=list(held), progress=progress)
            frames[(train, held)] = gate_training_frame(dermoscopic_frame(td.table, td.roots), seed=seed)
        return frames[(train, held)]

    # Every fold's table first, so that all features come from one pass.
    folds = {held: tuple(s for s in sources if s != held) for held in sources}
    for held, rest in folds.items():
        frame_for(rest, (held,))
        for inner in rest:
            frame_for(tuple(s for s in rest if s != inner), tuple(sorted((inner, held))))
    table = pd.read_csv(b.path / "splits.csv")
    own = gate_training_frame(dermoscopic_frame(table, roots_for(table, b.meta.training.data_dir)), seed=seed)
    store = _Features(b, [*frames.values(), own], views, progress)

    fitted: dict[tuple[tuple[str, ...], str], dict[str, np.ndarray]] = {}

    def fold_flags(train: tuple[str, ...], held: tuple[str, ...], name: str) -> dict[str, np.ndarray]:
        key = (train, name)   # the same training sources give the same gate, whatever is scored
        if key not in fitted:
            f = frame_for(train, held)
            plain, read, ok = store.of(f)
            log.info("gate: %s on %s", name, ", ".join(train))
            fitted[key] = _methods(fit_on_frame(f, plain, read, ok, settings=name, views=views, seed=seed), f,
                                   plain, read, ok)
        return fitted[key]

    sets: dict[str, dict[str, dict[str, Any]]] = {}
    outer: dict[str, dict[str, dict[str, float]]] = {name: {} for name in candidates}
    chosen: dict[str, Any] = {}
    for held, rest in folds.items():
        inner_errors: dict[str, float] = {}
        for name in candidates:
            errs = []
            for inner in rest:
                train, hk = tuple(s for s in rest if s != inner), tuple(sorted((inner, held)))
                f = frame_for(train, hk)
                errs.append(balanced_error(fold_flags(train, hk, name)["gate"], f, store.ok_of(f), inner)["error"])
            inner_errors[name] = float(np.mean(errs))
            f = frame_for(rest, (held,))
            outer[name][held] = balanced_error(fold_flags(rest, (held,), name)["gate"], f, store.ok_of(f), held)
        pick = min(candidates, key=lambda n: (inner_errors[n], candidates.index(n)))
        chosen[held] = {"settings": pick, "inner_balanced_error": inner_errors}
        f = frame_for(rest, (held,))
        scored = _mask(f, store.ok_of(f), kind=DERMOSCOPIC, source=held, split="test")
        sets[f"{held} (dermoscopic, left out)"] = _rates(f, fold_flags(rest, (held,), pick), scored,
                                                        resamples=resamples, seed=seed)
    loso_error = {name: float(np.mean([v["error"] for v in outer[name].values()])) for name in candidates}
    final = min(candidates, key=lambda n: (loso_error[n], candidates.index(n)))

    # The bundle's own gate on the held-out clinical patients and non-skin pictures.
    plain, read, ok = store.of(own)
    methods = _methods(gate, own, plain, read, ok)
    test = _mask(own, ok, split="test")
    sets["pad_ufes_20 (clinical photos, held-out patients)"] = _rates(
        own, methods, _mask(own, ok, split="test", kind="clinical"), resamples=resamples, seed=seed)
    sets["nonskin (held-out pictures)"] = _rates(
        own, methods, _mask(own, ok, split="test", kind="other"), resamples=resamples, seed=seed)
    per_family = {src.split(":", 1)[1]: rate_with_ci(methods["gate"][_mask(own, ok, split="test", source=src)],
                                                      n_resamples=resamples, seed=seed)
                  for src in sorted(own.loc[own["kind"] == "other", "source"].unique())}
    for src in sorted(own.loc[own["kind"] == DERMOSCOPIC, "source"].unique()):
        m = _mask(own, ok, split="test", kind=DERMOSCOPIC, source=src)
        if m.any():
            sets[f"{src} (dermoscopic, in-source test split)"] = _rates(own, methods, m, resamples=resamples,
                                                                        seed=seed)

    types = np.array(gate.classify(read[test])[0])
    kinds = own.loc[test, "kind"].to_numpy()
    confusion = {k: {t: int(np.sum((kinds == k) & (types == t))) for t in gate.classes} for k in gate.classes}
    settings = entry.get("settings", "C=0.05")
    if settings != final:
        log.warning("the bundle's gate uses settings %r; leave-one-source-out selects %r (refit with "
                    "`skinlesion gate fit`)", settings, final)
    return {
        "bundle": b.meta.run_id,
        "method": entry.get("method"),
        "settings": settings,
        "views": list(views),
        "threshold": gate.threshold,
        "temperature": gate.temperature,
        "flagged_rate": {name: rates["gate"] for name, rates in sets.items()},
        "methods": sets,
        "selection": {
            "candidates": {n: settings_of(n) for n in candidates},
            "per_left_out_source": chosen,
            "loso_balanced_error": loso_error,
            "loso_parts": outer,
            "final": final,
        },
        "nonskin_families": per_family,
        "confusion_test": confusion,
        "notes": [
            "'flagged' = set aside as not dermoscopic (image type clinical or other).",
            "Every gate reads the mean pooled features over 'views' (what the Predictor reads), is trained on "
            "the plain view of its training rows and calibrated (temperature, threshold) on the read features "
            "of its validation rows.",
            "Rows 'left out': a gate fitted without that source (and without its duplicates in the "
            "other sources), with the settings chosen without it (selection.per_left_out_source: "
            "nested leave-one-source-out on the remaining sources), scored on its held-out rows "
            "(official test split where it has one).",
            "Balanced error = mean of: dermoscopic images of the left-out source flagged, validation "
            "phone photos (PAD-UFES-20 validation patients) and validation non-skin pictures not flagged.",
            "selection.final: the candidate with the lowest mean balanced error over the three "
            "leave-one-source-out gates; the bundle's gate should use it.",
            "Clinical and non-skin rows: the bundle's own gate on patients and pictures it never saw.",
            "'distance' = the Mahalanobis check (99.5 % validation quantile); 'gate_or_distance' flags "
            "when either does.",
        ],
        "resamples": resamples,
    }


def report_markdown(result: dict[str, Any]) -> str:
    """The gate report as a short Markdown table (gate, distance check, both)."""
    lines = [f"# Image-type gate: `{result['bundle']}`", "",
             "Fraction of images set aside as not dermoscopic (95 % CI). Dermoscopic rows should be low, "
             "the others high. "
             f"Every gate reads the mean pooled features over {len(result.get('views', ['id']))} view(s) "
             "(the views the Predictor serves), calibrated on exactly that.", "",
             "| set | n | gate | distance check | gate or distance |", "|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        cells = [f"{100 * m[k]['rate']:.1f} % [{100 * m[k]['ci'][0]:.1f}, {100 * m[k]['ci'][1]:.1f}]"
                 for k in ("gate", "distance", "gate_or_distance")]
        lines.append(f"| {name} | {m['gate']['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Non-skin pictures by family (gate): " + ", ".join(
        f"{k} {100 * v['rate']:.0f} % of {v['n']}" for k, v in result["nonskin_families"].items()), ""]
    sel = result.get("selection")
    if sel:
        lines += ["## Settings chosen by leave-one-source-out", "",
                  "Balanced error (mean of: left-out dermoscopic images flagged, validation phone photos and "
                  "non-skin pictures let through). Columns 'without X': mean over the inner folds that never "
                  "see X, which choose the settings of the gate reported for X.", "",
                  "| settings | LOSO balanced error | " + " | ".join(f"without {h}" for h in sel["per_left_out_source"])
                  + " |", "|---|---|" + "---|" * len(sel["per_left_out_source"])]
        for name, err in sel["loso_balanced_error"].items():
            inner = [f"{v['inner_balanced_error'][name]:.3f}" + (" ✓" if v["settings"] == name else "")
                     for v in sel["per_left_out_source"].values()]
            lines.append(f"| {name}{' (selected)' if name == sel['final'] else ''} | {err:.3f} | "
                         + " | ".join(inner) + " |")
        lines += ["", f"The bundle's gate uses `{result.get('settings')}`.", ""]
    return "\n".join(lines)

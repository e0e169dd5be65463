"""How often the image-type gate sets an image aside, measured both ways.

* Dermoscopic collections it never saw: for each shared dermoscopic source in turn, a gate is
  fitted without it (its images and their duplicates elsewhere removed from training, exactly
  as in leave-one-source-out) and scored on that source's held-out rows. This is the false
  alarm rate a new dermatoscope would meet.
* Phone photos of lesions from patients it never saw (PAD-UFES-20 test patients) and non-skin
  pictures it never saw (held-out photographs and draws): the bundle's own gate.

The existing distance check (Mahalanobis in feature space) is scored the same way, alone and
OR-ed with the gate, so the report shows whether it still adds something. Writes
``reports/gate/<run>/gate.json``: ``{"flagged_rate": {"<set>": {"n", "rate", "ci"}}}`` and more.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.bundle.format import BundleError, load
from skinlesion.metrics.rates import rate_with_ci
from skinlesion.metrics.stats import N_BOOTSTRAP
from skinlesion.models.gate import DERMOSCOPIC, ImageTypeGate
from skinlesion.training.gate import GATE_FILE, bundle_features, fit_on_frame, gate_training_frame

log = logging.getLogger(__name__)

DERMOSCOPIC_SOURCES = ("kaggle", "ham10000", "isic2017")


def flags(gate: ImageTypeGate, feats: np.ndarray) -> np.ndarray:
    """True where the gate sets the image aside (not dermoscopic)."""
    types, _, _ = gate.classify(feats)
    return np.array([t != DERMOSCOPIC for t in types])


def _distance_flags(train: np.ndarray, val: np.ndarray, feats: np.ndarray) -> np.ndarray:
    from skinlesion.models.ood import fit_ood

    return fit_ood(train, val).is_ood(feats)


def _rates(frame: pd.DataFrame, flagged: dict[str, np.ndarray], mask: np.ndarray, *, resamples: int,
           seed: int) -> dict[str, dict[str, Any]]:
    """One rate per method over ``mask`` rows, resampling the rows' groups."""
    groups = frame.loc[mask, "group"].to_numpy()
    return {m: rate_with_ci(f[mask], groups, n_resamples=resamples, seed=seed) for m, f in flagged.items()}


def evaluate_gate(bundle_path: str | Path, *, sources: tuple[str, ...] = DERMOSCOPIC_SOURCES,
                  resamples: int = N_BOOTSTRAP, seed: int = 42, progress: bool = False) -> dict[str, Any]:
    """Score the bundle's gate (and leave-one-source-out gates) on every held-out set."""
    from skinlesion.data.image_types import dermoscopic_frame
    from skinlesion.data.training_data import multi_source_data

    b = load(bundle_path)
    entry = b.meta.raw.get("gate")
    if not entry:
        raise BundleError(f"{b.path} has no image-type gate; fit one with `skinlesion gate fit {b.path}`")
    gate = ImageTypeGate.load(b.file(entry.get("file", GATE_FILE)))

    sets: dict[str, dict[str, dict[str, Any]]] = {}
    per_family: dict[str, dict[str, Any]] = {}
    selection: dict[str, dict[str, dict[str, Any]]] = {}
    for held in sources:
        rest = [s for s in sources if s != held]
        log.info("gate: leave out %s (fit on %s)", held, ", ".join(rest))
        td = multi_source_data(rest, holdout=[held], progress=progress)
        frame = gate_training_frame(dermoscopic_frame(td.table, td.roots), seed=seed)
        feats, ok, _ = bundle_features(b, frame["path"].tolist(), progress=progress)
        loso_gate = fit_on_frame(frame, feats, ok, seed=seed)
        derm = (frame["kind"] == "dermoscopic").to_numpy()
        tr, va = ok & derm & (frame["split"] == "train").to_numpy(), ok & derm & (frame["split"] == "val").to_numpy()
        f_gate = flags(loso_gate, feats)
        f_dist = _distance_flags(feats[tr], feats[va], feats)
        methods = {"gate": f_gate, "distance": f_dist, "gate_or_distance": f_gate | f_dist}
        scored = ok & derm & (frame["source"] == held).to_numpy() & (frame["split"] == "test").to_numpy()
        sets[f"{held} (dermoscopic, left out)"] = _rates(frame, methods, scored, resamples=resamples, seed=seed)
        # What the selection may look at: the validation rows of the sources it trained on.
        for kind in ("dermoscopic", "clinical", "other"):
            m = ok & (frame["kind"] == kind).to_numpy() & (frame["split"] == "val").to_numpy()
            selection.setdefault(f"{kind} (validation, gate without {held})", {}).update(
                _rates(frame, methods, m, resamples=resamples, seed=seed))

    # The bundle's own gate on the held-out clinical patients and non-skin pictures.
    table = pd.read_csv(b.path / "splits.csv")
    from skinlesion.data.training_data import roots_for

    frame = gate_training_frame(dermoscopic_frame(table, roots_for(table, b.meta.training.data_dir)), seed=seed)
    feats, ok, _ = bundle_features(b, frame["path"].tolist(), progress=progress)
    derm = (frame["kind"] == "dermoscopic").to_numpy()
    tr, va = ok & derm & (frame["split"] == "train").to_numpy(), ok & derm & (frame["split"] == "val").to_numpy()
    f_gate = flags(gate, feats)
    f_dist = _distance_flags(feats[tr], feats[va], feats)
    methods = {"gate": f_gate, "distance": f_dist, "gate_or_distance": f_gate | f_dist}
    test = ok & (frame["split"] == "test").to_numpy()
    sets["pad_ufes_20 (clinical photos, held-out patients)"] = _rates(
        frame, methods, test & (frame["kind"] == "clinical").to_numpy(), resamples=resamples, seed=seed)
    sets["nonskin (held-out pictures)"] = _rates(
        frame, methods, test & (frame["kind"] == "other").to_numpy(), resamples=resamples, seed=seed)
    for src in sorted(frame.loc[frame["kind"] == "other", "source"].unique()):
        m = test & (frame["source"] == src).to_numpy()
        per_family[src.split(":", 1)[1]] = rate_with_ci(f_gate[m], n_resamples=resamples, seed=seed)
    for src in sorted(frame.loc[derm, "source"].unique()):
        m = test & derm & (frame["source"] == src).to_numpy()
        if m.any():
            sets[f"{src} (dermoscopic, in-source test split)"] = _rates(frame, methods, m, resamples=resamples,
                                                                        seed=seed)

    types, _, _ = gate.classify(feats[test])
    kinds = frame.loc[test, "kind"].to_numpy()
    confusion = {k: {t: int(np.sum((kinds == k) & (np.array(types) == t))) for t in gate.classes}
                 for k in gate.classes}
    return {
        "bundle": b.meta.run_id,
        "method": entry.get("method"),
        "threshold": gate.threshold,
        "temperature": gate.temperature,
        "flagged_rate": {name: rates["gate"] for name, rates in sets.items()},
        "methods": sets,
        "selection": selection,
        "nonskin_families": per_family,
        "confusion_test": confusion,
        "notes": [
            "'flagged' = set aside as not dermoscopic (image type clinical or other).",
            "Rows 'left out': a gate fitted without that source (and without its duplicates in the "
            "other sources), scored on its held-out rows (official test split where it has one).",
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
             "the others high.", "",
             "| set | n | gate | distance check | gate or distance |", "|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        cells = [f"{100 * m[k]['rate']:.1f} % [{100 * m[k]['ci'][0]:.1f}, {100 * m[k]['ci'][1]:.1f}]"
                 for k in ("gate", "distance", "gate_or_distance")]
        lines.append(f"| {name} | {m['gate']['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Non-skin pictures by family (gate): " + ", ".join(
        f"{k} {100 * v['rate']:.0f} % of {v['n']}" for k, v in result["nonskin_families"].items()), ""]
    return "\n".join(lines)

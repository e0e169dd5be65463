"""Ensembles: the average of calibrated member probabilities, saved as a bundle of its own.

Members must have been trained on the same split (their validation predictions are aligned
by image path), so the ensemble's temperature and decision policy are fitted on the same
validation images as the members'.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from skinlesion.bundle.format import BundleError, load, member_refs, write_bundle
from skinlesion.io import sha256_file


def ensemble_validation_probabilities(bundle_paths: list[Path]) -> pd.DataFrame:
    """Validation table (path, label, prob) with the mean of the members' calibrated probabilities."""
    from skinlesion.metrics.calibration import apply_temperature

    frames = []
    for i, p in enumerate(bundle_paths):
        b = load(p)
        if b.kind != "single":
            raise BundleError(f"{p}: ensembles of ensembles are not supported; list the single bundles")
        df = pd.read_csv(b.file("val_predictions.csv"))
        T = b.meta.temperature
        frames.append(df.assign(prob=apply_temperature(df["prob"].to_numpy(), T)).rename(columns={"prob": f"p{i}"}))
    merged = frames[0]
    for f in frames[1:]:
        merged = merged.merge(f.drop(columns="label"), on="path", how="inner")
    if len(merged) != len(frames[0]) or any(len(f) != len(frames[0]) for f in frames):
        raise BundleError("the members were validated on different images: train them on the same splits file")
    cols = [f"p{i}" for i in range(len(frames))]
    return pd.DataFrame({"path": merged["path"], "label": merged["label"], "prob": merged[cols].mean(axis=1)})


def make_ensemble(
    bundle_paths: Sequence[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    target_sensitivity: float = 0.95,
) -> Path:
    """Write an ensemble bundle that the Predictor loads like any other bundle."""
    from skinlesion.metrics import calibration
    from skinlesion.metrics import classification as metrics

    paths = [Path(p).resolve() for p in bundle_paths]
    if len(paths) < 2:
        raise BundleError("an ensemble needs at least two bundles")
    twice = sorted({str(p) for p in paths if paths.count(p) > 1})
    if twice:
        # It would be served as an ensemble while weighting one model double, with no second opinion.
        raise BundleError(f"{twice[0]} is given more than once; an ensemble needs different bundles")
    members = [load(p) for p in paths]
    splits = {sha256_file(m.file("splits.csv")) for m in members}
    if len(splits) != 1:
        raise BundleError("the members were trained on different splits; an ensemble needs one shared split")
    tta = {m.meta.dihedral_tta for m in members}
    if len(tta) != 1:
        # The Predictor serves every member the same way, so a mixed ensemble would be served
        # differently from how some members' validation probabilities (and its threshold) were made.
        raise BundleError("some members are served with dihedral TTA and some without; ensemble members must agree")
    val = ensemble_validation_probabilities(paths)
    y, p = val["label"].to_numpy(), val["prob"].to_numpy()
    # The same policy fit as a single bundle's (temperature, then threshold and refer band).
    policy = calibration.build_decision_policy(y, p, target_sensitivity)
    T = policy.temperature
    summary = metrics.summarize(y, calibration.apply_temperature(p, T), threshold=policy.threshold)
    first = members[0]
    out_dir = Path(out_dir) if out_dir else first.path.parent
    names = "+".join(str(m.meta.backbone) for m in members)
    run_id = run_id or f"ensemble-{'-'.join(m.meta.run_id for m in members)}"[:120]
    meta = {
        "kind": "ensemble",
        "backbone": f"ensemble({names})",
        # Relative paths keep a models/ folder relocatable.
        "members": member_refs([m.path for m in members], out_dir / run_id),
        "member_bundle_sha256": [sha256_file(m.file("bundle.json")) for m in members],
        "input_size": first.input_size,
        "last_conv_layer": first.meta.last_conv_layer,
        "stage": "ensemble of calibrated members",
        "synthetic": any(m.synthetic for m in members),
        "decision": policy.to_dict(),
        "calibration": {"method": "temperature (on the mean of calibrated member probabilities)", "temperature": T},
        "training": {**first.meta.raw["training"], "members": [m.meta.run_id for m in members]},
        "metrics": {"val": summary},
    }
    if tta.pop():
        # Served as its members' validation probabilities were made (and its threshold fitted).
        meta["tta"] = "dihedral"

    return write_bundle(meta, {"splits.csv": first.file("splits.csv"), "val_predictions.csv": val},
                        out_dir=out_dir, run_id=run_id)

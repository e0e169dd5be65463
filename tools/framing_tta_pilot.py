"""Would framing views at test time help on a source the model never saw? A pilot on LOSO bundles.

The default serves the mean over the 8 dihedral views. Its heads were also trained on a 15 % zoom-in
and zoom-out (``zi``, ``zo``), so the same views could be averaged in at test time. For each recipe
given (several seeds of one recipe, so the gain can be set against training noise) and each held-out
source, this applies the fold bundle's head to the cached backbone features of the held-out images
under every view (``evaluation.generalise.stage1_view_outputs``) and prints the held-out ROC AUC of
several view sets, then each set's gain over the 8 dihedral views (mean, min and max over the
recipes), and the AUC of the recipes' mean served output (an ensemble of the seeds). It trains
nothing; the recipes must have been run with ``skinlesion generalise`` (stage-1 bundles only). The
zoom views are not rotated, so a set with them is no longer exactly rotation-invariant.

    python tools/framing_tta_pilot.py lite0-s1-idfhzio-linear-tta lite0-s1-idfhzio-linear-tta-seed7 \
        lite0-s1-idfhzio-linear-tta-seed1 lite0-s1-idfhzio-linear-tta-seed2
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from _loso import SOURCES, require_loso_bundles

ZOOMS = ("zi", "zo", "zi30", "zo30")


def view_sets() -> dict[str, tuple[str, ...]]:
    """Name -> the views whose probabilities are averaged."""
    from skinlesion.models.features import VIEWS

    d8 = tuple(VIEWS)
    return {"D8 (served)": d8, "D8+zi": (*d8, "zi"), "D8+zo": (*d8, "zo"), "D8+zi+zo": (*d8, "zi", "zo"),
            "D8+zi30+zo30": (*d8, "zi30", "zo30"), "id+fh+zi+zo": ("id", "fh", "zi", "zo")}


def held_out_outputs(recipe: str, held: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw P(malignant) of the fold bundle of ``recipe`` without ``held`` on its held-out images, per view."""
    from skinlesion import config
    from skinlesion.evaluation.generalise import stage1_view_outputs
    from skinlesion.models.features import VIEWS

    path = config.models_dir() / "loso" / f"loso-{recipe}-{held}"
    table = pd.read_csv(path / "splits.csv")
    test = table[(table["source"] == held) & (table["split"] == "test")]
    files = [config.source_root(s) / p for s, p in zip(test["source"], test["path"])]
    views = (*VIEWS, *ZOOMS)
    out = stage1_view_outputs(path, files, views)
    if out is None:
        raise SystemExit(f"{recipe}: this pilot reads stage-1 bundles only")
    raw, ok, _ = out
    return {view: raw[ok, i] for i, view in enumerate(views)}, test["label"].to_numpy()[ok]


def main() -> None:
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", help="stage-1 recipes run with `skinlesion generalise` (e.g. several seeds)")
    args = ap.parse_args()
    require_loso_bundles(args.recipes, Path(__file__).name)
    rows: list[dict] = []
    served: dict[str, list[np.ndarray]] = {}
    y_held: dict[str, np.ndarray] = {}
    for held in SOURCES:
        for recipe in args.recipes:
            probs, y = held_out_outputs(recipe, held)
            y_held[held] = y
            served.setdefault(held, []).append(np.mean([probs[v] for v in view_sets()["D8 (served)"]], axis=0))
            for set_name, views in view_sets().items():
                auc = roc_auc_score(y, np.mean([probs[v] for v in views], axis=0))
                rows.append({"held out": held, "recipe": recipe, "views": set_name, "auc": auc})
    df = pd.DataFrame(rows)
    table = df.pivot_table(index="views", columns="held out", values="auc", aggfunc="mean", sort=False)[list(SOURCES)]
    table["mean"] = table.mean(axis=1)
    print(f"held-out ROC AUC, mean over {len(args.recipes)} recipe(s):\n{table.round(4).to_string()}\n")
    base = df[df["views"] == "D8 (served)"].drop(columns="views").rename(columns={"auc": "base"})
    gain = df.merge(base, on=["held out", "recipe"]).assign(gain=lambda f: f["auc"] - f["base"])
    summary = gain.groupby(["views", "held out"], sort=False)["gain"].agg(["mean", "min", "max"]).unstack("held out")
    print(f"gain over the 8 dihedral views (mean, min, max over the recipes):\n{summary.round(4).to_string()}\n")
    ens = {held: roc_auc_score(y_held[held], np.mean(p, axis=0)) for held, p in served.items()}
    print("the recipes' mean served output (8 dihedral views): "
          + ", ".join(f"{h} {a:.4f}" for h, a in ens.items()) + f", mean {np.mean(list(ens.values())):.4f}")


if __name__ == "__main__":
    main()

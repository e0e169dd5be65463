"""Would averaging two recipes help on sources neither saw? A pilot on committed LOSO predictions.

For each held-out source, the ensemble's score of an image is the sigmoid of the mean logit of the
members' raw outputs (before calibration; each member's model trained without that source), the rule of
``skinlesion.serving.combine.combine_probabilities``, and its ROC AUC is compared with the first recipe's on the same images (DeLong's test and a paired bootstrap CI, as
``skinlesion generalise-compare``). It trains nothing; every member must have been run with
``skinlesion generalise``. ``--pairs`` pairs the first recipe with each of the others in turn (the
honest way to read one good pair among many).

    python tools/loso_ensemble_pilot.py lite0-s1-idfhzio-linear-tta lite0-ft60-idfhzio-linear-tta
    python tools/loso_ensemble_pilot.py --pairs lite0-s1-idfhzio-linear-tta $(other recipes)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = ["held_out", "source", "path"]


def predictions_file(report_dir: Path, recipe: str) -> Path:
    """A recipe's LOSO predictions: ``report_dir/<recipe>/predictions.csv``, or ``recipe`` itself when it
    names a ``.csv`` file in that layout (a pilot's held-out outputs, e.g. ``tools/lesion_crop_pilot.py``)."""
    return Path(recipe) if recipe.endswith(".csv") else report_dir / recipe / "predictions.csv"


def ensemble(report_dir: Path, recipes: list[str]) -> None:
    from skinlesion.metrics.stats import paired_auc_test
    from skinlesion.serving.combine import combine_probabilities

    frames = []
    for r in recipes:
        f = pd.read_csv(predictions_file(report_dir, r))
        f = f[~f["held_out"].str.startswith("reference:") & f["error"].isna()]
        frames.append(f[[*KEYS, "y_true", "raw_probability"]].rename(columns={"raw_probability": r}))
    m = frames[0]
    for f in frames[1:]:
        m = m.merge(f.drop(columns="y_true"), on=KEYS)
    if m.empty:  # e.g. a file of absolute paths: nothing to pair
        raise SystemExit(f"{Path(__file__).name}: none of the held-out images of {recipes[0]} is in every one of "
                         f"{', '.join(recipes[1:])} (paths relative to each source's root, as the reports write them)")
    if len(m) != len(frames[0]):  # a subsampled recipe scored fewer images: say so, never silently
        print(f"scored on the {len(m)} of {len(frames[0])} held-out images of {recipes[0]} that every member has")
    m["ensemble"] = m[recipes].apply(combine_probabilities, axis=1)  # the lesion-group rule: mean logit
    rows = []
    for held, s in m.groupby("held_out", sort=False):
        t = paired_auc_test(s["y_true"].to_numpy(int), s["ensemble"].to_numpy(), s[recipes[0]].to_numpy())
        rows.append((held, len(s), t["auc_b"], t["auc_a"], t["diff"], t["ci_low"], t["ci_high"], t["p_value"]))
    out = pd.DataFrame(rows, columns=["held out", "n", "first", "ensemble", "diff", "ci low", "ci high", "p (DeLong)"])
    print(f"\n{' + '.join(recipes)}")
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"mean {out['first'].mean():.3f} -> {out['ensemble'].mean():.3f}; "
          f"worst {out['first'].min():.3f} -> {out['ensemble'].min():.3f}")


def require_predictions(report_dir: Path, recipes: list[str]) -> None:
    """Exit with one line when a recipe has no LOSO predictions, naming the command that writes them."""
    for recipe in recipes:
        if recipe.endswith(".csv") and not Path(recipe).is_file():
            raise SystemExit(f"{Path(__file__).name}: no predictions file {recipe} (a pilot writes one, e.g. "
                             f"`python tools/lesion_crop_pilot.py --predictions {recipe}`)")
        if not predictions_file(report_dir, recipe).is_file():
            raise SystemExit(f"{Path(__file__).name}: no LOSO predictions of {recipe!r} (no {report_dir / recipe}"
                             f"/predictions.csv): run `skinlesion generalise --recipe {recipe}` with that recipe's "
                             f"training options (README, \"Reproduce\"); the committed recipes are the folders of "
                             f"{report_dir}.")


def main() -> None:
    from skinlesion import config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", help="recipe names (folders under the report dir) or "
                    "predictions files (.csv); the first is the baseline")
    ap.add_argument("--pairs", action="store_true", help="the first recipe with each other one, in turn")
    # The project's reports folder, not the working directory's: the script runs from anywhere.
    ap.add_argument("--report-dir", type=Path, default=config.reports_dir() / "generalisation",
                    help="where `skinlesion generalise` wrote the recipes' reports (default: %(default)s)")
    args = ap.parse_args()
    if len(args.recipes) < 2:
        raise SystemExit(f"{Path(__file__).name}: name at least two recipes")
    require_predictions(args.report_dir, args.recipes)
    groups = [[args.recipes[0], r] for r in args.recipes[1:]] if args.pairs else [args.recipes]
    for g in groups:
        ensemble(args.report_dir, g)


if __name__ == "__main__":
    main()

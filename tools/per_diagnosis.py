"""Which benign lesions does a recipe confuse with malignant ones on a source it never saw?

Reads a recipe's committed LOSO predictions (``reports/generalisation/<recipe>/predictions.csv``,
written by ``skinlesion generalise``), joins each held-out image to its source's own diagnosis, and
prints, per held-out source with several benign diagnoses, the ROC AUC of all its malignant images
against each benign diagnosis alone, and the share of each diagnosis at or above the frozen threshold
(the fold's, as ``summary.json`` records it: what its sensitivity and specificity count). Trains nothing.

    python tools/per_diagnosis.py ens-lite0-s1-ft60-idfhzio-linear-tta lite0-s1-idfhzio-linear-tta
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def require_reports(recipes: list[str]) -> None:
    """Exit with one line when a recipe has no LOSO predictions, naming the command that writes them."""
    from skinlesion import config

    root = config.reports_dir() / "generalisation"
    for recipe in recipes:
        if not all((root / recipe / name).is_file() for name in ("predictions.csv", "summary.json")):
            raise SystemExit(f"{Path(__file__).name}: no LOSO predictions of {recipe!r} ({root / recipe} has no "
                             f"predictions.csv and summary.json): run `skinlesion generalise --recipe {recipe}` with "
                             "that recipe's training options (README, \"Reproduce\"); the committed recipes are the "
                             "folders of reports/generalisation.")


def per_diagnosis(recipe: str) -> pd.DataFrame:
    """One row per (held-out source, benign diagnosis): n, AUC against every malignant image, share above threshold."""
    from sklearn.metrics import roc_auc_score

    from skinlesion import config
    from skinlesion.data.sources import load_source

    folder = config.reports_dir() / "generalisation" / recipe
    predictions = pd.read_csv(folder / "predictions.csv")
    held_out = json.loads((folder / "summary.json").read_text())["held_out"]
    rows = []
    for source, summary in held_out.items():
        records = load_source(source).records[["path", "diagnosis"]]
        p = predictions[(predictions["held_out"] == source) & predictions["error"].isna()].merge(records, on="path")
        y, score, dx = p["y_true"].to_numpy(), p["probability"].to_numpy(), p["diagnosis"].astype(str).to_numpy()
        benign = sorted(set(dx[y == 0]))
        for d in benign if len(benign) > 1 else []:
            m = (y == 1) | (dx == d)
            rows.append({"recipe": recipe, "held out": source, "benign diagnosis": d, "n": int((dx == d).sum()),
                         "AUC vs malignant": roc_auc_score(y[m], score[m]),
                         "at or above threshold": float((score[dx == d] >= summary["threshold"]).mean())})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", help="recipes run with `skinlesion generalise` (reports/generalisation/<recipe>)")
    args = ap.parse_args()
    require_reports(args.recipes)
    from skinlesion.data.datasets import DataError

    try:
        table = pd.concat([per_diagnosis(r) for r in args.recipes], ignore_index=True)
    except DataError as exc:  # a source's diagnoses are not there: its message says how to get them
        raise SystemExit(f"{Path(__file__).name}: {exc}") from None
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

"""Is a model's test-split AUC carried by the dermoscope's vignette? Two evaluated models, one set, split by dark corners.

On the Kaggle test split a dark vignette (a full-field dermoscope) is far commoner among malignant
images than benign ones, so a model that reads the corners gains AUC there without reading the lesion.
This reads two ``skinlesion evaluate`` report folders' predictions of one set
(``predictions_<set>.csv``, same images), measures each image's dark-corner fraction with
``skinlesion.data.profile.image_profile`` (the exploration notebook's definition), and prints: the
vignette count by class, the AUC of the dark-corner fraction alone, each model's AUC overall, within
each stratum, and over benign–malignant pairs of the same stratum only (what is left once the
vignette cannot rank), and the paired difference A − B overall and without a vignette (DeLong p,
paired bootstrap CI). Trains nothing, touches no model.

    python tools/vignette_strata.py reports/ens-lite0-s1-s1lc-linear-tta reports/ens-lite0-s1-ft60-idfhzio-linear-tta
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

VIGNETTE = 0.5  # an image has a vignette when more than half of its corner pixels are dark (notebook 01)


def read_predictions(report: Path, eval_set: str) -> pd.DataFrame:
    """The scored rows (no error) of ``report/predictions_<set>.csv``; exits with one line when missing."""
    from skinlesion.evaluation.common import set_file_stem

    path = report / f"predictions_{set_file_stem(eval_set)}.csv"
    if not path.is_file():
        raise SystemExit(f"{Path(__file__).name}: no {path.name} in {report} (run `skinlesion evaluate` on that "
                         "bundle first; `ls` the folder for the sets it scored)")
    df = pd.read_csv(path)
    return df[df["error"].isna()] if "error" in df else df


def stratified_auc(y: np.ndarray, score: np.ndarray, stratum: np.ndarray) -> float:
    """ROC AUC over benign–malignant pairs that share a stratum (pairs across strata are not counted)."""
    from sklearn.metrics import roc_auc_score

    num = den = 0.0
    for s in np.unique(stratum):
        m = stratum == s
        n1, n0 = int((y[m] == 1).sum()), int((y[m] == 0).sum())
        if n1 and n0:
            num += roc_auc_score(y[m], score[m]) * n1 * n0
            den += n1 * n0
    return num / den if den else float("nan")


def vignette_table(a: pd.DataFrame, b: pd.DataFrame, dark: pd.Series, names: tuple[str, str]) -> tuple[pd.DataFrame, dict]:
    """Per model: AUC overall / no vignette / vignette / within strata; plus the paired differences."""
    from sklearn.metrics import roc_auc_score

    from skinlesion.metrics.stats import paired_auc_test

    m = a.merge(b[["path", "probability", "y_true"]], on="path", suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b):
        raise SystemExit(f"{Path(__file__).name}: the two reports scored different images ({len(a)} vs {len(b)}, "
                         f"{len(m)} in common); compare reports of the same set")
    if not (m["y_true_a"] == m["y_true_b"]).all():
        raise SystemExit(f"{Path(__file__).name}: the two reports label some images differently; compare reports "
                         "of the same set")
    y = m["y_true_a"].to_numpy(int)
    vig = (m["path"].map(dark) > VIGNETTE).to_numpy()
    rows = []
    for key, name in zip(("a", "b"), names, strict=True):
        p = m[f"probability_{key}"].to_numpy(float)
        rows.append({"model": name, "AUC": roc_auc_score(y, p),
                     "no vignette": roc_auc_score(y[~vig], p[~vig]) if len(set(y[~vig])) == 2 else float("nan"),
                     "vignette": roc_auc_score(y[vig], p[vig]) if len(set(y[vig])) == 2 else float("nan"),
                     "within strata": stratified_auc(y, p, vig)})
    pa, pb = m["probability_a"].to_numpy(float), m["probability_b"].to_numpy(float)
    # DeLong's test needs two cases of each class; a smaller part is reported as too small.
    paired = {part: paired_auc_test(y[mask], pa[mask], pb[mask])
              if min((y[mask] == 1).sum(), (y[mask] == 0).sum()) >= 2 else None
              for part, mask in (("all", np.ones_like(vig)), ("no vignette", ~vig))}
    counts = pd.crosstab(pd.Series(vig, name="vignette"), pd.Series(y, name="malignant"))
    return pd.DataFrame(rows).set_index("model"), {"paired": paired, "counts": counts,
                                                  "dark_auc": roc_auc_score(y, m["path"].map(dark))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_a", type=Path, help="a report folder written by `skinlesion evaluate` (model A)")
    ap.add_argument("report_b", type=Path, help="another one, of the same set (model B)")
    ap.add_argument("--set", dest="eval_set", default="test:kaggle", help="the evaluated set (default test:kaggle)")
    ap.add_argument("--images", type=Path, default=None,
                    help="folder the predictions' paths are relative to (default: the set's source folder)")
    args = ap.parse_args()
    from skinlesion import config
    from skinlesion.data.profile import image_profile

    a, b = read_predictions(args.report_a, args.eval_set), read_predictions(args.report_b, args.eval_set)
    try:
        root = args.images or config.source_root(args.eval_set.split(":")[-1])
    except KeyError:  # a set named after no source (e.g. test_dedup)
        raise SystemExit(f"{Path(__file__).name}: no data source for the set {args.eval_set!r}; give --images DIR") from None
    if not root.is_dir():
        raise SystemExit(f"{Path(__file__).name}: no image folder {root}; give --images DIR")
    try:
        dark = pd.Series({p: image_profile(root / p)["dark_corner_fraction"] for p in a["path"]})
    except OSError as exc:  # a path the folder lacks, or an unreadable file: say which, stop
        raise SystemExit(f"{Path(__file__).name}: cannot read an image under {root}: {exc}") from None
    table, extra = vignette_table(a, b, dark, (args.report_a.name, args.report_b.name))
    print(f"{args.eval_set}: images with a vignette (> {VIGNETTE:.0%} of corner pixels dark), by class:")
    print(extra["counts"].to_string())
    print(f"AUC of the dark-corner fraction alone: {extra['dark_auc']:.3f}\n")
    print(table.round(4).to_string())
    for part, r in extra["paired"].items():
        print(f"A - B ({part}): " + ("too few images of a class to compare" if r is None else
                                     f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], DeLong p = {r['p_value']:.3g}"))


if __name__ == "__main__":
    main()

"""Where on a test split does one model beat another? Two evaluated models, one set, split by an image property.

On the Kaggle test split a dark vignette (a full-field dermoscope) is far commoner among malignant
images than benign ones, so a model that reads the corners gains AUC there without reading the lesion;
and a model that reads a crop about the lesion (``--lesion-crop``) sees a different square per image.
This reads two ``skinlesion evaluate`` report folders' predictions of one set
(``predictions_<set>.csv``, same images) and splits the images by

* ``--by vignette``: the dark-corner fraction of ``skinlesion.data.profile.image_profile`` (the
  exploration notebook's definition), vignette when over half the corner pixels are dark;
* ``--by crop``: the side of the lesion crop (``skinlesion.models.lesion`` on the 224-px model input, as the
  crop member reads it): the 0.4 floor, up to 0.7, over 0.7, the whole frame (the lesion and its margin fill
  it), or no lesion found (the whole frame too).

It prints the strata by class, the AUC of the property alone (vignette), each model's AUC overall,
per stratum and over benign–malignant pairs of the same stratum only (what is left once the property
cannot rank), and the paired difference A − B overall and per stratum (DeLong p, paired bootstrap CI;
a stratum with fewer than two images of a class is reported as too small). Trains nothing.

    python tools/auc_strata.py reports/ens-lite0-s1-s1lc-linear-tta reports/ens-lite0-s1-ft60-idfhzio-linear-tta
    python tools/auc_strata.py reports/lite0-s1-idfh-linear-tta-lc reports/lite0-s1-idfhzio-linear-tta --by crop
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

VIGNETTE = 0.5  # an image has a vignette when more than half of its corner pixels are dark (notebook 01)
CROP_SPLIT = 0.7  # crop side / image side: the floor (MIN_SIDE), up to this, over it (below the whole frame)


def read_predictions(report: Path, eval_set: str) -> pd.DataFrame:
    """The scored rows of ``report/predictions_<set>.csv`` (as ``skinlesion compare`` keeps them); exits with
    one line when the file is missing or is not a predictions table."""
    from skinlesion.evaluation.common import ReportError, scored_rows, set_file_stem

    path = report / f"predictions_{set_file_stem(eval_set)}.csv"
    if not path.is_file():
        raise SystemExit(f"{Path(__file__).name}: no {path.name} in {report} (run `skinlesion evaluate` on that "
                         "bundle first; `ls` the folder for the sets it scored)")
    try:
        return scored_rows(pd.read_csv(path))
    except ReportError as exc:
        raise SystemExit(f"{Path(__file__).name}: {path}: {exc}") from None


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


def vignette_strata(paths: pd.Series, root: Path) -> tuple[pd.Series, pd.Series]:
    """(stratum label, dark-corner fraction) per image path."""
    from skinlesion.data.profile import image_profile

    dark = pd.Series([image_profile(root / p)["dark_corner_fraction"] for p in paths], index=paths.index)
    return dark.gt(VIGNETTE).map({True: "vignette", False: "no vignette"}), dark


def crop_strata(paths: pd.Series, root: Path) -> pd.Series:
    """Stratum label per image path: how large a square the lesion-crop rule cuts from its 224-px input."""
    from skinlesion.data.intake import load_for_model
    from skinlesion.models.lesion import MIN_SIDE, crop_square, lesion_box

    def label(path: str) -> str:
        size = 224
        box = lesion_box(load_for_model(root / path, size))
        if box is None:
            return "no lesion found"
        side = crop_square(box, size)[2] / size
        if side >= 1:
            return "fills the frame"
        if side <= MIN_SIDE + 1 / size:
            return f"floor ({MIN_SIDE:g})"
        return f"<= {CROP_SPLIT:g}" if side <= CROP_SPLIT else f"> {CROP_SPLIT:g}"

    return pd.Series([label(p) for p in paths], index=paths.index)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, p) if len(set(y)) == 2 else float("nan")


def strata_table(a: pd.DataFrame, b: pd.DataFrame, stratum: pd.Series, names: tuple[str, str]) -> tuple[pd.DataFrame, dict]:
    """Per model: AUC overall, per stratum and within strata; plus the paired differences and the counts.

    ``stratum`` is indexed by image path."""
    from skinlesion.metrics.stats import paired_auc_test

    m = a.merge(b[["path", "probability", "y_true"]], on="path", suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b):
        raise SystemExit(f"{Path(__file__).name}: the two reports scored different images ({len(a)} vs {len(b)}, "
                         f"{len(m)} in common); compare reports of the same set")
    if not (m["y_true_a"] == m["y_true_b"]).all():
        raise SystemExit(f"{Path(__file__).name}: the two reports label some images differently; compare reports "
                         "of the same set")
    y = m["y_true_a"].to_numpy(int)
    s = m["path"].map(stratum).to_numpy(str)
    parts = sorted(set(s))
    pa, pb = m["probability_a"].to_numpy(float), m["probability_b"].to_numpy(float)
    rows = []
    for p, name in ((pa, names[0]), (pb, names[1])):
        rows.append({"model": name, "all": _auc(y, p), **{part: _auc(y[s == part], p[s == part]) for part in parts},
                     "within strata": stratified_auc(y, p, s)})
    # DeLong's test needs two cases of each class; a smaller part is reported as too small.
    paired = {part: paired_auc_test(y[mask], pa[mask], pb[mask])
              if min((y[mask] == 1).sum(), (y[mask] == 0).sum()) >= 2 else None
              for part, mask in [("all", np.ones(len(y), bool)), *((part, s == part) for part in parts)]}
    counts = pd.crosstab(pd.Series(s, name="stratum"), pd.Series(y, name="malignant"))
    return pd.DataFrame(rows).set_index("model"), {"paired": paired, "counts": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_a", type=Path, help="a report folder written by `skinlesion evaluate` (model A)")
    ap.add_argument("report_b", type=Path, help="another one, of the same set (model B)")
    ap.add_argument("--by", choices=("vignette", "crop"), default="vignette", help="the property (default vignette)")
    ap.add_argument("--set", dest="eval_set", default="test:kaggle", help="the evaluated set (default test:kaggle)")
    ap.add_argument("--images", type=Path, default=None,
                    help="folder the predictions' paths are relative to (default: the set's source folder)")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from skinlesion import config

    a, b = read_predictions(args.report_a, args.eval_set), read_predictions(args.report_b, args.eval_set)
    try:
        root = args.images or config.source_root(args.eval_set.split(":")[-1])
    except KeyError:  # a set named after no source (e.g. test_dedup)
        raise SystemExit(f"{Path(__file__).name}: no data source for the set {args.eval_set!r}; give --images DIR") from None
    if not root.is_dir():
        raise SystemExit(f"{Path(__file__).name}: no image folder {root}; give --images DIR")
    paths = a["path"].reset_index(drop=True)
    try:
        if args.by == "vignette":
            labels, dark = vignette_strata(paths, root)
        else:
            labels, dark = crop_strata(paths, root), None
    except Exception as exc:  # a path the folder lacks, an unreadable image: say which, stop
        raise SystemExit(f"{Path(__file__).name}: cannot read an image under {root}: {exc}") from None
    stratum = pd.Series(labels.to_numpy(), index=paths.to_numpy())
    table, extra = strata_table(a, b, stratum, (args.report_a.name, args.report_b.name))
    what = (f"a vignette (> {VIGNETTE:.0%} of corner pixels dark)" if args.by == "vignette"
            else "the lesion crop's side (fraction of the 224-px input)")
    print(f"{args.eval_set}: images by {what}, by class:")
    print(extra["counts"].to_string())
    if dark is not None:
        y = a.set_index("path").loc[paths, "y_true"].to_numpy(int)
        print(f"AUC of the dark-corner fraction alone: {roc_auc_score(y, dark.to_numpy()):.3f}")
    print()
    print(table.round(4).to_string())
    for part, r in extra["paired"].items():
        print(f"A - B ({part}): " + ("too few images of a class to compare" if r is None else
                                     f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], DeLong p = {r['p_value']:.3g}"))


if __name__ == "__main__":
    main()

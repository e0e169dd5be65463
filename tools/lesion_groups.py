"""Several photos of one lesion: per-image vs per-lesion AUC on HAM10000, with bootstrap CIs.

Reads the leave-one-source-out predictions of the default recipe (the run that held HAM10000 out,
so the model never saw these lesions), joins each photo to its ``lesion_id`` and writes
``reports/lesion_groups/ham10000.json`` (skinlesion.evaluation.lesion_groups). Seconds, no model.

    python tools/lesion_groups.py [--predictions reports/generalisation/<recipe>/predictions.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from skinlesion.config import display_path
    from skinlesion.evaluation.lesion_groups import write_lesion_group_benefit
    from skinlesion.io import read_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictions", type=Path, default=None,
                    help="a LOSO predictions.csv (default: the default recipe's)")
    ap.add_argument("--held-out", default="ham10000", help="the held-out source with lesion groups")
    ap.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default: the project's)")
    ap.add_argument("--out", type=Path, default=None, help="default reports/lesion_groups/<held-out>.json")
    args = ap.parse_args()
    path = write_lesion_group_benefit(args.out, predictions_csv=args.predictions, held_out=args.held_out,
                                      n_resamples=args.resamples)
    result = read_json(path)
    for subset in ("all_lesions", "lesions_with_several_photos"):
        r = result[subset]
        print(f"{subset}: {r['n_lesions']} lesions ({r['n_malignant_lesions']} malignant), {r['n_images']} photos")
        for rule in ("per_image", "single_photo", "per_lesion"):
            s = r[rule]
            print(f"  {rule:13s} AUC {s['roc_auc']:.4f} [{s['roc_auc_ci'][0]:.4f}, {s['roc_auc_ci'][1]:.4f}]  "
                  f"sens {s['sensitivity']:.3f}  spec {s['specificity']:.3f}")
        for base in ("per_image", "single_photo"):
            d = r[f"auc_per_lesion_minus_{base}"]
            print(f"  per_lesion - {base}: {d['value']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]")
    print(f"written: {display_path(path)}")


if __name__ == "__main__":
    main()

"""Does label-free adaptation help on a new site? Measured under leave-one-source-out.

The cheapest label-free adaptation for a stage-1 model: re-centre the new site's backbone
features on the training features' mean (the site mean from N unlabelled site images), then
apply the unchanged head. Prints, per held-out source, ROC AUC and sensitivity / specificity
at the frozen threshold before and after. Needs the LOSO bundles of a recipe
(``skinlesion generalise --recipe NAME``) and the feature cache (it is filled on first use).

    python tools/label_free_adaptation.py --recipe lite0-s1-idfh
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from _loso import SOURCES, require_loso_bundles


def _scores(head, policy, x: np.ndarray, y: np.ndarray) -> str:
    """ROC AUC and sensitivity / specificity at the frozen threshold of a head on features ``x``."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(policy.calibrate(head.predict(x, verbose=0).ravel()))
    sens = ((p >= policy.threshold) & (y == 1)).sum() / (y == 1).sum()
    spec = ((p < policy.threshold) & (y == 0)).sum() / (y == 0).sum()
    return f"AUC {roc_auc_score(y, p):.3f}, sens {sens:.2f}, spec {spec:.2f}"


def _features(extractor, name: str, weights_tag: str, frame: pd.DataFrame) -> np.ndarray:
    from skinlesion import config
    from skinlesion.models.features import extract_features

    files = [config.source_root(s) / p for s, p in zip(frame["source"], frame["path"])]
    return extract_features(extractor, files, backbone=name, weights_tag=weights_tag, progress=False)[0][:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True, help="a stage-1 recipe run with `skinlesion generalise`")
    ap.add_argument("--sizes", default="100,500", help="unlabelled site images used for the site mean")
    ap.add_argument("--seed", type=int, default=0, help="seed of the site-image and training-image samples")
    args = ap.parse_args()
    require_loso_bundles([args.recipe], Path(__file__).name)

    # TensorFlow loads with these, after the checks above.
    from skinlesion import config
    from skinlesion.bundle.format import load
    from skinlesion.evaluation.generalise import head_model
    from skinlesion.models import backbones

    for held in SOURCES:
        b = load(config.models_dir() / "loso" / f"loso-{args.recipe}-{held}")
        name, size, cfg = str(b.meta.backbone), int(b.meta.input_size or 224), b.meta.training.config
        if b.meta.stage != "head" or cfg.get("colour_constancy") or cfg.get("lesion_crop") or b.meta.decision is None:
            raise SystemExit("this check is written for stage-1 bundles without colour constancy or a lesion crop")
        extractor = backbones.build_feature_extractor(name, "imagenet", size)
        table = pd.read_csv(b.path / "splits.csv")
        test = table[(table["source"] == held) & (table["split"] == "test")]
        x_site = _features(extractor, name, str(b.meta.weights), test)
        x_train = _features(extractor, name, str(b.meta.weights),
                            table[table["split"] == "train"].sample(3000, random_state=args.seed))
        head = head_model(b)
        y = test["label"].to_numpy()
        print(f"{held}: no adaptation: {_scores(head, b.meta.decision, x_site, y)}")
        rng = np.random.default_rng(args.seed)
        for n in (int(v) for v in args.sizes.split(",")):
            idx = rng.choice(len(x_site), min(n, len(x_site)), replace=False)
            shifted = x_site - x_site[idx].mean(0) + x_train.mean(0)
            print(f"{held}: re-centred on {n} unlabelled site images: {_scores(head, b.meta.decision, shifted, y)}")


if __name__ == "__main__":
    main()

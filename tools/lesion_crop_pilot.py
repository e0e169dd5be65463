"""Does cropping every image to its lesion make a head transfer to a collection it never saw? A LOSO pilot.

The collections frame lesions differently: the Kaggle set's tight 300 x 300 crops, HAM10000's
lesion-centred 600 x 450 fields, ISIC 2017's fields of every size (a small nevus in a wide field, a
large melanoma filling it). The framing views (zi/zo) teach a head that the scale varies; this pilot
instead takes the scale away. Each image (the model's 224 x 224 input, as ``iter_image_batches``
gives it) is cropped to a square about its lesion, found by the classical rule of
``skinlesion.models.lesion`` (fixed before looking at any result). The crop is resized back to 224 and read by Lite0 (top features, global
average pool), flipped as well (``lc``, ``lc_fh``).

It first checks the rule against HAM10000's lesion boxes (boxes only, no labels): IoU of the found
box with the true one, and the share of the true box the crop keeps. Then, for each held-out source,
it fits the LOSO heads of ``tools/multiscale_pilot.py`` (logistic regression, class-balanced, C
picked on the in-source validation AUC) on the plain views (id, fh; their features from that
pilot's cache), on the lesion crops, and on both, and prints the held-out ROC AUC of each and of
the mean of the plain and crop heads, with DeLong's paired test against the plain head.

    python tools/lesion_crop_pilot.py            # extracts data/cache/lesion_crop_pilot.npz once
    python tools/lesion_crop_pilot.py --check-boxes 0 --predictions data/cache/lesion_crop_head.csv \
        --plain-predictions data/cache/lesion_plain_head.csv
    python tools/loso_ensemble_pilot.py --pairs ens-lite0-s1-ft60-idfhzio-linear-tta \
        data/cache/lesion_plain_head.csv data/cache/lesion_crop_head.csv

``--from-original`` (with its own ``--crop-cache``) cuts each crop from the decoded file instead, the box
still found on the 224-px input: rule 2 of ``skinlesion.models.lesion``, which the first run (rule 1,
sliced from the 224-px input) led to.

    python tools/lesion_crop_pilot.py --from-original --check-boxes 0 \
        --crop-cache data/cache/lesion_crop_orig_pilot.npz --predictions data/cache/lesion_crop_orig_head.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import multiscale_pilot as msp

CROP_VIEWS = ("lc", "lc_fh")


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (top, bottom, left, right) boxes."""
    h = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[2], b[2]))
    inter = h * w
    union = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / union if union > 0 else 0.0


def _rule1_crop(image: np.ndarray, crop: tuple[int, int, int]) -> np.ndarray:
    """Rule 1, as the pilot first ran it: the square sliced from the 224-px input, then resized back."""
    from PIL import Image

    size = image.shape[0]
    y0, x0, side = crop
    if side == size:
        return image
    cut = Image.fromarray(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]))
    return np.asarray(cut.resize((size, size), Image.Resampling.BILINEAR))


def extract(cache: Path, files: np.ndarray) -> None:
    """Top features of ``CROP_VIEWS`` for ``files`` and each crop's (top, left, side) into ``cache``."""
    from skinlesion.models import backbones
    from skinlesion.models.features import iter_image_batches
    from skinlesion.models.lesion import crop_of

    model = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")
    size = int(model.input_shape[1])
    out = np.zeros((len(files), len(CROP_VIEWS), int(model.output_shape[-1])), np.float32)
    crops = np.zeros((len(files), 3), np.int32)
    t0 = time.perf_counter()
    for batch, idx, _keys, errors in iter_image_batches(list(files), size):
        if errors:
            raise SystemExit(f"unreadable images: {errors}")
        where = [crop_of(img) for img in batch]
        cropped = np.stack([_rule1_crop(img, c) for img, c in zip(batch, where)])
        crops[idx] = where
        out[idx, 0] = model.predict_on_batch(cropped)
        out[idx, 1] = model.predict_on_batch(cropped[:, :, ::-1])
        if idx[0] % 2048 < len(idx):
            print(f"{idx[-1] + 1} / {len(files)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"lesion crops of {len(files)} images x {len(CROP_VIEWS)} views in {time.perf_counter() - t0:.0f} s",
          flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, files=files, features=out, crops=crops)


def _original_crop(path: str, size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One file's lesion crop cut from its decoded original (centre square, as ``to_model_array``) instead
    of from the ``size`` input: the box is found on the ``size`` input as served, then mapped back."""
    from PIL import Image

    from skinlesion.data.intake import read_image, square_crop, to_model_array
    from skinlesion.models.lesion import crop_of

    img = read_image(path)
    small = to_model_array(img, size)
    y0, x0, side = crop_of(small)
    square = square_crop(img)
    s = square.size[0] / size
    # Pillow's box resize: the same square, resampled from the original's pixels (antialiased when it shrinks).
    cut = square.resize((size, size), Image.Resampling.BILINEAR, box=(x0 * s, y0 * s, (x0 + side) * s, (y0 + side) * s))
    return np.asarray(cut), (y0, x0, side)


def extract_original(cache: Path, files: np.ndarray, batch: int = 64) -> None:
    """As :func:`extract`, with each crop cut from the decoded original (``_original_crop``)."""
    from concurrent.futures import ThreadPoolExecutor

    from skinlesion.models import backbones

    model = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")
    size = int(model.input_shape[1])
    out = np.zeros((len(files), len(CROP_VIEWS), int(model.output_shape[-1])), np.float32)
    crops = np.zeros((len(files), 3), np.int32)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(files), batch):
            done = list(pool.map(lambda f: _original_crop(str(f), size), files[start:start + batch]))
            cropped = np.stack([d[0] for d in done])
            crops[start:start + len(done)] = [d[1] for d in done]
            out[start:start + len(done), 0] = model.predict_on_batch(cropped)
            out[start:start + len(done), 1] = model.predict_on_batch(cropped[:, :, ::-1])
            if start % 2048 == 0:
                print(f"{start + len(done)} / {len(files)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"lesion crops from the originals of {len(files)} images x {len(CROP_VIEWS)} views in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, files=files, features=out, crops=crops)


def check_boxes(n: int, seed: int = 0) -> None:
    """The rule's boxes against HAM10000's on ``n`` random images (boxes only): IoU and kept share."""
    import pandas as pd
    from PIL import Image

    from skinlesion.config import source_root
    from skinlesion.evaluation.localisation import box_in_model_frame
    from skinlesion.models.features import iter_image_batches
    from skinlesion.models.lesion import crop_square, lesion_box

    root = source_root("ham10000")
    meta = pd.read_csv(root / "HAM10000_metadata_ext.csv").sample(n, random_state=seed)
    files = [str(root / "images" / f"{i}.jpg") for i in meta["image_id"]]
    ious, kept, found = [], [], 0
    for batch, idx, _keys, _errors in iter_image_batches(files, 224):
        for img, i in zip(batch, idx):
            row = meta.iloc[i]
            with Image.open(files[i]) as im:
                wh = im.size
            truth = box_in_model_frame((row["top"], row["bottom"], row["left"], row["right"]), wh, 224)
            box = lesion_box(img)
            found += box is not None
            ious.append(iou(tuple(float(v) for v in box), truth) if box is not None else 0.0)
            y0, x0, side = crop_square(box, 224)
            kept.append(_kept(truth, (y0, y0 + side, x0, x0 + side)))
    ious_a, kept_a = np.array(ious), np.array(kept)
    n = len(ious)  # the images read
    print(f"HAM10000 boxes, {n} images: lesion found in {found / n:.1%}; IoU with the true box median "
          f"{np.median(ious_a):.3f}, >= 0.5 for {np.mean(ious_a >= 0.5):.1%}; share of the true box inside "
          f"the crop median {np.median(kept_a):.3f}, >= 0.9 for {np.mean(kept_a >= 0.9):.1%}", flush=True)


def _kept(truth: tuple[float, float, float, float], crop: tuple[float, float, float, float]) -> float:
    """Share of the ``truth`` box's area inside ``crop`` (both (top, bottom, left, right))."""
    area = (truth[1] - truth[0]) * (truth[3] - truth[2])
    h = max(0.0, min(truth[1], crop[1]) - max(truth[0], crop[0]))
    w = max(0.0, min(truth[3], crop[3]) - max(truth[2], crop[2]))
    return h * w / area if area > 0 else 0.0


def fit(plain_cache: Path, crop_cache: Path, predictions: Path | None = None,
        plain_predictions: Path | None = None) -> None:
    """Per held-out source: held-out AUC of the plain, crop, both-views and mean-of-two heads; with
    ``predictions`` (``plain_predictions``), the crop (plain) head's held-out outputs are written there in
    the columns of a LOSO report's ``predictions.csv`` (for ``tools/loso_ensemble_pilot.py``; the plain
    head is the control: any second member moves an ensemble's AUC, so a gain is the crop's only where
    the crop head beats the plain one as a partner)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from skinlesion.metrics.stats import paired_auc_test
    from skinlesion.models.lesion import MIN_SIDE
    from skinlesion.training.train import sample_weights

    z, c = np.load(plain_cache), np.load(crop_cache)
    if not np.array_equal(z["files"], c["files"]):
        raise SystemExit(f"{crop_cache} was made for other files than {plain_cache}; delete it to extract again")
    feats = np.concatenate([z["features"][:, :, msp._columns(msp.FEATURE_SETS["top"])], c["features"]], axis=1)
    zoom = c["crops"][:, 2] / 224
    row = {str(f): i for i, f in enumerate(z["files"])}
    written: dict[str, list] = {"crop lc,lc_fh": [], "plain id,fh": []}
    for held, data, (tr, _va, te), (x_tr, x_va, x_te), (y_tr, y_va, y_te) in msp.fold_arrays(z["files"], feats):
        if held == msp.SOURCES[0]:  # once: every source's images are in the first fold's table
            for source, part in data.table.groupby("source"):
                s = zoom[[row[str(f)] for f in data.files(part) if str(f) in row]]
                print(f"{source:9s} crop side / frame: median {np.median(s):.2f}, whole frame kept for "
                      f"{np.mean(s == 1):.1%}, at the {MIN_SIDE} floor for {np.mean(s <= MIN_SIDE + 0.005):.1%}",
                      flush=True)
        probs = {}
        for name, views in (("plain id,fh", [0, 1]), ("crop lc,lc_fh", [2, 3]), ("both", [0, 1, 2, 3])):
            rows = msp.view_rows(x_tr[:, views])
            scaler = StandardScaler().fit(rows)
            views_va, views_te = ([scaler.transform(xx[:, v]) for v in views] for xx in (x_va, x_te))
            auc_va, cc, clf = msp.fit_pick_c(scaler.transform(rows), np.repeat(y_tr, len(views)),
                                             np.repeat(sample_weights(tr, "class"), len(views)), views_va, y_va)
            probs[name] = np.mean([clf.predict_proba(v)[:, 1] for v in views_te], axis=0)
            print(f"held out {held:9s} {name:14s} (C={cc:g}): held-out AUC {roc_auc_score(y_te, probs[name]):.4f}, "
                  f"in-source val AUC {auc_va:.4f}", flush=True)
        probs["mean of plain and crop"] = (probs["plain id,fh"] + probs["crop lc,lc_fh"]) / 2  # of probabilities
        for name, frames in written.items():
            frames.append(pd.DataFrame({"held_out": held, "source": te["source"].to_numpy(),
                                        "path": te["path"].to_numpy(), "y_true": y_te, "raw_probability": probs[name]}))
        for name in ("crop lc,lc_fh", "both", "mean of plain and crop"):
            t = paired_auc_test(y_te, probs[name], probs["plain id,fh"])
            print(f"held out {held:9s} {name:22s} AUC {t['auc_a']:.4f}, against plain {t['diff']:+.4f} "
                  f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}], p = {t['p_value']:.2f}"
                  f"{msp._per_diagnosis(y_te, probs[name], te['diagnosis'].astype(str).to_numpy())}", flush=True)
    for name, out in (("crop lc,lc_fh", predictions), ("plain id,fh", plain_predictions)):
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            pd.concat(written[name]).assign(error=np.nan).to_csv(out, index=False)
            print(f"the {name} head's held-out outputs: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("data/cache/multiscale_pilot.npz"),
                    help="the plain views' features (tools/multiscale_pilot.py makes it)")
    ap.add_argument("--crop-cache", type=Path, default=Path("data/cache/lesion_crop_pilot.npz"))
    ap.add_argument("--check-boxes", type=int, default=500, metavar="N",
                    help="HAM10000 images to check the lesion rule on first (0: skip)")
    ap.add_argument("--predictions", type=Path, metavar="CSV",
                    help="write the crop head's held-out outputs here (tools/loso_ensemble_pilot.py reads them)")
    ap.add_argument("--plain-predictions", type=Path, metavar="CSV",
                    help="write the plain (id, fh) head's held-out outputs here: the ensemble pilot's control")
    ap.add_argument("--from-original", action="store_true",
                    help="cut each crop from the decoded original instead of the 224 input (same box); give it "
                         "its own --crop-cache")
    args = ap.parse_args()
    if args.from_original and args.crop_cache == ap.get_default("crop_cache"):
        raise SystemExit("--from-original needs its own --crop-cache (the default one holds the 224-input crops)")
    if args.check_boxes:
        check_boxes(args.check_boxes)
    if not args.cache.exists():
        msp.extract(args.cache)
    if not args.crop_cache.exists():
        (extract_original if args.from_original else extract)(args.crop_cache, np.load(args.cache)["files"])
    fit(args.cache, args.crop_cache, args.predictions, args.plain_predictions)


if __name__ == "__main__":
    main()

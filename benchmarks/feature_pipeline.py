"""Benchmark: the stage-1 feature pipeline (decode + resize + model) vs raw ``model.predict``
on arrays already in memory, measured in the same run on the same images.

    python benchmarks/feature_pipeline.py [--data-dir DIR] [--n N] [--backbone efficientnet_lite0]

Prints images/s of both and their ratio (goal: pipeline >= 90 % of raw predict). Needs no trained
model (ImageNet backbone), but needs images: the Kaggle set by default (``skinlesion data download``).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import GET_DATA

from skinlesion import config  # light: no TensorFlow, so --help stays fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(config.source_root("kaggle")),
                    help="images to read, searched recursively (default: the Kaggle set, %(default)s)")
    ap.add_argument("--n", type=int, default=0, help="number of images (0 = all)")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="feature extractor (ImageNet weights)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per model call")
    args = ap.parse_args()

    from skinlesion.data.datasets import image_files  # light: no TensorFlow

    paths = image_files(args.data_dir)
    if args.n:
        paths = paths[: args.n]
    if not paths:
        raise SystemExit(f"feature_pipeline.py: no images under {args.data_dir}: {GET_DATA}.")

    # TensorFlow loads with these, after parsing and the data check: --help and those errors answer at once.
    from skinlesion.models.backbones import build_feature_extractor
    from skinlesion.models.features import extract_features, iter_image_batches

    model = build_feature_extractor(args.backbone, "imagenet")
    size = int(model.input_shape[1])
    print(f"{args.backbone} @ {size}px, {len(paths)} images, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")

    # Warm-up (graph tracing, weight conversion cache) outside the timed regions.
    warm = np.zeros((args.batch_size, size, size, 3), np.uint8)
    model.predict(warm, verbose=0)
    model.predict_on_batch(warm)

    t = time.perf_counter()
    arrays = np.concatenate([b for b, *_ in iter_image_batches(paths, size, args.batch_size)])
    decode_s = time.perf_counter() - t

    t = time.perf_counter()
    model.predict(arrays, batch_size=args.batch_size, verbose=0)
    raw_s = time.perf_counter() - t

    t = time.perf_counter()
    # weights_tag=None disables the feature cache, so every image is decoded and run.
    extract_features(model, paths, backbone=args.backbone, weights_tag=None, batch_size=args.batch_size, progress=False)
    pipe_s = time.perf_counter() - t

    n = len(paths)
    print(f"decode only (2 threads):         {n / decode_s:8.1f} img/s")
    print(f"raw model.predict on arrays:     {n / raw_s:8.1f} img/s   (baseline)")
    print(f"pipeline (decode + model):       {n / pipe_s:8.1f} img/s")
    print(f"pipeline / raw predict:          {raw_s / pipe_s:8.1%}   (goal >= 90 %)")


if __name__ == "__main__":
    main()

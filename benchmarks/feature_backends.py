"""Benchmark: stage-1 features by Keras vs by the in-memory TFLite twin (skinlesion.models.tflite_features),
on the same decoded images, in the same run, interleaved.

    python benchmarks/feature_backends.py [--data-dir DIR] [--n 512] [--rounds 3] [--backbone efficientnet_lite0]

Prints the conversion time, images/s of each backend (median over rounds), their ratio, the
largest feature difference, and how many backbone passes the conversion takes to repay. Needs no
trained model (ImageNet backbone), but needs images: the Kaggle set by default (``skinlesion data download``).
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
    ap.add_argument("--n", type=int, default=512, help="images per timed pass (the first N found)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed passes per backend (median printed)")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="feature extractor (ImageNet weights)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per model call")
    args = ap.parse_args()

    from skinlesion.data.datasets import image_files  # light: no TensorFlow

    paths = image_files(args.data_dir)[: args.n]
    if not paths:
        raise SystemExit(f"feature_backends.py: no images under {args.data_dir}: {GET_DATA}.")

    # TensorFlow loads with these, after parsing and the data check: --help and those errors answer at once.
    from skinlesion.models.backbones import build_feature_extractor
    from skinlesion.models.features import TFLITE_MIN_PASSES, iter_image_batches
    from skinlesion.models.tflite_features import TFLiteFeatureModel

    model = build_feature_extractor(args.backbone, "imagenet")
    size = int(model.input_shape[1])
    batches = [b for b, *_ in iter_image_batches(paths, size, args.batch_size)]
    n = sum(len(b) for b in batches)
    print(f"{args.backbone} @ {size}px, {n} images, batch {args.batch_size}, {config.cpu_threads()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")

    t = time.perf_counter()
    twin = TFLiteFeatureModel(model)
    convert_s = time.perf_counter() - t
    model.predict_on_batch(batches[0])  # warm-up outside the timed regions
    twin.predict_on_batch(batches[0])

    times: dict[str, list[float]] = {"keras": [], "tflite": []}
    diff = 0.0
    for _ in range(args.rounds):
        for name, run in (("keras", model.predict_on_batch), ("tflite", twin.predict_on_batch)):
            t = time.perf_counter()
            out = [np.asarray(run(b)) for b in batches]
            times[name].append(time.perf_counter() - t)
            if name == "keras":
                ref = out
            else:
                diff = max(diff, max(float(np.abs(a - b).max()) for a, b in zip(out, ref)))
    rate = {k: n / float(np.median(v)) for k, v in times.items()}
    saved_per_pass = 1 / rate["keras"] - 1 / rate["tflite"]
    print(f"conversion:  {convert_s:6.1f} s")
    print(f"keras:       {rate['keras']:6.1f} img/s")
    print(f"tflite:      {rate['tflite']:6.1f} img/s  ({rate['tflite'] / rate['keras']:.2f}x keras)")
    print(f"max |feature difference|: {diff:.2e} (feature max {max(float(np.abs(r).max()) for r in ref):.2f})")
    if saved_per_pass > 0:
        print(f"conversion repaid after {convert_s / saved_per_pass:,.0f} passes "
              f"(extract_features converts from {TFLITE_MIN_PASSES:,})")


if __name__ == "__main__":
    main()

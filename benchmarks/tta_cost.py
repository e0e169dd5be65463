"""What dihedral test-time augmentation costs: Predictor.predict with and without TTA.

TTA runs the model on the 8 dihedral views of the image (one batch of 8) and averages the
raw outputs, which makes the probability exactly invariant to rotating or mirroring the
image. Prints p50/p95 (ms) of one-image predictions both ways and their ratio, interleaved
round by round so that load from other jobs hits both alike. Needs a trained model bundle:
``--model``, else the default model (``make run`` trains it).

    .venv/bin/python benchmarks/tta_cost.py [--model models/<run>] [--runs 30]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _common import MODEL_HELP, NEEDS_MODEL, model_or_exit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=NEEDS_MODEL)
    ap.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    ap.add_argument("--runs", type=int, default=30, help="timed predictions per variant (interleaved)")
    args = ap.parse_args()
    model = model_or_exit(args.model)  # before the slow imports: a missing model is one line, at once

    from skinlesion import config
    from skinlesion.serving.inference import Predictor

    predictor = Predictor.from_bundle(model)
    found = sorted((config.shared_dataset() / "test" / "malignant").glob("*.jpg"))[:1]
    rng = np.random.default_rng(0)
    # The file's bytes, decoded in every call as when served (a lesion-crop member cuts its crop from the
    # decoded image, so a pre-decoded array would leave that out).
    image: bytes | np.ndarray = (found[0].read_bytes() if found
                                 else rng.integers(0, 256, (predictor.input_size,) * 2 + (3,), dtype=np.uint8))
    for tta in (False, True):  # warm-up (graph tracing) for both batch shapes
        predictor.predict(image, tta=tta)
    times: dict[bool, list[float]] = {False: [], True: []}
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        for tta in (False, True):
            t0 = time.perf_counter()
            predictor.predict(image, tta=tta)
            times[tta].append(1000 * (time.perf_counter() - t0))
    p = {k: (np.percentile(v, 50), np.percentile(v, 95)) for k, v in times.items()}
    print(f"model {predictor.name} ({predictor.input_size} px), {args.runs} runs, load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print(f"predict without TTA: p50 {p[False][0]:.1f} ms, p95 {p[False][1]:.1f} ms")
    print(f"predict with dihedral TTA (8 views): p50 {p[True][0]:.1f} ms, p95 {p[True][1]:.1f} ms "
          f"({p[True][0] / p[False][0]:.2f}x)")


if __name__ == "__main__":
    main()

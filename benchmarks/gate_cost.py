"""What the image-type gate adds to a prediction: Predictor.predict with and without it.

The gate is a linear layer on the pooled features the model computes anyway, so its cost is a
small matrix product per image. Prints p50/p95 (ms) of one-image predictions (as served: with
the bundle's own TTA setting) with the gate and with it switched off on the same Predictor,
interleaved round by round so that load from other jobs hits both alike, and the ratio. Needs a
trained model bundle with an image-type gate: ``--model``, else the default model (``make run``
trains it, gate included).

    .venv/bin/python benchmarks/gate_cost.py [--model models/<run>] [--runs 30]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _common import MODEL_HELP, NEEDS_MODEL, model_or_exit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=f"{NEEDS_MODEL} The bundle must have an image-type gate.")
    ap.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    ap.add_argument("--runs", type=int, default=30, help="timed predictions per variant (interleaved)")
    args = ap.parse_args()
    model = model_or_exit(args.model)  # before the slow imports: a missing model is one line, at once

    from skinlesion import config
    from skinlesion.data.intake import load_for_model
    from skinlesion.serving.inference import Predictor

    predictor = Predictor.from_bundle(model)
    if not predictor.has_gate:
        raise SystemExit(f"{predictor.name} has no image-type gate (skinlesion gate fit BUNDLE)")
    gates = [m.gate for m in predictor.members]
    found = sorted((config.shared_dataset() / "test" / "malignant").glob("*.jpg"))[:1]
    rng = np.random.default_rng(0)
    image = (load_for_model(found[0].read_bytes(), predictor.input_size) if found
             else rng.integers(0, 256, (predictor.input_size,) * 2 + (3,), dtype=np.uint8))

    def timed(with_gate: bool) -> float:
        for m, g in zip(predictor.members, gates):
            m.gate = g if with_gate else None
        t0 = time.perf_counter()
        predictor.predict(image)
        return 1000 * (time.perf_counter() - t0)

    timed(True), timed(False)   # warm-up (graph tracing)
    times: dict[bool, list[float]] = {True: [], False: []}
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        for g in (False, True):
            times[g].append(timed(g))
    # The gate's own arithmetic, isolated: classify one feature vector.
    feats = np.zeros((1, gates[0].mean.size))
    t0 = time.perf_counter()
    for _ in range(1000):
        gates[0].classify(feats)
    gate_only = (time.perf_counter() - t0)  # s per 1000 calls = ms per call
    p = {k: (np.percentile(v, 50), np.percentile(v, 95)) for k, v in times.items()}
    print(f"model {predictor.name} ({predictor.input_size} px, TTA {predictor.default_tta}), {args.runs} runs, "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"predict without gate: p50 {p[False][0]:.1f} ms, p95 {p[False][1]:.1f} ms")
    print(f"predict with gate:    p50 {p[True][0]:.1f} ms, p95 {p[True][1]:.1f} ms "
          f"({p[True][0] / p[False][0]:.3f}x)")
    print(f"gate alone (classify one feature vector): {gate_only:.3f} ms "
          f"= {100 * gate_only / p[False][0]:.2f} % of predict p50")


if __name__ == "__main__":
    main()

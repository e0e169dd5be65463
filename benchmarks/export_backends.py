"""Keras vs TFLite (float and dynamic-range) serving: one-image latency and peak memory, side by side.

Each backend runs in its own Python process, so the peak memory is that backend's alone (the
TFLite processes never import TensorFlow): it loads ``Predictor.from_bundle(model, backend=...)``,
predicts one real image ``--runs`` times as served (the bundle's TTA), and reports load time,
p50/p95 latency and its peak RSS. The processes run one after the other, ``--rounds`` times in
turn (keras, tflite, tflite-dynamic, keras, ...), and the median over rounds is printed with the
ratio against Keras from the same run. Needs the exports
(``skinlesion export BUNDLE --format tflite [--quantize dynamic]``); missing ones are skipped. Needs a
trained model bundle: ``--model``, else the default model (``make run`` trains it).

    .venv/bin/python benchmarks/export_backends.py [--model models/<run>] [--runs 30] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import MODEL_HELP, NEEDS_MODEL, model_or_exit

BACKENDS = ("keras", "tflite", "tflite-dynamic")


def child(model: str, backend: str, runs: int) -> None:
    """Measure one backend in this process and print one JSON line."""
    from skinlesion import config
    from skinlesion.data.intake import load_for_model
    from skinlesion.serving.inference import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.from_bundle(model, backend=backend)
    found = sorted((config.source_root("kaggle") / "test" / "malignant").glob("*.jpg"))[:1]
    image = (load_for_model(found[0].read_bytes(), predictor.input_size) if found
             else np.random.default_rng(0).integers(0, 256, (predictor.input_size,) * 2 + (3,), dtype=np.uint8))
    predictor.predict(image)  # first call: graph tracing / tensor allocation
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        predictor.predict(image)
        times.append(1000 * (time.perf_counter() - t))
    print(json.dumps({
        "backend": backend, "load_s": load_s, "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)), "tta": predictor.default_tta,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=NEEDS_MODEL)
    ap.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    ap.add_argument("--runs", type=int, default=30, help="timed predictions per backend process")
    ap.add_argument("--rounds", type=int, default=2,
                    help="times each backend's process runs, in turn (the median over rounds is printed)")
    ap.add_argument("--child", choices=BACKENDS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = str(model_or_exit(args.model))  # a missing model is one line, before any process starts

    from skinlesion.config import display_path
    from skinlesion.serving.backends import MANIFEST_FILE, export_folder

    if args.child:
        child(model, args.child, args.runs)
        return
    backends = [b for b in BACKENDS if b == "keras" or (export_folder(model, b) / MANIFEST_FILE).is_file()]
    for b in set(BACKENDS) - set(backends):
        print(f"skipped {b}: no export (skinlesion export {model} --format tflite"
              f"{' --quantize dynamic' if b.endswith('dynamic') else ''})")
    load = os.getloadavg()[0]
    results: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(args.rounds):
        for b in backends:
            out = subprocess.run([sys.executable, __file__, "--model", model, "--child", b, "--runs", str(args.runs)],
                                 capture_output=True, text=True, check=True)
            results[b].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {b: {k: float(np.median([r[k] for r in rs])) for k in ("load_s", "p50_ms", "p95_ms", "peak_rss_mb")}
           for b, rs in results.items()}
    tta = results["keras"][0]["tta"]
    print(f"model {display_path(model)}, one image as served ({'dihedral TTA, batch of 8' if tta else 'no TTA'}), "
          f"{args.runs} runs x {args.rounds} rounds per backend, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'backend':16s} {'p50 ms':>8s} {'p95 ms':>8s} {'x keras':>8s} {'peak MB':>8s} {'x keras':>8s} "
          f"{'load s':>7s}  TensorFlow imported")
    k = med["keras"]
    for b in backends:
        m = med[b]
        print(f"{b:16s} {m['p50_ms']:8.1f} {m['p95_ms']:8.1f} {m['p50_ms'] / k['p50_ms']:8.2f} "
              f"{m['peak_rss_mb']:8.0f} {m['peak_rss_mb'] / k['peak_rss_mb']:8.2f} {m['load_s']:7.1f}  "
              f"{results[b][0]['tensorflow_imported']}")


if __name__ == "__main__":
    main()

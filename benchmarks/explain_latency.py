"""Latency of predict + Grad-CAM for one image with EfficientNet-Lite0 (ImageNet weights, 224).

Prints p50/p95 (ms) for: predict only (``predict_on_batch``, what the Predictor runs, and an
eager ``model(x)`` call for comparison), the compiled Grad-CAM and Grad-CAM++ of
``skinlesion.explain.gradcam.predict_and_explain`` (probability and map from one forward pass), and
the tf-keras-vis reference Grad-CAM (fewer runs: it is slow). Ratios are to predict_on_batch
measured in the same run. The predict-only and compiled timings are interleaved round by round
so that load from other jobs on a shared machine hits them alike; the load average is printed
before and after. Needs no trained model (ImageNet backbone, untrained head) and no data (a Kaggle
test image when one is found, else noise).

    .venv/bin/python benchmarks/explain_latency.py [--runs 30] [--reference-runs 5] [--image X]

Goal (interactive app): p50 <= 150 ms for predict + Grad-CAM on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

GOAL_MS = 150.0


def _image(path: str | None, size: int) -> tuple[np.ndarray, str]:
    """One uint8 RGB image: ``path``, else a real test image if a dataset is found, else noise."""
    from skinlesion import config
    from skinlesion.data.intake import load_for_model

    if path is None:
        for root in (config.resolve_data_dir(), config.shared_dataset()):
            found = sorted((Path(root) / "test" / "malignant").glob("*.jpg"))[:1]
            if found:
                path = str(found[0])
                break
    if path is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "random noise"
    return load_for_model(path, size), path


def _time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - start)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per fast case")
    parser.add_argument("--reference-runs", type=int, default=5, help="timed tf-keras-vis runs")
    parser.add_argument("--image", default=None, help="image file (default: a test image)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.reference_runs < 1:
        parser.error("--runs and --reference-runs must be >= 1")

    from skinlesion.explain import gradcam as explain
    from skinlesion.models.backbones import build_classifier, get_spec

    spec = get_spec("efficientnet_lite0")
    layer = spec.last_conv_layer
    print(f"CPUs: {os.cpu_count()}; {_load()} at start")
    start = time.perf_counter()
    model, _ = build_classifier("efficientnet_lite0", weights="imagenet")
    print(f"built efficientnet_lite0 classifier (ImageNet backbone, untrained head) at "
          f"{spec.input_size}x{spec.input_size} in {time.perf_counter() - start:.1f} s")
    image, source = _image(args.image, spec.input_size)
    print(f"image: {source}")
    batch = image[None].astype(np.float32)

    cases: dict[str, Callable[[], object]] = {
        "predict only (predict_on_batch)": lambda: model.predict_on_batch(batch),
        "predict only (eager model(x))": lambda: model(batch, training=False),
        "fast gradcam (+ probability)": lambda: explain.predict_and_explain(
            model, image, "gradcam", layer, "predicted"
        ),
        "fast gradcam++ (+ probability)": lambda: explain.predict_and_explain(
            model, image, "gradcam++", layer, "predicted"
        ),
    }
    first = {name: _time_ms(fn) for name, fn in cases.items()}  # traces / builds graphs
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, fn in cases.items():
            timings[name].append(_time_ms(fn))

    reference = "tf-keras-vis gradcam (reference)"
    explain.compute_heatmap(model, image, "gradcam", layer_name=layer, reference=True)  # imports
    timings[reference] = [
        _time_ms(
            lambda: explain.compute_heatmap(
                model, image, "gradcam", layer_name=layer, target="predicted", reference=True
            )
        )
        for _ in range(args.reference_runs)
    ]
    first[reference] = float("nan")

    base = float(np.median(timings["predict only (predict_on_batch)"]))
    print(f"\n{'case':<36}{'runs':>5}{'first':>9}{'p50 ms':>9}{'p95 ms':>9}{'p50 / predict':>15}")
    for name, values in timings.items():
        p50, p95 = np.percentile(values, [50, 95])
        print(f"{name:<36}{len(values):>5}{first[name]:>9.0f}{p50:>9.1f}{p95:>9.1f}"
              f"{p50 / base:>14.2f}x")

    fast = float(np.median(timings["fast gradcam (+ probability)"]))
    verdict = "meets" if fast <= GOAL_MS else "MISSES"
    print(f"\nfast predict + Grad-CAM p50 {fast:.1f} ms {verdict} the {GOAL_MS:.0f} ms goal "
          "('first' = first call, including tracing the graph).")
    fast_map = explain.compute_heatmap(model, image, "gradcam", layer_name=layer)
    ref_map = explain.compute_heatmap(model, image, "gradcam", layer_name=layer, reference=True)
    print(f"fast vs tf-keras-vis Grad-CAM on this image: max |diff| "
          f"{float(np.abs(fast_map - ref_map).max()):.2e}")
    print(f"{_load()} at end")


if __name__ == "__main__":
    main()

"""Is the fine-tuning input pipeline fast enough one batch at a time?

Fine-tuning augments one batch at a time (``training.train.augmented_batches``) so that its
stateful random draws come in a fixed order and a training run is reproducible. This prints the
throughput of that pipeline alone and with parallel calls, then of fine-tuning epochs fed by each
(Lite0, the default fine-tuned member's recipe: top 60 layers, BatchNorm frozen; random 224 px
images), interleaved, so the cost of reproducibility reads as a ratio measured in the same run.
Needs neither a trained model nor data: random images, random weights.

    .venv/bin/python benchmarks/augment_pipeline.py [--n 512] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _throughput(ds, n: int) -> float:
    for _ in ds.take(1):  # tracing and the first shuffle buffer, not timed
        pass
    t0 = time.perf_counter()
    for _ in ds:
        pass
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512, help="images in the pipeline runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed epochs per variant")
    args = ap.parse_args()

    # TensorFlow loads with these, after parsing: --help and argument errors answer at once.
    import keras
    import tensorflow as tf

    from skinlesion.models import backbones
    from skinlesion.training.train import DEFAULT_MEMBERS, TrainConfig, augmented_batches

    recipe = next(r for r in DEFAULT_MEMBERS.values() if r.get("fine_tune"))
    cfg = TrainConfig(**recipe)
    size = backbones.get_spec(cfg.backbone).input_size
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (args.n, size, size, 3), dtype=np.uint8)
    y = (rng.random(args.n) < 0.5).astype("float32")
    w = np.ones(args.n, "float32")
    load = os.getloadavg()[0]
    seq = _throughput(augmented_batches(X, y, w, cfg), args.n)
    par = _throughput(augmented_batches(X, y, w, cfg, parallel_calls=tf.data.AUTOTUNE), args.n)

    # Weights do not change the step time; random ones keep the benchmark offline-safe.
    full, _ = backbones.build_classifier(cfg.backbone, None, size, head_units=cfg.head_units)
    backbones.freeze_for_fine_tuning(full, cfg.fine_tune)
    full.compile(optimizer=keras.optimizers.Adam(cfg.fine_tune_lr), loss="binary_crossentropy")
    fits: dict[str, list[float]] = {"one batch at a time": [], "parallel calls": []}
    full.fit(augmented_batches(X[:64], y[:64], w[:64], cfg), epochs=1, verbose=0, shuffle=False)  # tracing, not timed
    for _ in range(args.rounds):  # interleaved, so load from other jobs hits both alike
        for name, calls in (("one batch at a time", None), ("parallel calls", tf.data.AUTOTUNE)):
            ds = augmented_batches(X, y, w, cfg, parallel_calls=calls)
            t0 = time.perf_counter()
            full.fit(ds, epochs=1, verbose=0, shuffle=False)
            fits[name].append(args.n / (time.perf_counter() - t0))
    fit = {k: float(np.median(v)) for k, v in fits.items()}
    print(f"{args.n} random {size} px images, augment {','.join(cfg.augment)}, batch {cfg.batch_size // 2}, "
          f"fine-tuning the top {cfg.fine_tune} layers, {args.rounds} rounds, load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print(f"augmentation alone: one batch at a time {seq:.0f} img/s, parallel calls {par:.0f} img/s "
          f"({par / seq:.2f}x)")
    a, b = fit["one batch at a time"], fit["parallel calls"]
    print(f"fine-tuning epoch (median): one batch at a time {a:.1f} img/s, parallel calls {b:.1f} img/s "
          f"(reproducible input costs {100 * (1 - a / b):+.1f} % of throughput)")

if __name__ == "__main__":
    main()

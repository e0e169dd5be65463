"""One place that seeds every random number generator the project uses."""
from __future__ import annotations

import os
import random

import numpy as np

DEFAULT_SEED = 42


def set_seeds(seed: int = DEFAULT_SEED, *, deterministic_ops: bool = False) -> int:
    """Seed Python, NumPy and TensorFlow/Keras; return the seed.

    ``deterministic_ops`` also asks TensorFlow for deterministic kernels (slower; use it in
    tests that compare numbers, not in training runs).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    import keras  # imported late: seeding numpy alone must not pay TensorFlow's start-up
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    return seed

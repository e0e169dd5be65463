"""TensorFlow's Python logger raised to a level for a block, then put back."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_tensorflow(level: int = logging.WARNING) -> Iterator[None]:
    """Within the block, TensorFlow's logger drops records below ``level``; its previous level
    comes back afterwards, also when the block raises."""
    import tensorflow as tf

    logger = tf.get_logger()
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)

import random

import numpy as np
import pytest

from skinlesion.seeds import set_seeds


def test_same_seed_same_numbers():
    import keras

    set_seeds(7)
    a = (random.random(), np.random.rand(), float(keras.random.uniform((1,))[0]))
    set_seeds(7)
    b = (random.random(), np.random.rand(), float(keras.random.uniform((1,))[0]))
    assert a == b


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_seed_rejected(bad):
    with pytest.raises(ValueError):
        set_seeds(bad)

import numpy as np
import pytest

from skinlesion.models.ood import OODDetector, fit_ood


def test_far_points_flagged_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(500, 16)), rng.normal(size=(200, 16))
    det = fit_ood(train, val, quantile=0.99)
    assert det.is_ood(val).mean() <= 0.02
    assert det.is_ood(rng.normal(loc=6.0, size=(20, 16))).all()
    det.save(tmp_path / "ood.npz")
    again = OODDetector.load(tmp_path / "ood.npz")
    np.testing.assert_allclose(again.distance(val), det.distance(val))


def test_too_few_samples():
    with pytest.raises(ValueError, match="at least 10"):
        fit_ood(np.zeros((3, 4)), np.zeros((3, 4)))

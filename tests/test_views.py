"""Dihedral, framing, degradation, aperture and colour views of image batches (training augmentation and TTA)."""
from __future__ import annotations

import numpy as np

from skinlesion.models.features import (
    ALL_VIEWS,
    APERTURE_VIEWS,
    COLOUR_VIEWS,
    DEGRADE_VIEWS,
    FRAMING_VIEWS,
    VIEWS,
    ZOOM_OUT_FILL,
    apply_view,
)


def _batch(n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_dihedral_views_are_the_8_distinct_symmetries():
    b = _batch()
    outs = {v: apply_view(b, v) for v in VIEWS}
    assert np.array_equal(outs["id"], b)
    assert len({o.tobytes() for o in outs.values()}) == 8
    assert np.array_equal(apply_view(apply_view(b, "r90"), "r270"), b)


def test_framing_views_keep_shape_and_frame_the_lesion():
    b = _batch()
    assert set(ALL_VIEWS) == set(VIEWS) | set(FRAMING_VIEWS) | set(DEGRADE_VIEWS) | set(APERTURE_VIEWS) | set(
        COLOUR_VIEWS)
    zo = apply_view(b, "zo")
    assert zo.shape == b.shape and zo.dtype == np.uint8
    assert (zo[:, 0, :, :] == ZOOM_OUT_FILL).all() and (zo[:, :, -1, :] == ZOOM_OUT_FILL).all()
    # the 30 % zoom-out leaves a wider border than the 15 % one
    border = {v: int((apply_view(b, v)[0, 16, :, 0] == ZOOM_OUT_FILL).argmin()) for v in ("zo", "zo30")}
    assert 0 < border["zo"] < border["zo30"]
    flat = np.full((2, 32, 32, 3), 120, np.uint8)
    assert np.array_equal(apply_view(flat, "zi"), flat)
    assert apply_view(b[:0], "zi").shape == (0, 32, 32, 3)


def test_degradation_views_lose_detail_but_keep_the_picture():
    """``ds`` and ``wp`` keep shape and dtype, leave a flat image (almost) flat, are deterministic, and blur noise."""
    b = _batch(2, 64)
    flat = np.full((1, 64, 64, 3), 120, np.uint8)
    for view in DEGRADE_VIEWS:
        out = apply_view(b, view)
        assert out.shape == b.shape and out.dtype == np.uint8
        assert np.array_equal(out, apply_view(b, view))
        assert np.abs(apply_view(flat, view).astype(int) - 120).max() <= 2
        # white noise has all its energy in fine detail, which both views remove most of
        assert out.astype(float).std() < 0.8 * b.astype(float).std()
        assert apply_view(b[:0], view).shape == (0, 64, 64, 3)


def test_aperture_view_darkens_the_corners_and_keeps_the_centre():
    """``ap``: corners become the dark fill, the centre is untouched, a soft edge in between; shape kept."""
    b = _batch(2, 64)
    out = apply_view(b, "ap")
    assert out.shape == b.shape and out.dtype == np.uint8
    assert (out[:, 0, 0] == ZOOM_OUT_FILL).all() and (out[:, -1, -1] == ZOOM_OUT_FILL).all()
    assert np.array_equal(out[:, 16:48, 16:48], b[:, 16:48, 16:48])
    white = np.full((1, 64, 64, 3), 255, np.uint8)
    edge = apply_view(white, "ap")[0, 32, :, 0]  # a row through the centre: fill, soft ramp, image
    assert edge[0] == ZOOM_OUT_FILL and edge[32] == 255 and (edge[1:4] > ZOOM_OUT_FILL).any()
    assert apply_view(b[:0], "ap").shape == (0, 64, 64, 3)


def test_extract_features_computes_only_missing_views(tmp_path):
    """A run that adds views reuses the cached ones: only the missing (image, view) pairs reach the model."""
    from PIL import Image

    from skinlesion.models.features import extract_features

    files = []
    for i in range(5):
        f = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(f)
        files.append(f)

    class Model:
        input_shape = (None, 32, 32, 3)
        output_shape = (None, 3)
        seen = 0

        def predict_on_batch(self, x):
            Model.seen += len(x)
            return x.mean(axis=(1, 2)).astype(np.float32)

    m = Model()
    a, ok, _ = extract_features(m, files, backbone="fake", weights_tag="t", views=("id",), cache_root=tmp_path / "c",
                                progress=False)
    assert ok.all() and Model.seen == 5
    b, ok, _ = extract_features(m, files, backbone="fake", weights_tag="t", views=("id", "r90", "zo"),
                                cache_root=tmp_path / "c", progress=False)
    assert ok.all() and Model.seen == 5 + 10
    assert np.array_equal(a[:, 0], b[:, 0])


def test_colour_views_shift_the_white_balance_one_way_each():
    flat = np.full((2, 8, 8, 3), 100, np.uint8)
    warm, cool = apply_view(flat, "cw"), apply_view(flat, "cc")
    assert (warm[..., 0] == 110).all() and (warm[..., 1] == 100).all() and (warm[..., 2] == 90).all()
    assert (cool[..., 0] == 90).all() and (cool[..., 2] == 110).all()
    bright = np.full((1, 4, 4, 3), 250, np.uint8)
    assert apply_view(bright, "cw").max() == 255  # clipped, not wrapped
    assert apply_view(flat[:0], "cc").shape == (0, 8, 8, 3)

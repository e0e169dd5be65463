"""Tests for skinlesion.data.intake: every way in gives the same pixels or the same refusal."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from skinlesion.data import intake
from skinlesion.data.intake import (
    ACCEPTED_FORMATS,
    MAX_BYTES,
    ImageRejected,
    image_fingerprint,
    load_for_model,
    read_image,
    sniff_format,
    square_crop,
    to_model_array,
)

from hostile import (
    EXIF_MARKER_SIDE,
    EXIF_STORED_SIZE,
    HOSTILE_CASES,
    VALID_CASES,
    Case,
    animated_gif,
    animated_png,
    animated_webp,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    gray16_png,
    huge_bytes,
    jpeg_only_bytes,
    jpeg_zip_polyglot,
    mpo_jpeg,
    multipage_tiff,
    pattern_rgb,
    png_decompression_bomb,
    real_dermoscopic_jpeg,
    rgba_png,
    valid_jpeg,
)

TESTS_DIR = Path(__file__).resolve().parent
SIZE = 48


def _ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


def _assert_helpful(exc: ImageRejected) -> None:
    message = exc.message
    assert isinstance(message, str) and str(exc) == message
    assert 30 < len(message) < 400, message
    assert message.endswith("."), message
    for jargon in ("Traceback", "Errno", "PIL", "cannot identify", " 0x"):
        assert jargon not in message, message


# ------------------------------------------------------------------- the generated corpus


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=_ids(HOSTILE_CASES))
def test_hostile_bytes_are_refused_with_status_and_message(case: Case) -> None:
    with pytest.raises(ImageRejected) as info:
        load_for_model(case.data, SIZE)
    assert info.value.status == case.status, info.value.message
    assert isinstance(info.value, ValueError)
    _assert_helpful(info.value)


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=_ids(HOSTILE_CASES))
def test_hostile_files_are_refused_the_same_way_from_a_path(case: Case, tmp_path: Path) -> None:
    path = tmp_path / case.name  # the (often misleading) name does not matter
    path.write_bytes(case.data)
    with pytest.raises(ImageRejected) as info:
        read_image(path)
    assert info.value.status == case.status


@pytest.mark.parametrize("case", VALID_CASES, ids=_ids(VALID_CASES))
def test_valid_cases_give_rgb_uint8_of_requested_size(case: Case) -> None:
    assert case.status == 200
    img = read_image(case.data)
    assert img.mode == "RGB"
    array = load_for_model(case.data, SIZE)
    assert array.shape == (SIZE, SIZE, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous and array.flags.writeable


@pytest.mark.parametrize("case", VALID_CASES, ids=_ids(VALID_CASES))
def test_bytes_path_and_pil_sources_agree(case: Case, tmp_path: Path) -> None:
    path = tmp_path / case.name
    path.write_bytes(case.data)
    from_bytes = load_for_model(case.data, SIZE)
    np.testing.assert_array_equal(load_for_model(path, SIZE), from_bytes)
    np.testing.assert_array_equal(load_for_model(str(path), SIZE), from_bytes)
    np.testing.assert_array_equal(load_for_model(bytearray(case.data), SIZE), from_bytes)
    with Image.open(io.BytesIO(case.data)) as opened:
        np.testing.assert_array_equal(load_for_model(opened, SIZE), from_bytes)


def test_load_for_model_equals_read_image_then_to_model_array() -> None:
    data = valid_jpeg().data
    np.testing.assert_array_equal(load_for_model(data, 40), to_model_array(read_image(data), 40))


# ------------------------------------------------------------------------------ sniffing


def test_sniff_format_reads_magic_bytes_only() -> None:
    assert sniff_format(encode(pattern_rgb(), "JPEG")) == "JPEG"
    assert sniff_format(encode(pattern_rgb(), "PNG")) == "PNG"
    assert sniff_format(encode(pattern_rgb(), "BMP")) == "BMP"
    assert sniff_format(encode(pattern_rgb(), "TIFF")) == "TIFF"
    assert sniff_format(encode(pattern_rgb(), "WEBP")) == "WEBP"
    assert sniff_format(animated_gif().data) is None
    assert sniff_format(b"BMW owners club newsletter") is None
    assert sniff_format(b"") is None
    assert {sniff_format(c.data) for c in VALID_CASES} <= ACCEPTED_FORMATS


def test_a_text_file_renamed_jpg_is_refused_by_content(tmp_path: Path) -> None:
    path = tmp_path / "melanoma.jpg"
    path.write_text("not an image at all\n")
    with pytest.raises(ImageRejected) as info:
        read_image(path)
    assert info.value.status == 415
    assert "text file" in info.value.message and "JPEG, PNG" in info.value.message


# -------------------------------------------------------------------------- pixel rules


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    levels = np.array([[0, 100 * 257], [128 * 257, 65535]], dtype=np.uint16)
    values = np.kron(levels, np.ones((32, 32), dtype=np.uint16))  # 64x64, four quadrants
    data = gray16_png(values).data
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode.startswith("I;16"), raw.mode  # really a 16-bit decode
    img = np.asarray(read_image(data))
    assert img[16, 16].tolist() == [0, 0, 0]
    assert img[16, 48].tolist() == [100, 100, 100]
    assert img[48, 16].tolist() == [128, 128, 128]  # clipping would have made this 255
    assert img[48, 48].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied() -> None:
    img = read_image(exif_rotated_jpeg().data)
    width, height = EXIF_STORED_SIZE
    assert img.size == (height, width)  # transposed
    pixels = np.asarray(img).astype(int)
    half = EXIF_MARKER_SIDE // 2
    top_right = pixels[half, img.width - half]
    top_left = pixels[half, half]
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60, top_right
    assert np.abs(top_left - 128).max() < 20, top_left


def test_square_crop_keeps_the_centre() -> None:
    wide = np.zeros((60, 120, 3), dtype=np.uint8)
    wide[:, :30] = (0, 0, 255)
    wide[:, 30:90] = (255, 0, 0)
    wide[:, 90:] = (0, 255, 0)
    cropped = square_crop(Image.fromarray(wide))
    assert cropped.size == (60, 60)
    assert (np.asarray(cropped) == (255, 0, 0)).all()
    assert (to_model_array(Image.fromarray(wide), 32) == (255, 0, 0)).all()
    tall = Image.fromarray(np.ascontiguousarray(wide.transpose(1, 0, 2)))
    assert (np.asarray(square_crop(tall)) == (255, 0, 0)).all()


def test_downscaling_is_antialiased() -> None:
    checker = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = to_model_array(Image.fromarray(checker).convert("RGB"), 16)
    # Aliased (nearest-like) sampling would give pure 0/255; averaging gives mid grey.
    assert np.abs(small.astype(int) - 127.5).max() < 10


def test_to_model_array_uses_pillow_bilinear_on_the_centre_square() -> None:
    img = pattern_rgb(96, 64)
    expected = np.asarray(square_crop(img).resize((20, 20), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(to_model_array(img, 20), expected)


def test_transparency_is_composited_on_white() -> None:
    pixels = np.asarray(read_image(rgba_png().data))
    assert (pixels[:, :32] == (255, 0, 0)).all()
    assert (pixels[:, 32:] == (255, 255, 255)).all()  # black under alpha=0 never shows


def test_cmyk_jpeg_colours_survive() -> None:
    got = np.asarray(read_image(cmyk_jpeg().data)).astype(int)
    assert np.abs(got - np.asarray(pattern_rgb()).astype(int)).mean() < 6


@pytest.mark.parametrize("make", [multipage_tiff, animated_webp, animated_png, mpo_jpeg])
def test_multi_frame_files_use_the_first_frame(make) -> None:
    got = np.asarray(read_image(make().data)).astype(int)
    assert np.abs(got - np.asarray(pattern_rgb()).astype(int)).mean() < 6  # not the blue frame


def test_jpeg_zip_polyglot_gives_the_jpeg_pixels() -> None:
    np.testing.assert_array_equal(
        np.asarray(read_image(jpeg_zip_polyglot().data)), np.asarray(read_image(jpeg_only_bytes()))
    )


# ------------------------------------------------------------------------------- limits


def test_a_phone_sized_upload_passes_and_an_oversized_one_is_413() -> None:
    assert load_for_model(huge_bytes(15 * 1024 * 1024), SIZE).shape == (SIZE, SIZE, 3)
    with pytest.raises(ImageRejected) as info:
        read_image(huge_bytes(MAX_BYTES + 1))
    assert info.value.status == 413 and "MB" in info.value.message
    with pytest.raises(ImageRejected) as info:
        read_image(valid_jpeg().data, max_bytes=100)
    assert info.value.status == 413


def test_oversized_path_is_refused_from_stat_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.jpg"
    with path.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: costs no disk

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened although stat already showed it too big")

    monkeypatch.setattr(Path, "open", no_reading)
    with pytest.raises(ImageRejected) as info:
        read_image(path)
    assert info.value.status == 413 and "big.jpg" in info.value.message


def test_limits_can_be_tightened_per_call() -> None:
    data = valid_jpeg().data  # 96x64
    with pytest.raises(ImageRejected) as info:
        read_image(data, max_pixels=96 * 64 - 1)
    assert info.value.status == 413
    with pytest.raises(ImageRejected) as info:
        read_image(data, min_side=65)
    assert info.value.status == 422 and "65" in info.value.message
    assert read_image(data, min_side=64).size == (96, 64)


PIXEL_BOMBS = [case for case in HOSTILE_CASES if case.status == 413]


@pytest.mark.parametrize("case", PIXEL_BOMBS, ids=_ids(PIXEL_BOMBS))
def test_pixel_bombs_are_refused_without_decoding(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageRejected) as info:
        read_image(case.data)
    assert info.value.status == 413


def test_bombs_are_refused_before_allocating_pixel_memory() -> None:
    # A fresh process, so its peak RSS says what refusing the bombs cost; tracemalloc only
    # sees Python allocations, and Pillow allocates pixel buffers with plain malloc.
    script = textwrap.dedent(
        """
        import json, resource, sys, time, tracemalloc
        sys.path.insert(0, sys.argv[1])
        import hostile
        from skinlesion.data.intake import ImageRejected, read_image
        bombs = [c for c in hostile.HOSTILE_CASES if c.status == 413]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        start = time.perf_counter()
        statuses = []
        for case in bombs:
            try:
                read_image(case.data)
                statuses.append(200)
            except ImageRejected as exc:
                statuses.append(exc.status)
        seconds = time.perf_counter() - start
        traced_peak = tracemalloc.get_traced_memory()[1]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"statuses": statuses, "rss_growth_kib": after - before,
                          "traced_peak": traced_peak, "seconds": seconds}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(TESTS_DIR)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] and set(report["statuses"]) == {413}
    # The smallest bomb would need 64 MB (8000x8000 L); the 30000x30000 one 900 MB.
    assert report["rss_growth_kib"] < 16 * 1024, report
    assert report["traced_peak"] < 4 * 2**20, report
    assert report["seconds"] < 2.0, report


def test_global_pillow_and_warning_state_is_untouched() -> None:
    pixels_limit = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    for case in HOSTILE_CASES:
        with pytest.raises(ImageRejected):
            read_image(case.data)
    assert pixels_limit == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert list(warnings.filters) == filters


# ---------------------------------------------------------------------- arrays and PIL


def test_uint8_arrays_of_every_accepted_shape() -> None:
    grey = np.full((40, 50), 77, dtype=np.uint8)
    assert (np.asarray(read_image(grey)) == 77).all()
    assert (np.asarray(read_image(grey[:, :, None])) == 77).all()
    rgb = np.asarray(pattern_rgb(50, 40))
    np.testing.assert_array_equal(np.asarray(read_image(rgb)), rgb)
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :25, 3] = 255
    out = np.asarray(read_image(rgba))
    assert (out[:, :25] == (200, 0, 0)).all() and (out[:, 25:] == 255).all()


def test_float_arrays_must_be_in_unit_range() -> None:
    unit = np.full((40, 40, 3), 0.5, dtype=np.float32)
    unit[0, 0] = (0.0, 1.0, 0.2)
    out = np.asarray(read_image(unit))
    assert out[0, 0].tolist() == [0, 255, 51] and out[5, 5].tolist() == [128, 128, 128]
    for bad in (np.full((40, 40, 3), 200.0), np.full((40, 40), np.nan), np.full((40, 40), -0.5)):
        with pytest.raises(ImageRejected) as info:
            read_image(bad)
        assert info.value.status == 422
        _assert_helpful(info.value)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((40, 40, 3), dtype=np.int64),
        np.zeros((40, 40, 3), dtype=np.uint16),
        np.zeros((40, 40), dtype=bool),
        np.zeros((40, 40, 2), dtype=np.uint8),
        np.zeros((2, 40, 40, 3), dtype=np.uint8),
        np.zeros((40,), dtype=np.uint8),
        np.zeros((8, 8, 3), dtype=np.uint8),
    ],
    ids=["int64", "uint16", "bool", "two-channels", "batch", "1-d", "too-small"],
)
def test_unusable_arrays_are_422(array: np.ndarray) -> None:
    with pytest.raises(ImageRejected) as info:
        read_image(array)
    assert info.value.status == 422
    _assert_helpful(info.value)


def test_huge_array_is_413_without_copying() -> None:
    # A zero-stride view: declares 8000x8000x3 but owns one byte.
    view = np.broadcast_to(np.uint8(0), (8000, 8000, 3))
    with pytest.raises(ImageRejected) as info:
        read_image(view)
    assert info.value.status == 413


def test_pil_images_are_accepted_without_being_changed() -> None:
    original = Image.new("L", (40, 40), 9)
    out = read_image(original)
    assert out.mode == "RGB" and out is not original and original.mode == "L"
    with Image.open(io.BytesIO(animated_gif().data)) as gif, pytest.raises(ImageRejected) as info:
        read_image(gif)
    assert info.value.status == 415 and "GIF" in info.value.message


# ---------------------------------------------------------------------- other contracts


def test_bad_sources_raise_clear_python_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bytes, a file path"):
        read_image(12345)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="No image file"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageRejected) as info:
        read_image(tmp_path)
    assert info.value.status == 400 and "folder" in info.value.message


def test_to_model_array_checks_its_arguments() -> None:
    rgb = pattern_rgb()
    for bad_size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="size"):
            to_model_array(rgb, bad_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read_image"):
        to_model_array(rgb.convert("L"), 32)


def test_image_fingerprint_is_sha256_of_the_bytes() -> None:
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert image_fingerprint(b"") == empty
    data = valid_jpeg().data
    assert image_fingerprint(data) == image_fingerprint(bytearray(data))
    assert image_fingerprint(data) != image_fingerprint(data + b"\0")


def test_image_rejected_survives_pickling() -> None:
    exc = ImageRejected(413, "Too big.")
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.status, clone.message, str(clone)) == (413, "Too big.", "Too big.")
    assert repr(exc) == "ImageRejected(413, 'Too big.')"


def test_public_constants() -> None:
    assert frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP"}) == ACCEPTED_FORMATS
    assert intake.MAX_BYTES == 25 * 1024 * 1024
    assert intake.MAX_PIXELS == 50_000_000
    assert intake.MIN_SIDE == 32
    assert png_decompression_bomb().status == 413


@pytest.mark.realdata
def test_a_real_dermoscopic_jpeg_loads() -> None:
    data = real_dermoscopic_jpeg()
    if data is None:
        pytest.skip("the shared dataset (../shared/data/melanoma_cancer_dataset) is not present")
    assert sniff_format(data) == "JPEG"
    img = read_image(data)
    assert img.mode == "RGB" and min(img.size) >= intake.MIN_SIDE
    array = load_for_model(data, 224)
    assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    assert 20 < array.mean() < 235  # a real photo, not a blank frame


def test_a_float_file_out_of_range_gets_advice_for_a_file_not_for_code() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 200.0, np.float32)).save(buf, format="TIFF")
    with pytest.raises(ImageRejected) as info:
        load_for_model(buf.getvalue(), 32)
    assert info.value.status == 422 and "8- or 16-bit" in info.value.message and "uint8" not in info.value.message
    _assert_helpful(info.value)
    with pytest.raises(ImageRejected, match="uint8 array"):
        load_for_model(np.full((64, 64, 3), 200.0, np.float32), 32)


# ------------------------------------------------------- awkward Pillow images from code


def test_premultiplied_grey_alpha_is_read_like_its_la_equivalent() -> None:
    grey = np.asarray(pattern_rgb(64, 64).convert("L"))
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))  # 0 (clear) .. 255 (opaque)
    la = Image.fromarray(np.dstack([grey, alpha]), "LA")
    premultiplied = la.convert("La")
    assert premultiplied.mode == "La"
    expected = np.asarray(read_image(la)).astype(int)
    got = np.asarray(read_image(premultiplied)).astype(int)
    # Premultiplying rounds grey values, by up to 255/alpha; on white that is at most ~1 level.
    assert np.abs(got - expected).max() <= 2
    assert (got[:, 0] == 255).all()  # fully transparent: white, like LA


def test_a_pil_image_whose_file_was_closed_is_refused_saying_so(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    path.write_bytes(encode(pattern_rgb(), "PNG"))
    with path.open("rb") as fh:
        lazy = Image.open(fh)  # pixels not read yet
    with Image.open(path) as dropped:  # Pillow drops its own file at the end of the block
        pass
    for image in (lazy, dropped):
        with pytest.raises(ImageRejected) as info:
            read_image(image)
        assert info.value.status == 422
        assert "file was closed before its pixels were read" in info.value.message
        _assert_helpful(info.value)
    with path.open("rb") as fh, Image.open(fh) as opened:  # read while open: fine
        np.testing.assert_array_equal(np.asarray(read_image(opened)), np.asarray(pattern_rgb()))


def test_a_truncated_file_is_still_called_corrupt_not_closed() -> None:
    data = encode(pattern_rgb(), "PNG")
    with Image.open(io.BytesIO(data[: len(data) // 2])) as truncated, pytest.raises(ImageRejected) as info:
        read_image(truncated)
    assert "truncated or corrupt" in info.value.message


@pytest.mark.parametrize("mode", ["I", "I;16"])
def test_in_memory_int_images_with_8_bit_values_keep_the_16_bit_rule_but_warn(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    grey = pattern_rgb(64, 64).convert("L")
    converted = grey.convert(mode)  # Pillow keeps the 0..255 values
    with caplog.at_level("WARNING", logger=intake.__name__):
        out = np.asarray(read_image(converted))
    assert out.max() <= 1  # the documented rule (v / 257): unchanged
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert mode in caplog.text and "16-bit" in caplog.text and "convert('L')" in caplog.text


def test_no_warning_for_16_bit_values_or_files(caplog: pytest.LogCaptureFixture) -> None:
    wide = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.int32), "I")
    dark_file = gray16_png(np.full((64, 64), 200, np.uint16)).data  # a dark 16-bit file: as stored
    with caplog.at_level("WARNING", logger=intake.__name__):
        read_image(wide)
        assert (np.asarray(read_image(dark_file)) == 1).all()
        with Image.open(io.BytesIO(dark_file)) as opened:
            read_image(opened)
    assert not caplog.records

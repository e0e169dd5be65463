"""Generated hostile (and awkward-but-valid) uploads for testing image intake.

Everything is built in memory from Pillow, zlib and the format specifications; nothing is
downloaded or written to disk. Each case is a :class:`Case` ``(name, data, status)``: a file
name a browser might send, the bytes, and the status ``skinlesion.data.intake`` must give (200 for
accepted). Names carry misleading extensions on purpose: intake sniffs bytes, not names.

``HOSTILE_CASES`` must be refused, ``VALID_CASES`` must be accepted. ``huge_bytes(n)`` makes
an n-byte body for size-limit tests, and ``real_dermoscopic_jpeg()`` returns one real image
from the shared dataset when it is present.
"""
from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image

# Stored (pre-rotation) size of the EXIF-rotated JPEG, and the marker painted at its
# stored top-left corner; after orientation 6 is applied it must land at the top-right.
EXIF_STORED_SIZE = (64, 40)
EXIF_MARKER_SIDE = 16
EXIF_MARKER_RGB = (255, 0, 0)


class Case(NamedTuple):
    """One generated upload: file name, bytes, and expected status (200 = accepted)."""

    name: str
    data: bytes
    status: int


# --------------------------------------------------------------------------- encoders


def encode(img: Image.Image, fmt: str, **save_kwargs: object) -> bytes:
    """``img`` saved as ``fmt`` in memory."""
    buf = io.BytesIO()
    # Saving can leave encoder settings on the image object (seen with JPEG then TIFF in
    # Pillow 13), so every save gets its own copy.
    img.copy().save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def pattern_rgb(width: int = 96, height: int = 64) -> Image.Image:
    """A smooth colour pattern (gradients compress well and survive JPEG nearly intact)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 127 // max(width + height - 2, 1)],
        axis=-1,
    ).astype(np.uint8)
    return Image.fromarray(rgb)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG from raw parts, so headers can say things no encoder would write."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bilevel_png_of_zeros(side: int) -> bytes:
    """A complete, valid 1-bit ``side`` x ``side`` PNG of black pixels, compressed by zlib.

    1-bit rows keep the raw stream at side*(side/8 + 1) bytes, so even 30000x30000 is built
    in a fraction of a second and stays ~100 KB on disk while declaring 900 megapixels.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte "none" + packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    return _png(side, side, 1, 0, b"".join(parts))


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each JPEG header segment, up to and including SOS."""
    segments = []
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"expected a JPEG marker at byte {pos}")
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments.append((marker, pos, pos + 2 + length))
        pos += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data follows
            break
    return segments


# ------------------------------------------------------------------------ hostile cases


def zero_bytes() -> Case:
    return Case("empty.jpg", b"", 400)


def truncated_jpeg() -> Case:
    # Noise so the scan data is large and the cut lands well inside it.
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    full = encode(Image.fromarray(noise), "JPEG", quality=90)
    return Case("truncated.jpg", full[: len(full) * 6 // 10], 422)


def plain_text() -> Case:
    return Case("notes.txt", b"Patient notes: lesion on left forearm, 6 mm, irregular border.\n", 415)


def text_renamed_jpg() -> Case:
    return Case("lesion_photo.jpg", b"This is a text file that was renamed to .jpg\n", 415)


def html_page() -> Case:
    html = b"<!DOCTYPE html>\n<html><body><script>alert('xss')</script><img src=x onerror=alert(1)></body></html>\n"
    return Case("photo.jpg.html", html, 415)


def svg_image() -> Case:
    svg = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300">'
        b"<script>alert('xss')</script><circle cx='150' cy='150' r='80' fill='brown'/></svg>\n"
    )
    return Case("lesion.svg", svg, 415)


def pdf_document() -> Case:
    return Case("report.pdf", encode(pattern_rgb(), "PDF"), 415)


def zip_archive() -> Case:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("lesion.jpg", encode(pattern_rgb(), "JPEG"))
    return Case("images.zip", buf.getvalue(), 415)


def heic_photo() -> Case:
    # Only the ISO-BMFF "ftyp" box matters for type detection; Pillow here cannot read HEIC.
    ftyp = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return Case("IMG_0001.HEIC", ftyp + b"\x00" * 256, 415)


def fake_bmp_text() -> Case:
    """Starts with "BM" like a bitmap, but it is text."""
    return Case("invoice.bmp", b"BMW service invoice #1234: oil change, brake pads, total 380 EUR\n", 415)


def animated_gif() -> Case:
    frames = [Image.new("P", (64, 64), colour) for colour in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return Case("animated.gif", buf.getvalue(), 415)


@functools.cache
def _png_bomb_bytes() -> bytes:
    return _bilevel_png_of_zeros(30_000)


def png_decompression_bomb() -> Case:
    """A real, complete PNG of ~100 KB that decodes to 30000x30000 = 900 megapixels."""
    return Case("bomb.png", _png_bomb_bytes(), 413)


@functools.cache
def _over_limit_png_bytes() -> bytes:
    return _bilevel_png_of_zeros(8_000)


def png_over_pixel_limit() -> Case:
    """8000x8000 = 64 MP: above intake's 50 MP limit but below Pillow's own 89 MP warning,
    so only intake's explicit header check can refuse it."""
    return Case("over_limit.png", _over_limit_png_bytes(), 413)


def png_header_only_huge(side: int = 20_000) -> Case:
    """Declares ``side`` x ``side`` RGB but carries one row of pixel data."""
    one_row = zlib.compress(b"\x00" * (1 + 3 * side))
    return Case(f"header_only_{side}.png", _png(side, side, 8, 2, one_row), 413)


def jpeg_header_only_huge(side: int = 20_000) -> Case:
    """A real JPEG's headers with SOF0 patched to ``side`` x ``side`` and no scan data."""
    data = bytearray(encode(pattern_rgb(64, 64), "JPEG", quality=75))
    segments = _jpeg_segments(bytes(data))
    (_, sof, _) = next(seg for seg in segments if seg[0] == 0xC0)
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)  # height, width
    end_of_headers = segments[-1][2]
    return Case(f"header_only_{side}.jpg", bytes(data[:end_of_headers]), 413)


def tiny_image() -> Case:
    return Case("tiny.png", encode(pattern_rgb(8, 8), "PNG"), 422)


def jpeg_magic_then_garbage() -> Case:
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return Case("garbage.jpg", b"\xff\xd8\xff\xe0" + garbage, 422)


def png_corrupt_idat() -> Case:
    """Valid PNG headers (64x64 RGB) whose IDAT is not a zlib stream."""
    garbage = np.random.default_rng(2).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    return Case("corrupt.png", _png(64, 64, 8, 2, garbage), 422)


def png_bad_crc() -> Case:
    data = bytearray(encode(pattern_rgb(64, 64), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR chunk's CRC (8 signature + 8 + 13 payload)
    return Case("bad_crc.png", bytes(data), 422)


def png_text_bomb() -> Case:
    """A 64x64 PNG with a zTXt chunk that inflates to 16 MB (~16 KB stored), 16x Pillow's text limit."""
    raw = b"".join(b"\x00" + bytes(64) for _ in range(64))
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (16 * 2**20), 9)
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"zTXt", ztxt)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    return Case("text_bomb.png", data, 422)


# -------------------------------------------------------------------------- valid cases


def valid_jpeg() -> Case:
    return Case("photo.jpg", encode(pattern_rgb(), "JPEG", quality=92), 200)


def progressive_jpeg() -> Case:
    return Case("progressive.jpg", encode(pattern_rgb(), "JPEG", progressive=True), 200)


def grayscale_jpeg() -> Case:
    return Case("grey.jpg", encode(pattern_rgb().convert("L"), "JPEG"), 200)


def valid_png() -> Case:
    return Case("photo.png", encode(pattern_rgb(), "PNG"), 200)


def valid_bmp() -> Case:
    return Case("photo.bmp", encode(pattern_rgb(), "BMP"), 200)


def valid_tiff() -> Case:
    return Case("photo.tiff", encode(pattern_rgb(), "TIFF", compression="tiff_lzw"), 200)


def valid_webp() -> Case:
    return Case("photo.webp", encode(pattern_rgb(), "WEBP", quality=90), 200)


def gray16_png(values: np.ndarray | None = None) -> Case:
    """A 16-bit greyscale PNG (Pillow mode ``I;16``); default: a 64x64 full-range ramp."""
    if values is None:
        values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 65535 // (64 * 64 - 1))
    return Case("gray16.png", encode(Image.fromarray(np.asarray(values, dtype=np.uint16)), "PNG"), 200)


def gray16_tiff() -> Case:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    return Case("gray16.tiff", encode(Image.fromarray(ramp), "TIFF"), 200)


def cmyk_jpeg() -> Case:
    return Case("cmyk.jpg", encode(pattern_rgb().convert("CMYK"), "JPEG", quality=95), 200)


def exif_rotated_jpeg() -> Case:
    """Stored 64 wide x 40 tall, red block at the stored top-left, EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the upright image is
    40 wide x 64 tall with the red block at its top-right.
    """
    img = Image.new("RGB", EXIF_STORED_SIZE, (128, 128, 128))
    img.paste(EXIF_MARKER_RGB, (0, 0, EXIF_MARKER_SIDE, EXIF_MARKER_SIDE))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return Case("rotated.jpg", encode(img, "JPEG", quality=95, exif=exif), 200)


def jpeg_only_bytes() -> bytes:
    """The JPEG part of :func:`jpeg_zip_polyglot`, for comparing pixels."""
    return encode(pattern_rgb(), "JPEG", quality=90)


def jpeg_zip_polyglot() -> Case:
    """A valid JPEG with a ZIP archive appended (also a valid ZIP: its directory is at the end).

    Accepted as the JPEG it starts with; the appended bytes are never interpreted.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("payload.txt", "this archive hides inside a JPEG")
    return Case("polyglot.jpg", jpeg_only_bytes() + buf.getvalue(), 200)


def rgba_png() -> Case:
    """Left half opaque red, right half fully transparent with *black* colour underneath."""
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (255, 0, 0, 255)
    return Case("rgba.png", encode(Image.fromarray(rgba), "PNG"), 200)


def la_png() -> Case:
    return Case("la.png", encode(pattern_rgb().convert("LA"), "PNG"), 200)


def palette_png() -> Case:
    return Case("palette.png", encode(pattern_rgb().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), 200)


def palette_transparent_png() -> Case:
    img = pattern_rgb().convert("P", palette=Image.Palette.ADAPTIVE)
    return Case("palette_alpha.png", encode(img, "PNG", transparency=0), 200)


def bilevel_png() -> Case:
    return Case("bilevel.png", encode(pattern_rgb().convert("1"), "PNG"), 200)


def multipage_tiff() -> Case:
    pages = [pattern_rgb(), Image.new("RGB", (96, 64), "blue")]
    return Case("pages.tiff", encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]), 200)


def animated_webp() -> Case:
    frames = [pattern_rgb(), Image.new("RGB", (96, 64), "blue")]
    return Case("animated.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True), 200)


def animated_png() -> Case:
    frames = [pattern_rgb(), Image.new("RGB", (96, 64), "blue")]
    return Case("animated.png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), 200)


def mpo_jpeg() -> Case:
    """A multi-picture JPEG, as some phone cameras write; Pillow calls it "MPO"."""
    frames = [pattern_rgb(), Image.new("RGB", (96, 64), "blue")]
    return Case("phone.jpg", encode(frames[0], "MPO", save_all=True, append_images=frames[1:]), 200)


def png_named_jpg() -> Case:
    """A valid PNG with a .jpg name: the name is ignored, the PNG is accepted."""
    return Case("really_a_png.jpg", encode(pattern_rgb(), "PNG"), 200)


def bigtiff() -> Case:
    return Case("big.tif", encode(pattern_rgb(), "TIFF", big_tiff=True), 200)


# ------------------------------------------------------------------------------ helpers


def huge_bytes(n: int) -> bytes:
    """Exactly ``n`` bytes: a small valid JPEG followed by zero padding.

    The padding sits after the JPEG's end marker, so without a byte limit the body would be
    *accepted*; a 413 therefore proves the limit fired, not that decoding failed.
    """
    head = encode(pattern_rgb(64, 64), "JPEG")
    if n < len(head):
        raise ValueError(f"huge_bytes needs n >= {len(head)}, got {n}")
    return head + bytes(n - len(head))


def real_dermoscopic_jpeg() -> bytes | None:
    """Bytes of one real test/malignant image from the shared dataset, or ``None`` if absent."""
    from skinlesion.config import shared_dataset

    folder = shared_dataset() / "test" / "malignant"
    if not folder.is_dir():
        return None
    first = next(iter(sorted(folder.glob("*.jpg"))), None)
    return first.read_bytes() if first is not None else None


HOSTILE_CASES: list[Case] = [
    zero_bytes(),
    truncated_jpeg(),
    plain_text(),
    text_renamed_jpg(),
    html_page(),
    svg_image(),
    pdf_document(),
    zip_archive(),
    heic_photo(),
    fake_bmp_text(),
    animated_gif(),
    png_decompression_bomb(),
    png_over_pixel_limit(),
    png_header_only_huge(),
    jpeg_header_only_huge(),
    tiny_image(),
    jpeg_magic_then_garbage(),
    png_corrupt_idat(),
    png_bad_crc(),
    png_text_bomb(),
]

VALID_CASES: list[Case] = [
    valid_jpeg(),
    progressive_jpeg(),
    grayscale_jpeg(),
    valid_png(),
    valid_bmp(),
    valid_tiff(),
    valid_webp(),
    gray16_png(),
    gray16_tiff(),
    cmyk_jpeg(),
    exif_rotated_jpeg(),
    jpeg_zip_polyglot(),
    rgba_png(),
    la_png(),
    palette_png(),
    palette_transparent_png(),
    bilevel_png(),
    multipage_tiff(),
    animated_webp(),
    animated_png(),
    mpo_jpeg(),
    png_named_jpg(),
    bigtiff(),
]

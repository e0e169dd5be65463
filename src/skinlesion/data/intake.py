"""The one way untrusted image input becomes a model-ready array.

Every path of the project (training data loader, CLI ``predict``, Flask web app, Voila
dashboard) calls :func:`read_image` / :func:`load_for_model`, so a given file produces the
same pixels, and the same refusal, wherever it comes in. Nothing is ever written to disk.

Policy, in the order the checks run on bytes (a path is ``stat``-ed and read into memory,
at most ``max_bytes + 1`` of it, first):

1. **Empty** input is refused with status 400.
2. **Too many bytes** (``len > max_bytes``, default 25 MiB so a 15 MB phone photo passes):
   413, before anything is parsed.
3. **Type** comes from the magic bytes (:func:`sniff_format`), never from a file name or a
   declared content type. Only JPEG (including multi-picture MPO files from phones), PNG,
   BMP, TIFF and WebP are accepted; anything else (GIF, HEIC, SVG, HTML, PDF, ZIP, text...)
   is 415. Pillow is then told to use only the sniffed format's decoder, so no other Pillow
   plugin (EPS calls Ghostscript, for instance) ever sees the data.
4. **Too many pixels** (``width * height > max_pixels``, default 50 megapixels) is 413,
   decided from the header *before* any pixel memory is allocated. Pillow's own
   ``DecompressionBombError`` / ``DecompressionBombWarning`` (raised inside ``Image.open``
   for sizes above ``Image.MAX_IMAGE_PIXELS``) also map to 413; the warning is turned into an
   error only inside a local ``warnings.catch_warnings`` block, and ``Image.MAX_IMAGE_PIXELS``
   and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are never changed.
5. **Too small** (shorter side ``< min_side``, default 32): 422.
6. **Corrupt or truncated** data (the full decode, ``img.load()``, fails): 422.

What a successfully read image looks like (:func:`read_image` returns a decoded RGB
``PIL.Image.Image``):

* EXIF orientation is applied (``ImageOps.exif_transpose``); unreadable EXIF is ignored,
  because orientation is advisory metadata and the pixels are still good.
* Only the first frame of a multi-frame file (animated WebP, animated PNG, multi-page TIFF,
  MPO) is used.
* Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited onto
  **white**, so what the model sees matches what a person sees in a browser, and the
  arbitrary colour hidden under fully transparent pixels never leaks in.
* 16-bit grey (``I;16*``) is scaled to 8 bits with ``round(v / 257)``, so 65535 -> 255 and
  32896 -> 128 (Pillow's own ``convert`` would clip everything above 255 to white). 32-bit
  integer (``I``) data is assumed to use the 16-bit range too and is refused (422) if any
  value falls outside 0..65535. 16-bit RGB(A) PNGs are already reduced to 8 bits by Pillow's
  decoder (high byte). Float (``F``) images follow the array rule below. A file cannot say
  whether its 16-bit values are really 8-bit ones, so the rule holds for every source; for an
  ``I``/``I;16`` image made in memory (e.g. ``img.convert("I")``, which keeps 0..255 values)
  whose values all lie in 1..255 a warning is logged, because it will come out near-black.
* Premultiplied grey + alpha (``La``) is converted to ``LA`` first (Pillow cannot convert it to
  anything else), then composited like any other transparency.
* Embedded ICC profiles are *not* applied: pixel values are used as stored, exactly as the
  training images (plain sRGB JPEGs) are.

Arrays (``np.ndarray``) are taken as already-decoded pixels, shape ``HxW``, ``HxWx1``,
``HxWx3`` or ``HxWx4`` (the last channel is alpha). ``uint8`` is used as is; float arrays must
hold values in **[0, 1]** (the scikit-image / matplotlib convention) and are scaled by 255
and rounded. Float data in [0, 255] is refused rather than guessed at, because a dark 0-255
image and a 0-1 image cannot be told apart reliably. Any other dtype or shape is 422.

A ``PIL.Image.Image`` is accepted when its ``format`` is ``None`` (made in memory) or an
accepted one; its *current* frame is used, and the same pixel, size and mode rules apply. An
image opened lazily from a file that was closed before its pixels were read (``Image.open``
inside a ``with open(...)`` block, used after it) is refused (422) saying so, not as corrupt.

Model input: :func:`square_crop` is the one non-square policy, a **centre square crop**.
Lesions are centred in dermoscopic images, and padding would add artificial borders the
training data never has. :func:`to_model_array` then resizes with Pillow's ``BILINEAR``
filter, which Pillow antialiases when downscaling (its support grows with the scale factor).
JPEG ``draft`` (DCT-domain downscaling) is deliberately not used: it depends on the target
size, so ``read_image`` followed by ``to_model_array`` would give different pixels from
``load_for_model`` for the same file; a full decode costs well under a second even for a
large phone photo.

Thread safety: ``warnings.catch_warnings`` swaps the process-wide filter list, so under
concurrent calls the "DecompressionBombWarning is an error" filter may briefly apply to other
threads or outlive a call. That only makes Pillow's bomb warning stricter elsewhere; the
outcome of this module does not depend on it, because the explicit pixel check (default
50 MP, below Pillow's 89 MP warning threshold) refuses the same images.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "ImageRejected",
    "ImageSource",
    "image_fingerprint",
    "load_for_model",
    "read_file_bytes",
    "read_image",
    "sniff_format",
    "square_crop",
    "to_model_array",
]

ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP"})
MAX_BYTES: int = 25 * 1024 * 1024
MAX_PIXELS: int = 50_000_000
MIN_SIDE: int = 32

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image, np.ndarray]

_ACCEPTED_TEXT = "JPEG, PNG, BMP, TIFF or WebP"
# Pillow reports multi-picture JPEGs (common from phone cameras) as "MPO"; they are JPEGs.
_PIL_FORMATS_ACCEPTED = ACCEPTED_FORMATS | {"MPO"}
# BITMAPINFOHEADER sizes Pillow's BMP decoder understands; checking it keeps a text file that
# happens to start with "BM" from being sniffed as a bitmap.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I;16LS"})


class ImageRejected(ValueError):
    """Raised for any input we refuse.

    ``status`` is an HTTP-like code (400 empty, 413 too many bytes or pixels, 415 not a
    supported image type, 422 a supported type that is corrupt, truncated, too small or has
    unusable pixel data); ``message`` is a plain-English sentence to show a person.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[int, str]]:
        # Default exception pickling calls cls(*args) == cls(message), which would fail;
        # data-loader worker processes pickle exceptions back to the parent.
        return (type(self), (self.status, self.message))

    def __repr__(self) -> str:
        return f"ImageRejected({self.status}, {self.message!r})"


def sniff_format(data: bytes) -> str | None:
    """The accepted format named by ``data``'s magic bytes, or ``None``.

    Hand-written rather than ``imghdr`` (removed in Python 3.13) or libmagic (not a
    dependency); the signatures are fixed by the format specifications.
    """
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if (
        head.startswith(b"BM")
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return "BMP"
    return None


def _describe_unsupported(data: bytes) -> str:
    """A short phrase naming what a refused file most likely is, for the 415 message."""
    head = bytes(data[:1024])
    lower = head.lstrip().lower()
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image (GIF is not accepted; save the picture as PNG or JPEG)"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "an AVIF image (export it as JPEG or PNG first)"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "a HEIC/HEIF photo (export it as JPEG first, e.g. 'Most Compatible' on iPhone)"
        return "a video or MP4-family file"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a ZIP archive (or an Office document)"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "a JPEG 2000 image"
    if b"<svg" in lower:
        return "an SVG drawing"
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        return "an HTML page"
    if lower.startswith(b"<?xml"):
        return "an XML document"
    text = ""
    for cut in range(4):  # a multi-byte character may be cut at the 1024-byte boundary
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return "a file of an unrecognised type"


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


def _too_many_bytes(n: int, max_bytes: int, what: str = "The file") -> ImageRejected:
    return ImageRejected(
        413,
        f"{what} is {_megabytes(n)}, more than the {_megabytes(max_bytes)} limit. "
        "Please upload a smaller image; a photo a few thousand pixels wide is plenty.",
    )


def _check_dimensions(size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    """Refuse too many pixels (413) or a too-short side (422), from the size alone."""
    width, height = size
    if width * height > max_pixels:
        raise ImageRejected(
            413,
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), "
            f"more than the {max_pixels / 1e6:g}-megapixel limit. "
            "Please resize it to a smaller size and try again.",
        )
    if min(width, height) < min_side:
        raise ImageRejected(
            422,
            f"The image is only {width}x{height} pixels; at least {min_side} pixels are "
            "needed on each side. Please upload a larger, closer photo of the lesion.",
        )


def _corrupt(fmt: str) -> ImageRejected:
    return ImageRejected(
        422,
        f"The {fmt} file could not be decoded: it seems to be truncated or corrupt. "
        "Please re-save or re-export the image and upload it again.",
    )


def _closed_before_read(img: Image.Image) -> bool:
    """Whether ``img``'s pixels were never read and its file is gone: the file object Pillow
    was given is closed, or Pillow dropped it (``img.close()``, the end of a ``with`` block)
    while tiles were still to be decoded. Only consulted after a failed ``load()``."""
    fp = getattr(img, "fp", None)
    if fp is not None:
        return bool(getattr(fp, "closed", False))
    return bool(getattr(img, "tile", None))


def read_file_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> bytes:
    """A file's bytes, refusing (:class:`ImageRejected`) anything that is not a regular file or is
    over ``max_bytes`` from ``stat`` before reading it: every reader of image files goes through
    this, so a huge file or a link to ``/dev/zero`` is one refused image, not a MemoryError."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"No image file at {path}; check the path and try again.") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ImageRejected(400, f"{path} is {kind}, not an image file. Please give an image file.")
    if info.st_size > max_bytes:
        raise _too_many_bytes(info.st_size, max_bytes, f"The file {path.name}")
    with path.open("rb") as fh:
        # One byte more than allowed tells us if the file grew since stat.
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_many_bytes(len(data), max_bytes, f"The file {path.name}")
    return data


def _decode_bytes(data: bytes, max_bytes: int, max_pixels: int, min_side: int) -> Image.Image:
    if len(data) == 0:
        raise ImageRejected(
            400, f"The upload is empty (0 bytes). Please choose a {_ACCEPTED_TEXT} image."
        )
    if len(data) > max_bytes:
        raise _too_many_bytes(len(data), max_bytes)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected(
            415,
            f"This file looks like {_describe_unsupported(data)}, which is not a supported "
            f"image type. Please upload a {_ACCEPTED_TEXT} photo of the lesion.",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(
                413,
                "The image declares far too many pixels to be decoded safely "
                f"(the limit is {max_pixels / 1e6:g} megapixels). "
                "Please resize it to a smaller size and try again.",
            ) from exc
        except MemoryError as exc:
            raise ImageRejected(413, "The image is too large to decode. Please resize it.") from exc
        except Exception as exc:
            # Pillow's parsers raise many exception types on hostile headers (OSError,
            # SyntaxError, ValueError, struct.error, IndexError...); all mean "unreadable".
            raise _corrupt(fmt) from exc
    return _decode_opened(img, fmt, max_pixels, min_side)


def _decode_opened(img: Image.Image, fmt: str, max_pixels: int, min_side: int) -> Image.Image:
    """Check size from the header, then decode fully, orient and convert to RGB."""
    _check_dimensions(img.size, max_pixels, min_side)
    try:
        img.load()
    except MemoryError as exc:
        raise ImageRejected(413, "The image is too large to decode. Please resize it.") from exc
    except Exception as exc:
        # A lazily opened image whose file was closed first is a caller's mistake, not a bad
        # file (Pillow says "seek of closed file" or fails an assertion).
        if _closed_before_read(img):
            raise ImageRejected(
                422,
                "The image's file was closed before its pixels were read. Call .load() on the "
                "image while its file is open, or pass the file's path or bytes instead.",
            ) from exc
        # Same reasoning as at open: any decoder failure on untrusted data is "corrupt".
        raise _corrupt(fmt) from exc
    img = _apply_orientation(img)
    return _to_rgb(img)


def _apply_orientation(img: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        # Malformed EXIF from an untrusted file: the orientation is advisory, the pixels fine.
        return img
    return transposed if transposed is not None else img


def _scale_int16(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by rounding ``v / 257`` (255 * 257 == 65535)."""
    wide = values.astype(np.uint32)
    return ((wide + 128) // 257).astype(np.uint8)


_ARRAY_ADVICE = "Divide 0-255 data by 255 first, or pass a uint8 array."
_FILE_ADVICE = "Please save it as an ordinary 8- or 16-bit image."


def _float_to_uint8(values: np.ndarray, advice: str = _ARRAY_ADVICE) -> np.ndarray:
    """[0, 1] floats -> uint8; anything else is refused rather than guessed at (``advice`` says
    what to do instead: a programmer passing an array and a person uploading a file differ)."""
    if values.size and not np.isfinite(values).all():
        raise ImageRejected(422, "The image data contains NaN or infinite values.")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    # A little slack for arithmetic round-off (e.g. 1.0000001 after a normalisation).
    if low < -1e-3 or high > 1 + 1e-3:
        raise ImageRejected(
            422,
            f"Float image data must lie in [0, 1], but it ranges from {low:g} to {high:g}. {advice}",
        )
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, following the module's documented rules."""
    if img.mode == "La":
        # Premultiplied grey + alpha: Pillow converts it only to LA (un-premultiplied).
        img = img.convert("LA")
    mode = img.mode
    # High-bit-depth grey first: Pillow's convert() would clip it (and any 16-bit colour-key
    # transparency is dropped; it cannot be expressed once the data are 8-bit).
    if mode in _INT16_MODES or mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageRejected(
                422,
                "The image holds integer values outside the 16-bit range 0-65535, which we "
                "cannot map to colours. Please save it as an 8- or 16-bit image.",
            )
        return Image.fromarray(_scale_int16(values)).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(img), _FILE_ADVICE)).convert("RGB")
    if img.has_transparency_data:
        return _on_white(img)
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected(
            422,
            f"The image uses the colour mode {mode!r}, which we cannot convert to RGB. "
            "Please save it as an ordinary RGB or greyscale image.",
        ) from exc


def _from_array(array: np.ndarray, max_pixels: int, min_side: int) -> Image.Image:
    shape = array.shape
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))):
        raise ImageRejected(
            422,
            f"An image array must have shape HxW, HxWx1, HxWx3 or HxWx4, not {shape}.",
        )
    _check_dimensions((shape[1], shape[0]), max_pixels, min_side)
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_to_uint8(array)
    else:
        raise ImageRejected(
            422,
            f"An image array must be uint8 (0-255) or float (0-1), not {array.dtype}. "
            "Convert it with .astype(np.uint8) or scale it to [0, 1] first.",
        )
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    # uint8 HxW / HxWx3 / HxWx4 map to Pillow modes L / RGB / RGBA.
    img = Image.fromarray(np.ascontiguousarray(pixels))
    return _to_rgb(img)


def _warn_if_8_bit_values(img: Image.Image) -> None:
    """Log a warning for an in-memory ``I``/``I;16`` image holding only 1..255: the 16-bit rule
    (:func:`_scale_int16`) makes it near-black, though it most likely came from converting an
    8-bit image. Results are not changed; a file with such values is a dark 16-bit image."""
    if img.mode not in _INT16_MODES and img.mode != "I":
        return
    values = np.asarray(img)
    if values.size and 0 < int(values.max()) <= 255:
        logger.warning(
            "In-memory %s image holds only values up to %d; it is read as 16-bit data "
            "(0-65535, scaled by 1/257) and so comes out near-black. If it holds 8-bit values, "
            "pass img.convert('L') or a uint8 array instead.",
            img.mode, int(values.max()),
        )


def _from_pil(img: Image.Image, max_pixels: int, min_side: int) -> Image.Image:
    fmt = getattr(img, "format", None)
    if fmt is not None and fmt not in _PIL_FORMATS_ACCEPTED:
        raise ImageRejected(
            415,
            f"This is a {fmt} image, which is not a supported image type. "
            f"Please use a {_ACCEPTED_TEXT} image.",
        )
    decoded = _decode_opened(img, fmt or "image", max_pixels, min_side)
    if fmt is None:  # made in memory, so already loaded: reading its values costs no decode
        _warn_if_8_bit_values(img)
    return decoded


def read_image(
    source: ImageSource,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """Decode untrusted ``source`` into a fully loaded, upright, 8-bit RGB image.

    ``source`` is raw bytes, a file path, an opened ``PIL.Image.Image`` or a pixel array.
    Raises :class:`ImageRejected` (with ``status`` and a readable ``message``) for anything
    refused, ``FileNotFoundError`` for a path that does not exist and ``TypeError`` for a
    ``source`` of another type. See the module docstring for the exact rules.
    """
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels, min_side)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels, min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = source if isinstance(source, bytes) else bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = read_file_bytes(source, max_bytes)
    else:
        raise TypeError(
            "read_image() takes bytes, a file path, a PIL image or a numpy array, "
            f"not {type(source).__name__}."
        )
    return _decode_bytes(data, max_bytes, max_pixels, min_side)


def square_crop(img: Image.Image) -> Image.Image:
    """The centre square of ``img`` (side = its shorter side): the project's non-square policy.

    Dermoscopic lesions are centred, and padding would add borders the training data never
    has. When the difference in sides is odd, the extra pixel is dropped on the right/bottom.
    """
    width, height = img.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return img.crop((left, top, left + side, top + side))


def to_model_array(img: Image.Image, size: int) -> np.ndarray:
    """Centre-crop ``img`` (RGB, from :func:`read_image`) and resize it to ``size`` x ``size``.

    Returns a writable, C-contiguous ``uint8`` array of shape ``(size, size, 3)``. Resizing
    uses Pillow's antialiased ``BILINEAR`` filter.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, not {size!r}.")
    if img.mode != "RGB":
        raise ValueError(
            f"to_model_array() needs an RGB image, got mode {img.mode!r}; "
            "pass the image through read_image() first."
        )
    square = square_crop(img)
    side = int(size)
    if square.size != (side, side):
        square = square.resize((side, side), Image.Resampling.BILINEAR)
    return np.array(square, dtype=np.uint8, order="C")


def load_for_model(
    source: ImageSource,
    size: int,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """:func:`read_image` then :func:`to_model_array`: ``uint8`` array ``(size, size, 3)``."""
    img = read_image(source, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)
    return to_model_array(img, size)


def image_fingerprint(data: bytes) -> str:
    """SHA-256 hex digest of the raw bytes (the key of feature caches)."""
    return hashlib.sha256(bytes(data) if not isinstance(data, bytes) else data).hexdigest()

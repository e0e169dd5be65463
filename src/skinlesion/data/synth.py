"""Deterministic synthetic dermoscopy-like images: the embedded default dataset and test fixture.

The images are *plausible*, not realistic: skin-coloured background with smooth mottling and a
random skin tone, an optional dark circular dermoscope vignette, optional hairs, and a pigmented
lesion. Benign lesions are near-round with a smooth border and one or two brown shades; malignant
ones are asymmetric, have a jagged border and colour variegation (dark brown, black, blue-grey,
red). Each image draws a latent "atypia" score from overlapping class-conditional Beta
distributions and every visual cue is a noisy function of that score, so the classes overlap:
all label information passes through the score, whose own ROC AUC is about 0.966, so no
classifier can reach 1.0 (a small CNN trained from scratch gets about 0.8, hand-made colour
features about 0.85).

Anything trained or evaluated on this data must be reported as SYNTHETIC. Datasets written by
:func:`generate_dataset` carry a :data:`SYNTHETIC_MARKER` file; :func:`is_synthetic` detects it.
"""
from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skinlesion import CLASS_NAMES

SYNTHETIC_MARKER = "SYNTHETIC.txt"
GENERATOR_VERSION = "1"  # bump when the images change, so a marker says which generator made them
SPLITS = ("train", "test")
FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
JPEG_QUALITY = 92
_SPLIT_CODES = {"train": 0, "test": 1}

# Lesion palette in linear-ish sRGB [0, 1]; picked by eye from dermoscopy atlases.
_LIGHT_BROWN = np.array([0.66, 0.45, 0.30], np.float32)
_MID_BROWN = np.array([0.47, 0.29, 0.18], np.float32)
_DARK_BROWN = np.array([0.27, 0.15, 0.09], np.float32)
_BLACK = np.array([0.08, 0.06, 0.06], np.float32)
_BLUE_GREY = np.array([0.38, 0.42, 0.52], np.float32)
_RED = np.array([0.72, 0.32, 0.30], np.float32)
# (colour, prior weight): red and blue-grey areas are rarer than dark brown and black ones.
_VARIEGATION = ((_DARK_BROWN, 1.0), (_BLACK, 0.7), (_BLUE_GREY, 0.7), (_RED, 0.4))
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_ANGLE_SAMPLES = 1024


class SynthError(ValueError):
    """A synthetic-dataset request that cannot be carried out, with a message saying what to do."""


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1) as float32 (y, x), cached because every image uses them."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


@lru_cache(maxsize=32)
def _rbf_basis(size: int, cells: int) -> np.ndarray:
    """(size, cells) Gaussian interpolation weights from a coarse grid to pixels."""
    x = (np.arange(size, dtype=np.float32) + 0.5) / size
    centres = np.linspace(-0.5 / cells, 1 + 0.5 / cells, cells, dtype=np.float32)
    width = 1.2 / (cells - 1)
    basis = np.exp(-(((x[:, None] - centres[None, :]) / width) ** 2))
    return basis / basis.sum(axis=1, keepdims=True)


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth random field of roughly unit standard deviation, shape (size, size[, channels]).

    Separable Gaussian interpolation of a coarse random grid (two small matrix products) is far
    cheaper than blurring a full-resolution noise image, which keeps generation fast.
    """
    u = _rbf_basis(size, cells)
    grid = rng.standard_normal((channels, cells, cells), dtype=np.float32)
    field = u @ grid @ u.T  # (channels, size, size)
    field /= field.std() + np.float32(1e-6)
    return field[0] if channels == 1 else np.moveaxis(field, 0, -1)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    """A random skin RGB colour drawn through its ITA angle, mostly light like dermoscopy archives."""
    from skimage.color import lab2rgb

    ita = float(np.clip(rng.normal(42.0, 16.0), -45.0, 68.0))
    b = rng.uniform(12.0, 20.0)
    lightness = np.clip(50.0 + b * np.tan(np.deg2rad(ita)), 28.0, 84.0)
    a = rng.uniform(8.0, 16.0)
    return lab2rgb(np.array([[[lightness, a, b]]]))[0, 0].astype(np.float32)


def _hair_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased mask (float32 in [0, 1]) of 1-6 thin curved hairs."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(int(rng.integers(1, 7))):
        p0, p2 = rng.uniform(-0.1, 1.1, 2) * size, rng.uniform(-0.1, 1.1, 2) * size
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.25, 2) * size  # quadratic Bezier control point
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        width = max(1, int(round(rng.uniform(0.6, 1.6) * size / 128)))
        draw.line([tuple(p) for p in pts], fill=255, width=width, joint="curve")
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.5 * size / 128))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _dots_mask(
    rng: np.random.Generator, size: int, n: int, centre: tuple[float, float], spread: float
) -> np.ndarray:
    """Soft mask (float32 in [0, 1]) of ``n`` small round dots scattered around ``centre``."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    pos = (np.asarray(centre) + rng.normal(0.0, spread / 2, (n, 2))) * size
    radii = rng.uniform(0.006, 0.02, n) * size
    for (x, y), r in zip(pos, radii):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(size / 128))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def synth_image(label: int, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One synthetic dermoscopy-like image, uint8 (size, size, 3); label 0 = benign, 1 = malignant.

    All randomness comes from ``rng``, so the same generator state gives the same image.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (benign) or 1 (malignant), got {label!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int >= 32 pixels, got {size!r}")
    size = int(size)
    yy, xx = _grid(size)

    # Latent atypia score; the Beta laws overlap so the classes are not trivially separable.
    score = rng.beta(2.5, 6.0) if label == 0 else rng.beta(6.0, 2.5)

    def cue() -> float:
        # Each visual cue follows the score with its own noise, as ABCD features do in practice.
        return float(np.clip(score + rng.normal(0.0, 0.08), 0.0, 1.0))

    asym, border, colour, network_irregularity = cue(), cue(), cue(), cue()

    # --- skin background -------------------------------------------------------------------
    skin = _skin_colour(rng)
    mottling = _smooth_field(rng, size, 6, 3) * rng.uniform(0.02, 0.05)
    # Python floats, not NumPy float64 scalars, so float32 arrays stay float32 (NEP 50).
    gx, gy = (float(g) for g in rng.normal(0.0, 0.06, 2))
    shading = 1.0 + gx * (xx - 0.5) + gy * (yy - 0.5)
    img = skin * (1.0 + mottling) * shading[..., None]

    # --- lesion shape: radius as a function of angle -------------------------------------
    cy, cx = (0.5 + float(c) for c in rng.normal(0.0, 0.05, 2))
    radius = rng.uniform(0.10, 0.24) + 0.08 * score
    dy, dx = yy - cy, xx - cx
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    k_low = np.arange(1, 6)
    k_high = np.arange(6, 25)
    amp_low = (0.02 + 0.30 * asym) * rng.dirichlet(np.ones(k_low.size)) * rng.choice([-1, 1], k_low.size)
    amp_high = (0.004 + 0.10 * border) * rng.dirichlet(np.ones(k_high.size)) * 2.0 / np.sqrt(k_high / 6)
    ellipticity = rng.uniform(0.0, 0.15)
    ks = np.concatenate([k_low, k_high, [2]])
    amps = np.concatenate([amp_low, amp_high, [ellipticity]])
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    # The radius depends on angle only: tabulate it once and look pixels up, instead of
    # evaluating ~25 cosines at every pixel.
    angles = np.linspace(-np.pi, np.pi, _ANGLE_SAMPLES)
    shape = 1.0 + amps @ np.cos(ks[:, None] * angles[None, :] + phases[:, None])
    table = radius * np.clip(shape, 0.35, None).astype(np.float32)
    idx = ((theta + np.pi) * ((_ANGLE_SAMPLES - 1) / (2 * np.pi)) + 0.5).astype(np.intp)
    r_theta = table[idx]
    ragged = _smooth_field(rng, size, max(8, size // 6)) * (border * 1.5 / size)
    edge = rng.uniform(1.0, 5.0) / size
    inside = r_theta - rho - ragged
    alpha = np.clip(inside / edge + 0.5, 0.0, 1.0)
    rel = np.clip(1.0 - inside / r_theta, 0.0, 1.0)  # 0 at the centre, 1 at the border

    # --- lesion colour ----------------------------------------------------------------------
    base = _LIGHT_BROWN + (_MID_BROWN - _LIGHT_BROWN) * rng.uniform(0.0, 0.4 + 0.6 * colour)
    second = _MID_BROWN + (_DARK_BROWN - _MID_BROWN) * rng.uniform(0.0, 0.8)
    t = 1.0 - rel if rng.random() < 0.6 else rel**2  # darker centre or darker rim
    lesion = base + (second - base) * (t * rng.uniform(0.3, 1.0))[..., None]
    lesion = lesion * (1.0 + 0.08 * _smooth_field(rng, size, 8))[..., None]
    for patch_colour, prior in _VARIEGATION:
        if rng.random() > prior * (0.05 + 0.95 * colour):
            continue
        field = _smooth_field(rng, size, int(rng.integers(5, 10)))
        coverage = np.clip(field - (1.8 - 2.6 * colour + rng.normal(0.0, 0.3)), 0.0, 1.0)
        weight = (coverage * (0.3 + 0.7 * colour))[..., None]
        lesion = lesion * (1.0 - weight) + patch_colour * weight
    n_dots = int(rng.poisson(0.5 + 8.0 * colour**2))
    if n_dots:
        # Dots and globules: few and central in benign lesions, many and scattered in atypical ones.
        dots = _dots_mask(rng, size, n_dots, (cx, cy), radius * (0.3 + 0.7 * colour))
        weight = (dots * rng.uniform(0.25, 0.6))[..., None]
        lesion = lesion * (1.0 - weight) + _DARK_BROWN * 0.6 * weight

    # Pigment network: a regular mesh for benign lesions, wobbling as the score rises.
    freq = rng.uniform(14.0, 22.0) * size / 128
    angle = rng.uniform(0.0, np.pi / 2)
    u = math.cos(angle) * xx + math.sin(angle) * yy  # math, not np: keeps float32 (NEP 50)
    v = -math.sin(angle) * xx + math.cos(angle) * yy
    wobble = _smooth_field(rng, size, 10) * (0.06 * network_irregularity)
    mesh = np.cos(2 * np.pi * freq * (u + wobble)) * np.cos(2 * np.pi * freq * (v - wobble))
    lesion = lesion * (1.0 - rng.uniform(0.03, 0.08) * (mesh + 1.0))[..., None]

    # Lesions look darker on darker skin; scale by the skin's luminance relative to light skin.
    lesion = lesion * (0.55 + 0.45 * float(skin @ _LUMA) / 0.7)
    a = (alpha * rng.uniform(0.75, 0.95))[..., None]
    img = img * (1.0 - a) + lesion * a

    # --- hairs and dermoscope vignette (independent of the label) -----------------------------
    if rng.random() < 0.35:
        hair = _hair_mask(rng, size)[..., None] * rng.uniform(0.6, 0.9)
        img = img * (1.0 - hair) + rng.uniform(0.05, 0.2) * hair
    if rng.random() < 0.7:
        vy, vx = (0.5 + float(c) for c in rng.normal(0.0, 0.02, 2))
        v_radius = rng.uniform(0.45, 0.72)
        softness = rng.uniform(0.01, 0.05)
        v = np.clip((np.hypot(xx - vx, yy - vy) - v_radius) / softness, 0.0, 1.0)[..., None]
        img = img * (1.0 - v * rng.uniform(0.85, 0.98))

    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.012)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    """The generator for one image, keyed by (seed, split, label, index).

    Keying each image on its own makes the first N images identical whatever the dataset size,
    so a bigger synthetic set extends a smaller one instead of reshuffling it.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], label, index]))


def is_synthetic(root: str | os.PathLike[str]) -> bool:
    """True when ``root`` (or the dataset holding this ``train``/``test`` split) is synthetic."""
    root = Path(root)
    if (root / SYNTHETIC_MARKER).is_file():
        return True
    return root.name in SPLITS and (root.parent / SYNTHETIC_MARKER).is_file()


def _marker_text(n_train: int, n_test: int, size: int, seed: int, fmt: str) -> str:
    # No timestamps or host names: the same arguments must give a byte-identical dataset.
    return (
        "SYNTHETIC DATA - NOT REAL DERMOSCOPY IMAGES\n"
        "\n"
        "Every image under this folder was drawn by skinlesion.data.synth (procedural shapes and noise).\n"
        "It exists so the pipeline, tests and demos run without the real dataset. Models trained or\n"
        "evaluated on it say nothing about real skin lesions; label every result SYNTHETIC.\n"
        "\n"
        f"generator_version: {GENERATOR_VERSION}\n"
        f"seed: {seed}\n"
        f"size: {size}\n"
        f"format: {fmt}\n"
        f"train_per_class: {n_train}\n"
        f"test_per_class: {n_test}\n"
    )


def _is_previous_synthetic(root: Path) -> bool:
    """A folder we may replace: marker present and every other file is one of our images."""
    if not (root / SYNTHETIC_MARKER).is_file():
        return False
    for p in root.rglob("*"):
        if p.is_dir() or p == root / SYNTHETIC_MARKER:
            continue
        rel = p.relative_to(root).parts
        ok = (
            len(rel) == 3
            and rel[0] in SPLITS
            and rel[1] in CLASS_NAMES
            and p.name.startswith("synth_")
            and p.suffix in FORMATS.values()
        )
        if not ok:
            return False
    return True


def _refuse_dangerous_target(root: Path) -> None:
    """Even with overwrite=True, never replace a folder that holds the project, a home or ``/``."""
    resolved = root.resolve()
    protected = {Path(resolved.anchor), Path.home().resolve()}
    if resolved in protected or (resolved / ".git").exists() or (resolved / "pyproject.toml").exists():
        raise SynthError(f"refusing to replace {root}: it looks like a home, project or system folder")
    cwd = Path.cwd().resolve()
    if cwd == resolved or resolved in cwd.parents:
        raise SynthError(f"refusing to replace {root}: it contains the current working directory")


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        # Explicit quality and subsampling, no EXIF: output depends only on the pixels.
        Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    else:
        Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate_dataset(
    root: str | os.PathLike[str],
    *,
    n_train_per_class: int = 60,
    n_test_per_class: int = 20,
    size: int = 128,
    seed: int = 0,
    fmt: str = "JPEG",
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the Kaggle layout and return its root.

    Layout: ``<root>/{train,test}/{benign,malignant}/synth_<split>_<class>_<i>.jpg`` plus
    ``<root>/SYNTHETIC.txt`` (no ``test/`` when ``n_test_per_class=0``). The same arguments
    give byte-identical files.

    Safety: a non-empty ``root`` is replaced only if it is a previous synthetic dataset (marker
    present, nothing but our images), or when ``overwrite=True``, which deletes its contents.
    Files are written to a hidden sibling folder, the marker last, and swapped in with a rename,
    so an interrupted run leaves either the old folder or nothing at ``root``, never a partial
    dataset (a stray ``.<name>.synth-*`` sibling after a hard kill can be deleted).
    """
    fmt = str(fmt).upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in FORMATS:
        raise SynthError(f"fmt must be one of {sorted(FORMATS)}, got {fmt!r}")
    for name, n in (("n_train_per_class", n_train_per_class), ("n_test_per_class", n_test_per_class)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise SynthError(f"{name} must be a non-negative int, got {n!r}")
    if n_train_per_class < 2:
        raise SynthError("n_train_per_class must be >= 2 so a validation split can be carved out")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative int, got {seed!r}")

    # Absolute but not symlink-resolved, so "." and "data/x" have a parent and a name to swap.
    root = Path(os.path.abspath(Path(root).expanduser()))
    if root.is_symlink():
        # The swap below renames root itself: a link would be replaced by a folder, not followed.
        raise SynthError(f"{root} is a symbolic link; give the folder it points to ({os.path.realpath(root)}) "
                         "or a new folder")
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root} exists and is not a folder")
    non_empty = root.is_dir() and any(root.iterdir())
    if non_empty and not _is_previous_synthetic(root):
        if not overwrite:
            raise SynthError(
                f"{root} is not empty and is not a synthetic dataset made by skinlesion.data.synth; "
                "refusing to write there so real data is never clobbered. Choose an empty or new "
                "folder, or pass overwrite=True (--overwrite) to DELETE its contents and replace them."
            )
        _refuse_dangerous_target(root)

    root.parent.mkdir(parents=True, exist_ok=True)
    ext = FORMATS[fmt]
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.synth-", dir=root.parent))
    try:
        counts = {"train": n_train_per_class, "test": n_test_per_class}
        for split in SPLITS:
            if counts[split] == 0:
                continue  # an empty test/ folder would read as a broken dataset; leave it out
            for label, cls in enumerate(CLASS_NAMES):
                folder = tmp / split / cls
                folder.mkdir(parents=True)
                for i in range(counts[split]):
                    img = synth_image(label, image_rng(seed, split, label, i), size)
                    (folder / f"synth_{split}_{cls}_{i}{ext}").write_bytes(_encode(img, fmt))
        (tmp / SYNTHETIC_MARKER).write_text(
            _marker_text(n_train_per_class, n_test_per_class, size, int(seed), fmt), encoding="utf-8"
        )
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a dataset should be as readable as any folder
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root

"""Pictures that are not skin: the "other" class of the image-type gate.

Nothing on PyPI ships a few hundred varied, licence-clean, offline non-skin pictures, so the set
is built from two parts:

* ``photo``: crops of the sample photographs bundled with scikit-image, scikit-learn and
  matplotlib (cat, astronaut, coffee, rocket, a retina fundus photo, microscopy, text pages...),
  grouped by the photograph they come from, so no photograph is on both sides of a split;
* generated families, each drawn from its own seeded generator: ``document`` (pages of text),
  ``screenshot`` (application windows), ``chart`` (matplotlib plots), ``scene`` (landscapes),
  ``pattern`` (shapes, stripes, smooth noise).

Every image is 300x300 RGB uint8 (the size of the seed dataset) and fully determined by its
name, so the set is reproducible on any machine and never stored in git.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 300
GENERATED_FAMILIES = ("document", "screenshot", "chart", "scene", "pattern")
FAMILIES = ("photo", *GENERATED_FAMILIES)

_WORDS = tuple("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her all she there would their we him been has when who will more no if out so said what "
          "up its about into than them can only other new some could time these two may then do first any my now "
          "such like our over man me even most made after also did many before must through back years where much "
          "your way well down should because each just those people how too little state good very make world "
          "still own see men work long get here between both life being under never day same another know while "
          "last might us great old year off come since against go came right used take three report invoice total "
          "meeting agenda summary results figure table section chapter page account balance order delivery".split())


@dataclass(frozen=True)
class NonSkinImage:
    """One generated or cropped picture: ``name`` determines it; ``group`` keeps relatives together."""

    name: str
    family: str
    group: str
    image: np.ndarray


# -- photographs bundled with installed libraries --------------------------------------------------------
def library_photos() -> dict[str, np.ndarray]:
    """Sample photographs shipped inside scikit-image, scikit-learn and matplotlib (no download)."""
    import matplotlib
    import skimage.data
    import sklearn.datasets

    files: list[Path] = []
    sk_dir = Path(skimage.data.data_dir)
    files += sorted(p for p in sk_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".gif", ".tif"})
    files += [Path(f) for f in sklearn.datasets.load_sample_images().filenames]
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    files += sorted(p for p in mpl.glob("*") if p.suffix.lower() in {".png", ".jpg"})
    photos: dict[str, np.ndarray] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                im.seek(0)
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError):
            continue
        if min(rgb.shape[:2]) < 64:
            continue
        photos[f.stem] = rgb
    return photos


def photo_group(stem: str) -> str:
    """The photograph a file belongs to (``motorcycle_left`` and ``motorcycle_right`` are one scene)."""
    return stem.split("_")[0].lower()


def _crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.45, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    im = Image.fromarray(photo[y:y + side, x:x + side]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im)


# -- generated families ----------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return (r, g, b)


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(_WORDS, n))


def _document(rng: np.random.Generator) -> Image.Image:
    paper = (int(rng.integers(235, 256)), int(rng.integers(230, 256)), int(rng.integers(215, 256)))
    im = Image.new("RGB", (SIZE, SIZE), paper)
    d = ImageDraw.Draw(im)
    ink = _colour(rng, 0, 70)
    y = int(rng.integers(8, 30))
    d.text((int(rng.integers(8, 40)), y), _sentence(rng, 3).title(), fill=ink, font=_font(int(rng.integers(16, 26))))
    y += 34
    size = int(rng.integers(9, 14))
    while y < SIZE - 12:
        if rng.random() < 0.1:   # a table or a rule
            d.line((10, y, SIZE - 10, y), fill=ink, width=1)
            y += 6
        d.text((10, y), _sentence(rng, int(rng.integers(4, 9))), fill=ink, font=_font(size))
        y += size + int(rng.integers(3, 8))
    return im.rotate(float(rng.uniform(-4, 4)), fillcolor=paper)


def _screenshot(rng: np.random.Generator) -> Image.Image:
    dark = rng.random() < 0.4
    bg = _colour(rng, 20, 60) if dark else _colour(rng, 225, 256)
    fg = (230, 230, 230) if dark else (30, 30, 30)
    im = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(im)
    bar = _colour(rng, 40, 220)
    d.rectangle((0, 0, SIZE, 24), fill=bar)
    for i, c in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
        d.ellipse((8 + 16 * i, 7, 18 + 16 * i, 17), fill=c)
    d.text((70, 5), _sentence(rng, 3), fill=(255, 255, 255), font=_font(12))
    side = int(rng.integers(0, 90))
    if side:
        d.rectangle((0, 24, side, SIZE), fill=_colour(rng, 60, 200))
        for y in range(36, SIZE, 22):
            d.text((6, y), _sentence(rng, 1), fill=fg, font=_font(11))
    y = 36
    while y < SIZE - 20:
        kind = rng.random()
        if kind < 0.2:
            d.rounded_rectangle((side + 10, y, side + 10 + int(rng.integers(50, 110)), y + 22), 5, fill=bar)
            d.text((side + 16, y + 4), _sentence(rng, 1), fill=(255, 255, 255), font=_font(11))
            y += 30
        elif kind < 0.35:
            h = int(rng.integers(30, 80))
            d.rectangle((side + 10, y, SIZE - 10, y + h), fill=_colour(rng), outline=fg)
            y += h + 8
        else:
            d.text((side + 10, y), _sentence(rng, int(rng.integers(2, 7))), fill=fg, font=_font(12))
            y += 18
    return im


def _chart(rng: np.random.Generator) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 3), dpi=100)
    ax = fig.add_subplot()
    kind = int(rng.integers(0, 5))
    x = np.arange(int(rng.integers(5, 40)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.normal(size=len(x))))
    elif kind == 1:
        ax.bar(x[:12], rng.uniform(1, 10, len(x[:12])), color=np.array(_colour(rng)) / 255)
    elif kind == 2:
        ax.scatter(rng.normal(size=80), rng.normal(size=80), c=rng.uniform(size=80), s=12)
    elif kind == 3:
        ax.pie(rng.uniform(1, 5, int(rng.integers(3, 7))))
    else:
        ax.hist(rng.normal(size=500), bins=int(rng.integers(8, 30)))
    ax.set_title(_sentence(rng, 2), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB").resize((SIZE, SIZE))


def _scene(rng: np.random.Generator) -> Image.Image:
    top, bottom = np.array(_colour(rng, 60, 256)), np.array(_colour(rng, 100, 256))
    t = np.linspace(0, 1, SIZE)[:, None, None]
    sky = (top * (1 - t) + bottom * t).astype(np.uint8) * np.ones((1, SIZE, 1), np.uint8)
    im = Image.fromarray(sky)
    d = ImageDraw.Draw(im)
    r = int(rng.integers(12, 40))
    cx, cy = int(rng.integers(r, SIZE - r)), int(rng.integers(r, SIZE // 2))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_colour(rng, 180, 256))
    for _ in range(int(rng.integers(1, 4))):   # mountain ranges
        base = int(rng.integers(SIZE // 2, SIZE - 40))
        pts = [(0, SIZE)] + [(int(x), base - int(rng.integers(0, 90))) for x in np.linspace(0, SIZE, 7)] + [(SIZE, SIZE)]
        d.polygon(pts, fill=_colour(rng, 20, 160))
    ground = int(rng.integers(SIZE - 90, SIZE - 30))
    d.rectangle((0, ground, SIZE, SIZE), fill=_colour(rng, 20, 140))
    for _ in range(int(rng.integers(0, 6))):   # trees and houses
        x, w = int(rng.integers(0, SIZE)), int(rng.integers(8, 30))
        if rng.random() < 0.5:
            d.polygon([(x, ground - 3 * w), (x - w, ground), (x + w, ground)], fill=_colour(rng, 0, 120))
        else:
            d.rectangle((x, ground - w, x + w, ground), fill=_colour(rng))
    return im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


def _pattern(rng: np.random.Generator) -> Image.Image:
    kind = int(rng.integers(0, 4))
    if kind == 0:   # smooth coloured noise
        from scipy.ndimage import gaussian_filter, zoom

        small = rng.normal(size=(int(rng.integers(4, 20)),) * 2 + (3,))
        big = zoom(small, (SIZE / small.shape[0], SIZE / small.shape[1], 1), order=3)
        big = gaussian_filter(big, (3, 3, 0))
        big = (big - big.min()) / (np.ptp(big) + 1e-9) * 255
        return Image.fromarray(big.astype(np.uint8))
    im = Image.new("RGB", (SIZE, SIZE), _colour(rng))
    d = ImageDraw.Draw(im)
    if kind == 1:   # stripes or checks
        step = int(rng.integers(8, 50))
        c = _colour(rng)
        for i in range(0, SIZE, 2 * step):
            d.rectangle((i, 0, i + step, SIZE), fill=c)
            if rng.random() < 0.5:
                d.rectangle((0, i, SIZE, i + step), fill=_colour(rng))
    else:           # random shapes
        for _ in range(int(rng.integers(5, 40))):
            x0, y0 = (int(v) for v in rng.integers(-40, SIZE, 2))
            x1, y1 = x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))
            shape = (d.ellipse, d.rectangle)[int(rng.integers(0, 2))]
            shape((x0, y0, x1, y1), fill=_colour(rng), outline=_colour(rng))
    return im


_GENERATORS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "document": _document, "screenshot": _screenshot, "chart": _chart, "scene": _scene, "pattern": _pattern,
}


def _seed(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def generate(family: str, index: int, *, photos: dict[str, np.ndarray] | None = None) -> NonSkinImage:
    """The ``index``-th picture of ``family``; the same arguments always give the same pixels."""
    rng = np.random.default_rng(_seed("nonskin", family, index))
    if family == "photo":
        photos = library_photos() if photos is None else photos
        names = sorted(photos)
        if not names:
            raise ValueError("no sample photographs found in scikit-image / scikit-learn / matplotlib")
        stem = names[index % len(names)]
        img = _crop(photos[stem], rng)
        return NonSkinImage(f"photo-{stem}-{index:04d}", "photo", f"photo:{photo_group(stem)}", img)
    if family not in _GENERATORS:
        raise ValueError(f"unknown non-skin family {family!r}; choose from {', '.join(FAMILIES)}")
    img = np.asarray(_GENERATORS[family](rng).convert("RGB"))
    # Generated pictures are independent draws: each is its own group.
    return NonSkinImage(f"{family}-{index:04d}", family, f"{family}:{index}", img)


def iter_nonskin(per_family: int, families: tuple[str, ...] = FAMILIES) -> Iterator[NonSkinImage]:
    """``per_family`` pictures of each family (photos cycle through the library photographs)."""
    photos = library_photos() if "photo" in families else None
    for fam in families:
        for i in range(per_family):
            yield generate(fam, i, photos=photos)


def write_nonskin(out_dir: str | os.PathLike[str], per_family: int = 100,
                  families: tuple[str, ...] = FAMILIES) -> list[tuple[Path, NonSkinImage]]:
    """Write the set as JPEG files ``out_dir/<family>/<name>.jpg`` (existing files are kept)."""
    out = Path(out_dir)
    written = []
    for item in iter_nonskin(per_family, families):
        path = out / item.family / f"{item.name}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(item.image).save(tmp, "JPEG", quality=92)
            os.replace(tmp, path)
        written.append((path, item))
    return written

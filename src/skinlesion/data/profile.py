"""What each source's images look like: size, framing and colour, measured per image.

The sources differ in ways a classifier can latch on to (the collection shortcut): the Kaggle
images are 300x300 crops, HAM10000 is 4:3 with many full-field vignettes, ISIC 2017 is squashed
to 256x256. These statistics put numbers on that for notebook 01.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CORNER = 0.12      # side of each corner patch, as a fraction of the image side
DARK_LEVEL = 40    # luminance (0-255) below which a corner pixel counts as vignette


def image_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size, mean colour and how dark the four corners are (a dermoscope's vignette) for one image."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    ch, cw = max(1, int(h * CORNER)), max(1, int(w * CORNER))
    corners = np.concatenate([lum[:ch, :cw].ravel(), lum[:ch, -cw:].ravel(), lum[-ch:, :cw].ravel(),
                              lum[-ch:, -cw:].ravel()])
    means = rgb.reshape(-1, 3).mean(0)
    return {"width": w, "height": h, "aspect": round(w / h, 3), "mean_r": float(means[0]),
            "mean_g": float(means[1]), "mean_b": float(means[2]), "luminance_std": float(lum.std()),
            "dark_corner_fraction": float((corners < DARK_LEVEL).mean()), "bytes": Path(path).stat().st_size}


def profile_records(records: pd.DataFrame, roots: dict[str, Path], *, n_per_source: int | None = 300,
                    seed: int = 0, workers: int = 2) -> pd.DataFrame:
    """:func:`image_profile` of a seeded sample of each source's records (all with ``n_per_source=None``)."""
    parts = []
    for _, g in records.groupby("source", sort=False):
        parts.append(g if n_per_source is None or len(g) <= n_per_source
                     else g.sample(n=n_per_source, random_state=seed))
    sample = pd.concat(parts, ignore_index=True)
    files = [roots[s] / p for s, p in zip(sample["source"], sample["path"])]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        stats = list(pool.map(image_profile, files))
    return pd.concat([sample[["source", "image_id", "label", "diagnosis"]].reset_index(drop=True),
                      pd.DataFrame(stats)], axis=1)


def profile_summary(profiles: pd.DataFrame) -> pd.DataFrame:
    """Per source: typical size, share of images with a vignette, mean colour."""
    g = profiles.groupby("source", sort=False)
    return pd.DataFrame({
        "images measured": g.size(),
        "typical size": g.apply(lambda d: f"{int(d['width'].median())}x{int(d['height'].median())}", include_groups=False),
        "vignette (dark corners > 50 %)": g["dark_corner_fraction"].apply(lambda s: f"{(s > 0.5).mean():.0%}"),
        "mean R": g["mean_r"].mean().round(1), "mean G": g["mean_g"].mean().round(1),
        "mean B": g["mean_b"].mean().round(1), "luminance sd": g["luminance_std"].mean().round(1),
        "KiB per image": (g["bytes"].mean() / 1024).round(1),
    })

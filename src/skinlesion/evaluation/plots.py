"""Figures for the notebooks (display only; the numbers come from other modules).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing leaks
between cells and a notebook shows it with ``display(fig)``. Evaluation figures (ROC, PR,
reliability, confusion, training curves) live in :mod:`skinlesion.evaluation.reports`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from skinlesion import CLASS_NAMES

DPI = 80  # keeps each committed notebook well under 3 MB
CLASS_COLOURS = {"benign": "#4C72B0", "malignant": "#C44E52"}


def _fig(width: float, height: float, nrows: int = 1, ncols: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _thumb(path: str | os.PathLike[str], size: int = 160) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as src:
        im = src.convert("RGB")
        im.thumbnail((size, size))
        return np.asarray(im)


def image_grid(paths: Sequence[str | os.PathLike[str]], titles: Sequence[str] | None = None, *,
               ncols: int = 8, title: str | None = None, cell: float = 1.5) -> Figure:
    """Thumbnails in a grid, each with an optional caption."""
    n = max(1, len(paths))
    nrows = int(np.ceil(n / ncols))
    fig, axes = _fig(cell * ncols, cell * nrows + (0.3 if title else 0), nrows, ncols)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(paths):
            ax.imshow(_thumb(paths[i]))
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def class_grids(root: str | os.PathLike[str], files: pd.DataFrame, n: int = 8, seed: int = 0) -> Figure:
    """One row of ``n`` random training images per class."""
    rows = []
    for name in CLASS_NAMES:
        pool = files[(files["class"] == name) & (files["split"] == "train")]
        rows.append(pool.sample(n=min(n, len(pool)), random_state=seed))
    fig, axes = _fig(1.5 * n, 3.4, 2, n)
    for r, (name, df) in enumerate(zip(CLASS_NAMES, rows)):
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(df):
                ax.imshow(_thumb(Path(root) / df["path"].iloc[c]))
        axes[r][0].set_title(name, fontsize=9, loc="left", color=CLASS_COLOURS[name])
    return fig


def _pair_columns(columns: list[tuple[tuple[Path, str], tuple[Path, str], str]], *, title: str | None,
                  height: float) -> Figure:
    """Two images per column (top, bottom), each with a caption, and a note under each column."""
    n = max(1, len(columns))
    fig, axes = _fig(1.9 * n, height, 2, n)
    for c in range(n):
        for r in range(2):
            axes[r][c].set_axis_off()
        if c >= len(columns):
            continue
        *images, note = columns[c]
        for r, (path, caption) in enumerate(images):
            axes[r][c].imshow(_thumb(path))
            axes[r][c].set_title(caption, fontsize=7)
        axes[1][c].text(0.5, -0.12, note, transform=axes[1][c].transAxes, ha="center", va="top", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pair_grid(root: str | os.PathLike[str], pairs: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Test image beside its train duplicate, one pair per column, with the match details."""
    def side(row: pd.Series, key: str, lab: str) -> tuple[Path, str]:
        p = Path(row[key])
        return Path(root) / p, f"{p.parent.parent.name}/{CLASS_NAMES[int(row[lab])]}\n{p.name}"

    columns = [(side(row, "test_path", "test_label"), side(row, "train_path", "train_label"),
                f"{row['kind']}: pHash {int(row['phash_distance'])}, r={row['thumb_correlation']:.2f}")
               for _, row in pairs.iterrows()]
    return _pair_columns(columns, title=title, height=4.2)


def stat_histograms(stats: pd.DataFrame, columns: Sequence[str], *, by: str = "class",
                    titles: Sequence[str] | None = None) -> Figure:
    """Overlaid per-class histograms of image statistics (e.g. mean red, file size)."""
    fig, axes = _fig(3.0 * len(columns), 2.6, 1, len(columns))
    for i, (ax, col) in enumerate(zip(axes[0], columns)):
        lo, hi = np.nanpercentile(stats[col], [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        for name, g in stats.groupby(by):
            ax.hist(g[col], bins=bins, alpha=0.55, density=True, label=str(name),
                    color=CLASS_COLOURS.get(str(name)))
        ax.set_title(titles[i] if titles else col, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return fig


def ita_distribution(ita: pd.DataFrame) -> Figure:
    """ITA histogram per class and the share of each skin-tone category."""
    from skinlesion.evaluation.skintone import ITA_CATEGORIES as CATEGORIES

    fig, axes = _fig(9.0, 2.8, 1, 2)
    ok = ita[ita["ita"].notna()]
    bins = np.linspace(-30, 90, 49)
    for name, g in ok.groupby("class"):
        axes[0][0].hist(g["ita"], bins=bins, alpha=0.55, density=True, label=str(name),
                        color=CLASS_COLOURS.get(str(name)))
    axes[0][0].set_xlabel("ITA (degrees; higher = lighter skin)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    order = [c for c in CATEGORIES if c in set(ita["category"])] + sorted(set(ita["category"]) - set(CATEGORIES))
    share = pd.crosstab(ita["category"], ita["class"]).reindex(order).fillna(0)
    share.plot.barh(ax=axes[0][1], color=[CLASS_COLOURS.get(c) for c in share.columns], fontsize=7)
    axes[0][1].set_xlabel("images", fontsize=8)
    axes[0][1].set_ylabel("")
    axes[0][1].legend(fontsize=7)
    return fig


def mistakes_grid(root: str | os.PathLike[str], mistakes: pd.DataFrame, *, ncols: int = 8,
                  title: str | None = None) -> Figure:
    """Wrong predictions with their true class and P(malignant)."""
    titles = [f"true {CLASS_NAMES[int(y)]}\nP(mal)={p:.2f}" for y, p in zip(mistakes["y_true"], mistakes["probability"])]
    return image_grid([Path(root) / p for p in mistakes["path"]], titles, ncols=ncols, title=title, cell=1.6)


def sanity_maps(image: np.ndarray, result: dict, *, title: str | None = None) -> Figure:
    """The original explanation beside the maps of randomised models (from ``sanity_check``)."""
    from skinlesion.explain.overlay import overlay

    labels = [k for k in result if "heatmap" in result[k]]
    fig, axes = _fig(2.0 * len(labels), 2.4, 1, len(labels))
    for ax, k in zip(axes[0], labels):
        ax.imshow(np.asarray(overlay(image, result[k]["heatmap"])))
        sub = "" if k == "original" else f"\nSpearman {result[k]['spearman']:.2f}"
        ax.set_title(k.replace("_", " ") + sub, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def source_grids(records: pd.DataFrame, roots: dict[str, Path], n: int = 6, seed: int = 0) -> Figure:
    """One row per source and class: ``n`` random images, so framing and colour can be compared."""
    rows = [(s, y) for s in records["source"].unique() for y in (0, 1)]
    fig, axes = _fig(1.5 * n, 1.55 * len(rows), len(rows), n)
    for r, (src, y) in enumerate(rows):
        pool = records[(records["source"] == src) & (records["label"] == y)]
        pick = pool.sample(n=min(n, len(pool)), random_state=seed)
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(pick):
                ax.imshow(_thumb(roots[src] / pick["path"].iloc[c]))
        axes[r][0].set_title(f"{src} · {CLASS_NAMES[y]}", fontsize=8, loc="left", color=CLASS_COLOURS[CLASS_NAMES[y]])
    return fig


def duplicate_pairs_grid(pairs: pd.DataFrame, records: pd.DataFrame, roots: dict[str, Path], *,
                         title: str | None = None) -> Figure:
    """Two images of each audited pair, one pair per column, with source, diagnosis and the match scores.

    ``pairs`` has the columns of :func:`skinlesion.data.audit.audit_records` (plus optionally
    ``thumb64_correlation``).
    """
    idx = records.set_index(["source", "image_id"])

    def side(row: pd.Series, s: str) -> tuple[Path, str]:
        rec = idx.loc[(row[f"source_{s}"], row[f"image_{s}"])]
        return (roots[row[f"source_{s}"]] / rec["path"],
                f"{row[f'source_{s}']} · {rec['diagnosis']}\n{Path(str(row[f'image_{s}'])).name[:22]}")

    columns = []
    for _, row in pairs.iterrows():
        extra = f", r64={row['thumb64_correlation']:.2f}" if "thumb64_correlation" in row else ""
        columns.append((side(row, "a"), side(row, "b"),
                        f"pHash {int(row['phash_distance'])}, r16={row['thumb_correlation']:.2f}{extra}"))
    return _pair_columns(columns, title=title, height=4.4)

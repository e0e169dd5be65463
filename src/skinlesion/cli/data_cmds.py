"""``skinlesion data ...``: download, generate, list and audit datasets."""
from __future__ import annotations

from pathlib import Path

import click

from skinlesion import config
from skinlesion.cli.base import friendly, main
from skinlesion.data.audit import PHASH_MAX_DISTANCE, THUMB_MIN_CORRELATION


@main.group()
def data() -> None:
    """Download, generate or audit datasets."""


@data.command("download")
@click.option("--source", "source", type=click.Choice(["kaggle", "ham10000", "isic2017"]), default="kaggle", show_default=True)
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Target folder (default data/raw/<source folder>).")
@friendly
def data_download(source: str, dest: Path | None) -> None:
    """Download a data source from its official archive (fails fast offline, saying how to get it by hand)."""
    from skinlesion.data.download import download_source

    click.echo(f"{source} ready at {download_source(source, dest)}")


@data.command("synth")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (default data/synthetic).")
# The generator's own limits (data.synth): a validation split needs 2 training images per class,
# and images are at least 32 pixels; a dataset without test images could not be evaluated.
@click.option("--n-train", type=click.IntRange(min=2), default=300, show_default=True, help="Training images per class.")
@click.option("--n-test", type=click.IntRange(min=1), default=100, show_default=True, help="Test images per class.")
@click.option("--size", type=click.IntRange(min=32), default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@friendly
def data_synth(out, n_train, n_test, size, seed, overwrite) -> None:
    """Generate a deterministic SYNTHETIC dataset in the Kaggle layout."""
    from skinlesion.data.synth import generate_dataset

    out = out or config.data_dir() / "synthetic"
    path = generate_dataset(out, n_train_per_class=n_train, n_test_per_class=n_test, size=size, seed=seed, overwrite=overwrite)
    click.echo(f"SYNTHETIC dataset written to {path}")


@data.command("sources")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def data_sources(as_json) -> None:
    """List every data source found, with images per label and per split."""
    from skinlesion.data.sources import find_sources
    from skinlesion.io import dumps_json

    found, missing = find_sources()
    if as_json:
        click.echo(dumps_json({"found": {n: s.summary() for n, s in found.items()}, "missing": missing}))
        return
    for name, src in found.items():
        d = src.summary()
        click.echo(f"{name:12s} {d['images']:6d} images ({d['benign']} benign, {d['malignant']} malignant), "
                   f"{d['groups']} lesion groups, {d['modality']} — {d['root']}")
        splits: dict[str, dict[str, int]] = d["splits"]  # type: ignore[assignment]
        for split, counts in splits.items():
            click.echo(f"{'':12s}   {split:6s} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        click.echo(f"{'':12s}   licence: {d['licence']}")
        if d["problems"]:
            click.echo(f"{'':12s}   problems: {d['problems']}")
    for name, why in missing.items():
        click.echo(f"{name:12s} not found: {why}")


@data.command("audit")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="The Kaggle-layout dataset whose test split is audited against its train split (default: the one "
                   "`make run` would find).")
@click.option("--sources", default=None, help="Audit these sources within and across each other (e.g. kaggle,ham10000,isic2017) instead of one dataset's test vs train.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default reports/audit, or reports/audit/sources with --sources).")
@click.option("--max-distance", default=PHASH_MAX_DISTANCE, show_default=True, type=click.IntRange(min=0),
              help="pHash Hamming distance (bits) that counts as a near duplicate.")
@click.option("--min-correlation", default=THUMB_MIN_CORRELATION, show_default=True,
              type=click.FloatRange(min=0.0, max=1.0),
              help="Correlation of the 16x16 grey thumbnails a near duplicate also needs.")
@friendly
def data_audit(data_dir, sources, out, max_distance, min_correlation) -> None:
    """Find exact and near duplicates (test vs train of one dataset, or within and across sources)."""
    from skinlesion.data.audit import audit, write_audit
    from skinlesion.data.datasets import build_splits, resolve_training_data

    if sources:
        _audit_sources(sources, out, max_distance, min_correlation)
        return
    root = resolve_training_data(data_dir)
    splits = build_splits(root)
    pairs, test = audit(root, splits, max_distance=max_distance, min_correlation=min_correlation)
    path = write_audit(pairs, test, out)
    n_exact = pairs[pairs["kind"] == "exact"]["test_path"].nunique()
    n_near = pairs[pairs["kind"] == "near"]["test_path"].nunique()
    click.echo(f"test images: {len(test)}; with an exact copy in train: {n_exact}; near duplicates: {n_near}; "
               f"de-duplicated test subset: {int((~test['leaked']).sum())} images")
    click.echo(f"written: {path / 'duplicates.csv'}, {path / 'dedup_test.csv'}")




def _audit_sources(spec: str, out: Path | None, max_distance: int, min_correlation: float) -> None:
    from skinlesion.data.audit import audit_records, overlap_table, write_source_audit
    from skinlesion.data.sources import combined_records, load_source, parse_sources

    found = [load_source(n) for n in parse_sources(spec)]
    records = combined_records(found)
    pairs = audit_records(records, {s.name: s.root for s in found}, max_distance=max_distance,
                          min_correlation=min_correlation)
    overlap = overlap_table(pairs, records)
    path = write_source_audit(pairs, overlap, out)
    click.echo(overlap.to_string(index=False))
    click.echo(f"written: {path / 'pairs.csv'}, {path / 'overlap.csv'}")

"""``skinlesion data ...``: download, generate, list and audit datasets."""
from __future__ import annotations

from pathlib import Path

import click

from skinlesion import config
from skinlesion.cli.base import friendly, main


@main.group()
def data() -> None:
    """Download, generate or audit datasets."""


@data.command("download")
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Target folder (default data/raw/melanoma_cancer_dataset).")
@friendly
def data_download(dest: Path | None) -> None:
    """Download the Kaggle dataset with kagglehub."""
    from skinlesion.data.datasets import download

    click.echo(f"dataset ready at {download(dest)}")


@data.command("synth")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (default data/synthetic).")
@click.option("--n-train", default=300, show_default=True, help="Training images per class.")
@click.option("--n-test", default=100, show_default=True, help="Test images per class.")
@click.option("--size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@friendly
def data_synth(out, n_train, n_test, size, seed, overwrite) -> None:
    """Generate a deterministic SYNTHETIC dataset in the Kaggle layout."""
    from skinlesion.data.synth import generate_dataset

    out = out or config.data_dir() / "synthetic"
    path = generate_dataset(out, n_train_per_class=n_train, n_test_per_class=n_test, size=size, seed=seed, overwrite=overwrite)
    click.echo(f"SYNTHETIC dataset written to {path}")


@data.command("audit")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for duplicates.csv and dedup_test.csv (default reports/audit).")
@click.option("--max-distance", default=None, type=int, help="pHash Hamming distance that counts as near duplicate.")
@friendly
def data_audit(data_dir, out, max_distance) -> None:
    """Find exact and near duplicates between test and train; write the de-duplicated test ids."""
    from skinlesion.data.audit import PHASH_MAX_DISTANCE, audit, write_audit
    from skinlesion.data.datasets import build_splits, resolve_training_data

    root = resolve_training_data(data_dir)
    splits = build_splits(root)
    pairs, test = audit(root, splits, max_distance=max_distance if max_distance is not None else PHASH_MAX_DISTANCE)
    path = write_audit(pairs, test, out)
    n_exact = pairs[pairs["kind"] == "exact"]["test_path"].nunique()
    n_near = pairs[pairs["kind"] == "near"]["test_path"].nunique()
    click.echo(f"test images: {len(test)}; with an exact copy in train: {n_exact}; near duplicates: {n_near}; "
               f"de-duplicated test subset: {int((~test['leaked']).sum())} images")
    click.echo(f"written: {path / 'duplicates.csv'}, {path / 'dedup_test.csv'}")



"""``skinlesion export``: a bundle's model as a TF SavedModel or TFLite file, checked against Keras."""
from __future__ import annotations

from pathlib import Path

import click

from skinlesion import config
from skinlesion.cli.base import friendly, main
from skinlesion.io import dumps_json
from skinlesion.serving.export import DEFAULT_PARITY_N, FORMATS, QUANTIZE


@main.command("export")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="savedmodel (TF serving) or tflite (LiteRT; what `predict --backend tflite` serves).")
@click.option("--quantize", type=click.Choice(QUANTIZE), default=None, help="tflite only: dynamic-range quantisation (int8 weights, float activations).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Export folder (default: BUNDLE/export/<variant>, where the tflite backends look).")
@click.option("--parity-data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="Folder of real images for the parity check (default: the Kaggle test split).")
@click.option("--parity-n", type=click.IntRange(min=1), default=DEFAULT_PARITY_N, show_default=True, help="Images in the parity check.")
@click.option("--force", is_flag=True, help="Replace an existing export.")
@click.option("--evaluate", default="", help="Comma-separated sources (e.g. kaggle or ham10000): AUC of Keras vs the export on each (test split, else all of it), size and latency ratios; written to reports/export/<run-id>/<variant>.json.")
@click.option("--evaluate-out", type=click.Path(path_type=Path), default=None, help="Where --evaluate writes its JSON instead.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def export(bundle, fmt, quantize, out, parity_data, parity_n, force, evaluate, evaluate_out, quiet) -> None:
    """Export BUNDLE's model (input: float32 raw RGB 0-255 at the bundle's size; outputs: pooled
    features and raw probability), then check it against the Keras model on real test images.

    The parity figures go to parity.json in the export folder; a float export that differs by more
    than 1e-4 in probability fails (exit 1) and is never served.
    """
    from skinlesion.data.sources import parse_sources
    from skinlesion.serving.export import export_bundle

    sources = parse_sources(evaluate) if evaluate else []
    if sources and fmt != "tflite":
        raise click.UsageError("--evaluate compares a tflite export with Keras; use it with --format tflite")
    if sources and out is not None:
        raise click.UsageError("--evaluate scores the export the Predictor serves (BUNDLE/export/<variant>); drop --out")
    result = export_bundle(bundle, fmt, quantize=quantize, out=out, parity_data=parity_data, parity_n=parity_n,
                           force=force)
    p = result.parity
    click.echo(f"{result.manifest['variant']} export: {result.folder}")
    click.echo(f"  size {result.manifest['size_bytes'] / 1e6:.1f} MB ({result.manifest['size_ratio_vs_keras']:.2f}x model.keras)")
    click.echo(f"  parity on {p['n_images']} images x {len(p['views'])} view(s): max |dp| served {p['max_abs_dp_served']:.2e}, "
               f"raw {p['max_abs_dp_raw']:.2e}; decision disagreements {p.get('decision_disagreements', 'n/a')}"
               + ("" if p["tolerance"] is None else f"; tolerance {p['tolerance']:g}: passed"))
    if not sources:
        return
    from skinlesion.evaluation.export_check import compare_export, write_comparison

    report = compare_export(bundle, result.manifest["variant"], sources, progress=not quiet)
    path = write_comparison(report, evaluate_out)
    click.echo(dumps_json({"sources": report["sources"], "size": report["size"], "latency": report["latency"]}))
    click.echo(f"written: {config.display_path(path)}")

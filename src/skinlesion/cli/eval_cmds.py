"""Commands that score models: evaluate, compare, model-card and the main job ``run``."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import click

from skinlesion import DISCLAIMER, config
from skinlesion.cli.base import friendly, main
from skinlesion.metrics.stats import N_BOOTSTRAP


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the bundle's test images are (default: as trained).")
@click.option("--external", multiple=True, help="Extra evaluation set (repeatable): a folder-per-class directory, or a "
              "registered source scored whole, e.g. pad_ufes_20 (phone photos: shows what the image-type gate sets aside).")
@click.option("--no-test", is_flag=True, help="Only evaluate the --external sets.")
@click.option("--tta/--no-tta", default=None, help="Test-time augmentation over the 8 dihedral views (default: as the bundle was calibrated).")
@click.option("--resamples", type=click.IntRange(min=1), default=N_BOOTSTRAP, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Report folder (default reports/<run-id>).")
@click.option("--no-skin-tone", is_flag=True, help="Skip the ITA skin-tone subgroup table (about 40 ms an image).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def evaluate(bundle, data_dir, external, no_test, tta, resamples, out, no_skin_tone, quiet) -> None:
    """Score a bundle on the test split, the de-duplicated test and --external folders; write report.md.

    The report folder (metrics.json, predictions, figures, report.md, MODEL_CARD.md) is replaced as
    a whole once everything is written: a failure part-way leaves the previous report as it was. A
    --out folder holding other files is refused before scoring.
    """
    from skinlesion.bundle.format import load_meta
    from skinlesion.evaluation.evaluate import check_report_dir, evaluate_bundle, format_results, write_evaluation

    check_report_dir(out or config.reports_dir() / load_meta(bundle).run_id)  # before minutes of scoring
    results, preds = evaluate_bundle(bundle, data_dir=data_dir, external=tuple(str(e) for e in external), tta=tta,
                                     n_resamples=resamples, include_test=not no_test, progress=not quiet)
    # Same roots as evaluation_sets uses, so the skin-tone table reads the images that were scored.
    from skinlesion.data.sources import READERS, load_source

    roots: dict[str, Path] = {}
    for e in external:
        if e in READERS and not Path(e).exists():
            roots[f"external:{e}"] = load_source(e).root
        else:
            roots[f"external:{Path(e).name}"] = Path(e)
    if data_dir:
        roots.update(test=Path(data_dir), test_dedup=Path(data_dir))
    path = write_evaluation(results, preds, bundle, out, skin_tone=not no_skin_tone, roots=roots,
                            n_resamples=resamples)
    click.echo(format_results(results))
    click.echo(f"report: {path / 'report.md'}\nmodel card: {path / 'MODEL_CARD.md'}")


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--set", "set_name", default="test", show_default=True, help="Evaluation set to compare: test, test_dedup, test:SOURCE (a multi-source model's, e.g. test:kaggle), external:NAME; the error lists a report's sets.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for compare.md and compare.json (default reports/compare).")
@click.option("--resamples", type=click.IntRange(min=1), default=N_BOOTSTRAP, show_default=True, help="Bootstrap resamples for the AUC-difference CIs.")
@friendly
def compare_cmd(runs, set_name, out, resamples) -> None:
    """Compare evaluated runs (report folders or bundles) on the same images, with paired AUC tests."""
    from skinlesion.evaluation.compare import compare, write_comparison

    markdown, data = compare(list(runs), set_name, n_resamples=resamples)
    path = write_comparison(markdown, data, out)
    click.echo(markdown)
    click.echo(f"written: {path / 'compare.md'}, {path / 'compare.json'}")


@main.command("model-card")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="Evaluation report folder (default reports/<run-id> if it exists).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="File to write, '-' to print (default MODEL_CARD.md in the report folder, else print).")
@friendly
def model_card_cmd(bundle, report_dir, out) -> None:
    """Write a model card (intended use, data, evaluation with CIs, subgroups, limitations)."""
    from skinlesion.bundle.format import load_meta
    from skinlesion.evaluation.common import default_report_dir
    from skinlesion.evaluation.model_card import model_card, write_model_card
    from skinlesion.io import atomic_write_text

    folder = report_dir or default_report_dir(load_meta(bundle))
    if out is None and (folder / "metrics.json").is_file():
        click.echo(f"model card: {write_model_card(bundle, folder)}")
        return
    text = model_card(bundle, report_dir)
    if out is None or str(out) == "-":
        click.echo(text)
        return
    atomic_write_text(out, text)  # a failed write leaves the previous card whole
    click.echo(f"model card: {out}")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Train on this one folder instead of the registered sources.")
@click.option("--backbone", default=None, help="Override the default recipe's backbone.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def run(data_dir, backbone, quiet) -> None:
    """The main job: find data (or download, or synthesise), train the default recipe, evaluate, report.

    With the three dermoscopic sources present (Kaggle, HAM10000, ISIC 2017: `skinlesion data
    sources`) it trains each default member recipe on all of them (models/<member>) and writes their
    ensemble to models/<DEFAULT_MODEL> (the default model; each bundle is replaced once the new one
    is written); otherwise the first member recipe alone on the one dataset found, under a
    time-stamped run id that is served only when named (SKINLESION_MODEL, --model).
    """
    from skinlesion.bundle.format import replacing
    from skinlesion.data.datasets import DataError, download, resolve_training_data
    from skinlesion.data.sources import DERMOSCOPIC_SOURCES, find_sources
    from skinlesion.data.synth import generate_dataset, is_synthetic
    from skinlesion.evaluation.evaluate import check_report_dir, evaluate_bundle, format_results, write_evaluation
    from skinlesion.training.ensemble import make_ensemble
    from skinlesion.training.train import SYNTHETIC_BANNER, default_members, default_recipe
    from skinlesion.training.train import train as run_train

    t0 = time.perf_counter()
    found, _ = find_sources(DERMOSCOPIC_SOURCES) if data_dir is None else ({}, {})
    if len(found) == len(DERMOSCOPIC_SOURCES):
        click.echo("data: " + ", ".join(f"{n} ({config.display_path(s.root)})" for n, s in found.items()))
        cfg = default_recipe(sources=DERMOSCOPIC_SOURCES, progress=not quiet)
    else:
        root = config.resolve_data_dir(data_dir)
        if not root.exists() and (data_dir or os.environ.get("SKINLESION_DATA_DIR")):
            # A folder the user named (--data-dir, SKINLESION_DATA_DIR) must be there: a typo must
            # not fall through to the download and then to training on SYNTHETIC images. Only when
            # nothing was named does the job fetch or make data itself.
            resolve_training_data(data_dir)  # raises DataError: "no dataset at ..., point --data-dir ..."
        if not root.exists():
            click.echo(f"no dataset at {root}; trying the Kaggle download ...")
            try:
                root = download()
            except DataError as exc:
                click.echo(f"download failed: {exc}", err=True)
                root = config.data_dir() / "synthetic"
                if not (root.exists() and is_synthetic(root)):
                    generate_dataset(root, n_train_per_class=300, n_test_per_class=100, size=128, seed=0)
                click.echo(SYNTHETIC_BANNER, err=True)
        click.echo(f"data: {root}")
        cfg = default_recipe(data_dir=str(root), progress=not quiet)
    if backbone:
        cfg = replace(cfg, backbone=backbone)
    # The default recipe on the three sources *is* the default model, so it gets the run id the web
    # app, dashboard and CLI serve. Any other run (one folder, synthetic data, another backbone) is
    # a different model and must not take that name.
    is_default = bool(cfg.sources) and not backbone
    if is_default:
        check_report_dir(config.reports_dir() / config.DEFAULT_MODEL)  # before training, not after
        models = Path(cfg.out_dir) if cfg.out_dir else config.models_dir()
        # Members and ensemble are made in a hidden staging folder and moved in together, so a
        # failure anywhere (a member's training stopped halfway) leaves the served default as it was.
        staging = models / f".staging-{config.DEFAULT_MODEL}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            members = [run_train(replace(c, out_dir=str(staging)))
                       for c in default_members(sources=cfg.sources, progress=cfg.progress).values()]
            # The ensemble is screened by its first member's gate (a member that reads whole images:
            # a lesion crop hides what the gate looks at); fitted before the ensemble records its
            # members' checksums.
            _fit_gate(members[0], quiet)
            make_ensemble(members, out_dir=staging, run_id=config.DEFAULT_MODEL)
            for staged in [*members, staging / config.DEFAULT_MODEL]:
                replacing(models / staged.name, partial(staged.rename, models / staged.name), announce=click.echo)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        bundle_path = models / config.DEFAULT_MODEL
    else:
        bundle_path = run_train(cfg)
        _fit_gate(bundle_path, quiet)
    results, preds = evaluate_bundle(bundle_path, progress=not quiet)
    # As `evaluate` writes it: metrics, predictions, report and card replace reports/<run-id> together.
    report_dir = write_evaluation(results, preds, bundle_path)
    report, card = report_dir / "report.md", report_dir / "MODEL_CARD.md"
    click.echo("")
    click.echo(format_results(results))
    click.echo(f"\nbundle: {bundle_path}\nreport: {report}\nmodel card: {card}\nwall time: {time.perf_counter() - t0:.0f} s")
    serve = "" if is_default else f"SKINLESION_MODEL={config.display_path(bundle_path)} "
    if not is_default:
        click.echo(f"not the default model ({config.DEFAULT_MODEL}: the default recipe on "
                   f"{', '.join(DERMOSCOPIC_SOURCES)}); serve this one by naming it, as below.")
    click.echo(
        "next:\n"
        f"  skinlesion predict path/to/image.jpg --model {bundle_path}\n"
        f"  {serve}make webapp      # Flask app on http://127.0.0.1:8000\n"
        f"  {serve}make dashboard   # Voila dashboard\n"
        f"  skinlesion info {bundle_path}"
    )
    if results.get("synthetic"):
        click.echo(SYNTHETIC_BANNER, err=True)
    click.echo(DISCLAIMER)


def _fit_gate(bundle_path: Path, quiet: bool) -> None:
    """Give the new bundle its image-type gate when the clinical photos (PAD-UFES-20) are found;
    without them the bundle is served ungated, and the run says so."""
    from skinlesion.bundle.format import BundleError
    from skinlesion.data.datasets import DataError
    from skinlesion.training.gate import attach_gate

    try:
        entry = attach_gate(bundle_path, progress=not quiet)
    except (DataError, BundleError) as exc:
        click.echo(f"no image-type gate for this bundle ({exc}); phone photos will get an answer too", err=True)
        return
    click.echo(f"image-type gate fitted: dermoscopic when P >= {entry['threshold']:.2f} ({entry['images']})")



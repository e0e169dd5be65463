"""The image-type gate: fit it into a bundle, and measure how often it sets images aside."""
from __future__ import annotations

from pathlib import Path

import click

from skinlesion.cli.base import friendly, main


@main.group()
def gate() -> None:
    """Image-type gate: dermoscopic vs clinical (phone) photo vs not skin."""


@gate.command("fit")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True, help="Seed of the clinical / non-skin splits.")
@click.option("--settings", default=None,
              help="One of the gate's candidate settings (default: the one chosen by leave-one-source-out; "
                   "`skinlesion gate evaluate` reports the selection).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where a single-folder bundle's dataset is now (default: the folder recorded at training).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def gate_fit(bundle, seed, settings, data_dir, quiet) -> None:
    """Fit the gate on BUNDLE's features and store it in the bundle (gate.npz + bundle.json "gate").

    Dermoscopic images: the bundle's own training and validation rows. Clinical: PAD-UFES-20
    training/validation patients (SKINLESION_PAD_UFES_20_DIR, data/raw/pad_ufes_20 or
    ../shared/data/pad_ufes_20). Other: the generated non-skin set (written under the cache).
    Test patients and test pictures are left out for `skinlesion gate evaluate`.
    """
    from skinlesion.training.gate import GATE_CANDIDATES, GATE_SETTINGS, attach_gate

    if settings is not None and settings not in GATE_CANDIDATES:
        raise click.BadParameter(f"choose one of: {'; '.join(GATE_CANDIDATES)}", param_hint="--settings")
    entry = attach_gate(bundle, settings=settings or GATE_SETTINGS, seed=seed, data_dir=data_dir, progress=not quiet)
    click.echo(f"gate fitted into {bundle} with settings {entry['settings']!r}: threshold P(dermoscopic) >= {entry['threshold']:.3f}, "
               f"temperature {entry['temperature']:.3f}; images {entry['images']}")


@gate.command("evaluate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default reports/gate/<run-id>).")
@click.option("--resamples", default=None, type=click.IntRange(min=1), help="Bootstrap resamples (default: the project's one count).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def gate_evaluate(bundle, out, resamples, quiet) -> None:
    """How often the gate sets images aside: dermoscopic sources it never saw (leave-one-source-out),
    held-out PAD-UFES-20 patients and held-out non-skin pictures. Writes gate.json and report.md."""
    from skinlesion import config
    from skinlesion.bundle.format import load_meta
    from skinlesion.evaluation.gate import evaluate_gate, report_markdown
    from skinlesion.io import atomic_write_text, write_json
    from skinlesion.metrics.stats import N_BOOTSTRAP

    result = evaluate_gate(bundle, resamples=resamples or N_BOOTSTRAP, progress=not quiet)
    folder = out or config.reports_dir() / "gate" / load_meta(bundle).run_id
    write_json(folder / "gate.json", result)
    md = report_markdown(result)
    atomic_write_text(folder / "report.md", md)
    click.echo(md)
    click.echo(str(folder))

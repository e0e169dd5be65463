"""Commands that measure explanations and shortcuts: ``explain-eval localisation|sanity`` and ``traps``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from skinlesion.cli.base import friendly, main


def _methods(value: str) -> tuple[str, ...]:
    from skinlesion.explain.common import METHODS

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise click.BadParameter(f"choose from {', '.join(METHODS)}; got {value!r}", param_hint="--methods")
    return names


def _ci(block: dict | None) -> str:
    if not block or block.get("mean") is None:
        return "      n/a          "
    return f"{block['mean']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"


@main.group("explain-eval")
def explain_eval() -> None:
    """Measure the served model's explanations (localisation on lesion boxes, randomisation sanity check)."""


@explain_eval.command("localisation")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=300, show_default=True, help="HAM10000 images with lesion boxes (half malignant).")
@click.option("--methods", default="gradcam,gradcam++,scorecam,smoothgrad", show_default=True)
@click.option("--max-n", "max_n", type=click.IntRange(min=1), default=32, show_default=True,
              help="Score-CAM channels (Faster Score-CAM: the max-N most varied channels).")
@click.option("--smooth-samples", type=click.IntRange(min=1), default=20, show_default=True, help="SmoothGrad noisy samples per map.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON to write (default reports/explain/localisation.json).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly
def localisation(bundle, n, methods, max_n, smooth_samples, seed, out, quiet) -> None:
    """Energy inside the lesion box and pointing-game hit rate of each method's map, with bootstrap CIs,
    against a centred-Gaussian baseline."""
    from skinlesion.evaluation.localisation import run_localisation

    path = run_localisation(bundle, n=n, methods=_methods(methods), seed=seed, scorecam_max_n=max_n,
                            smooth_samples=smooth_samples, out=out, progress=not quiet)
    result = json.loads(path.read_text())
    click.echo(f"{result['bundle']} on {result['n_images']} images of {result['data']}")
    click.echo(f"{'method':28s} {'energy in box':>24s} {'pointing game':>24s} {'pointing ±' + str(result['tolerance_px']) + ' px':>24s}")
    for method, row in result["results"].items():
        a = row["all"]
        click.echo(f"{method:28s} {_ci(a['energy_in_box']):>24s} {_ci(a['pointing_game']):>24s} "
                   f"{_ci(a['pointing_game_tolerance']):>24s}")
    click.echo(f"box share of the input (uniform-map energy): {next(iter(result['results'].values()))['all']['box_fraction']:.3f}")
    click.echo(str(path))


@explain_eval.command("sanity")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=50, show_default=True, help="HAM10000 images.")
@click.option("--method", default="gradcam", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON to write (default reports/explain/sanity.json).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly
def sanity(bundle, n, method, seed, out, quiet) -> None:
    """Model-parameter randomisation check over many images: rank correlation per cascade step."""
    from skinlesion.evaluation.localisation import run_sanity

    path = run_sanity(bundle, n=n, method=_methods(method)[0], seed=seed, out=out, progress=not quiet)
    result = json.loads(path.read_text())
    click.echo(f"{result['model_explained']} ({result['method']}) on {result['n_images']} images of {result['data']}")
    click.echo(f"{'step':14s} {'layers':>6s} {'Spearman':>24s} {'SSIM':>24s}")
    for step, v in result["steps"].items():
        click.echo(f"{step:14s} {v['layers_randomised']:6d} {_ci(v['spearman']):>24s} {_ci(v['ssim']):>24s}")
    click.echo(str(path))


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of benign images (default: the Kaggle test split's benign/ folder).")
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True, help="At most this many images (seeded sample).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default reports/traps/<run-id>).")
@friendly
def traps(bundle, data, n, seed, out) -> None:
    """Paste rulers, ink marks, hair and dark vignette corners onto benign images, away from the lesion,
    and report how far P(malignant) moves and how often the decision flips (traps.json)."""
    from skinlesion.evaluation.traps import run_traps

    folder = run_traps(bundle, data, n=n, seed=seed, out_dir=out)
    result = json.loads((folder / "traps.json").read_text())
    click.echo(f"{result['bundle']} on {result['n_images']} benign images of {result['data']}")
    click.echo(f"{'artefact':12s} {'mean dp':>8s} {'p95 dp':>8s} {'flips':>7s} {'to suspicious':>14s}")
    for name, v in result["artefacts"].items():
        click.echo(f"{name:12s} {v['mean_dp']:8.4f} {v['p95_dp']:8.4f} {100 * v['decision_flip_rate']:6.1f}% "
                   f"{100 * v['flip_to_suspicious_rate']:13.1f}%")
    click.echo(str(folder))

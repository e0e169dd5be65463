"""Commands that test a bundle away from home: robustness, calibrate (site re-fit and its learning curve)."""
from __future__ import annotations

from pathlib import Path

import click

from skinlesion import config
from skinlesion.cli.base import check_run_id, friendly, main, refuse_existing
from skinlesion.evaluation.site import MIN_PER_CLASS, MIN_SITE_IMAGES


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint="--sizes") from exc
    if not sizes:
        raise click.BadParameter("no sizes given", param_hint="--sizes")
    return sizes


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", default=None, help="A registered source (its test split if it has one) or a folder-per-class "
              "directory. Default: the bundle's own test split, else the Kaggle test split.")
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True, help="At most this many images (seeded sample).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default reports/robustness/<run-id>, or <run-id>-<data> with --data).")
@friendly
def robustness(bundle, data, n, seed, out) -> None:
    """How often the decision flips under rotations, re-encoding, rescaling, zoom and colour changes.

    Writes robustness.json ({"transforms": {name: {mean_abs_dp, p95_abs_dp, decision_flip_rate,
    threshold_cross_rate, mean_dp, mean_dp_ci, n}}}), robustness.png and per_image.csv.
    """
    import json

    from skinlesion.evaluation.robustness import run_robustness

    folder = run_robustness(bundle, data, n=n, seed=seed, out_dir=out)
    result = json.loads((folder / "robustness.json").read_text())
    click.echo(f"{result['bundle']} on {result['n_images']} images of {result['data']}")
    click.echo(f"{'transform':16s} {'flips':>7s} {'crosses':>8s} {'mean|dp|':>9s} {'p95|dp|':>8s} {'mean dp':>8s}")
    rows = dict(result["transforms"])
    rows.update({f"[{k}]": v for k, v in result.get("groups", {}).items()})
    for name, v in rows.items():
        if v["n"]:
            click.echo(f"{name:16s} {100 * v['decision_flip_rate']:6.1f}% {100 * v['threshold_cross_rate']:7.1f}% "
                       f"{v['mean_abs_dp']:9.4f} {v['p95_abs_dp']:8.4f} {v['mean_dp']:+8.4f}")
    click.echo(str(folder))


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--site", required=True, help="Labelled site images: a folder DIR/{benign,malignant}/*, a registered source, or SOURCE:SPLIT (e.g. isic2017:test).")
@click.option("--n", "n", type=click.IntRange(min=MIN_SITE_IMAGES), default=100, show_default=True,
              help=f"Site images to re-fit on (stratified, at least {MIN_PER_CLASS} per class).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the new bundle goes (default models/site/); with --curve, where the report goes (default reports/site/).")
@click.option("--run-id", default=None, callback=check_run_id, help="Name of the new bundle (or of the curve's report folder).")
@click.option("--curve", is_flag=True, help="Instead of a bundle, write the learning curve: held-out site sensitivity/"
              "specificity after re-fitting on N images, for each of --sizes.")
@click.option("--sizes", default="25,50,100,200", show_default=True, help="With --curve: the values of N.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="With --curve: random samples per N.")
@click.option("--max-images", type=click.IntRange(min=1), default=2000, show_default=True, help="With --curve: score at most this many site images.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def calibrate(bundle, site, n, seed, out_dir, run_id, curve, sizes, repeats, max_images, quiet) -> None:
    """Re-fit temperature and threshold on a labelled sample of a new site, into a NEW bundle.

    The parent bundle is never modified. The new bundle records its provenance (parent run id and
    bundle.json checksum, site fingerprint, n, seed) and the images used (site_calibration.csv).
    """
    from skinlesion.bundle.format import load_meta
    from skinlesion.evaluation import site as site_mod

    if curve:
        folder = site_mod.write_curve(bundle, site, sizes=_sizes(sizes), repeats=repeats, seed=seed,
                                      max_images=max_images, out_dir=out_dir, run_id=run_id, progress=not quiet)
        table = (folder / "curve.csv").read_text()
        click.echo(table.rstrip())
        click.echo(str(folder))
        return
    if run_id:  # the curve's report folder is rewritten; a bundle folder never is
        refuse_existing((out_dir or config.models_dir() / "site") / run_id)
    path = site_mod.calibrate_site(bundle, site, n=n, seed=seed, out_dir=out_dir, run_id=run_id, progress=not quiet)
    old, new = load_meta(bundle), load_meta(path)
    assert old.decision is not None and new.decision is not None
    click.echo(f"temperature {old.temperature:.3f} -> {new.temperature:.3f}; threshold "
               f"{old.decision.threshold:.3f} -> {new.decision.threshold:.3f} "
               f"(n={new.raw['provenance']['n']}, site {new.raw['provenance']['site']['name']})")
    click.echo(str(path))

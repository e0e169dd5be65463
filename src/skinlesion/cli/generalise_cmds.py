"""``skinlesion generalise``: leave-one-source-out evaluation of a training recipe."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from skinlesion.cli.base import friendly, main
from skinlesion.cli.model_cmds import _config, _csv, _train_options
from skinlesion.metrics.stats import N_BOOTSTRAP

# Options that still mean something with --ensemble-of.
ENSEMBLE_OPTIONS = ("sources", "out_dir", "quiet")


@main.command()
@click.option("--recipe", required=True, help="Name of the recipe (folder under reports/generalisation/, row in experiments.md).")
@click.option("--publish", is_flag=True, help="Also write reports/generalisation/summary.json and report.md (the headline numbers).")
@click.option("--resamples", type=click.IntRange(min=1), default=N_BOOTSTRAP, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--report-dir", type=click.Path(path_type=Path), default=None, help="Default reports/generalisation.")
@click.option("--ensemble-of", default="", help="Train nothing: score, fold by fold, the `skinlesion ensemble` of these "
              "recipes' LOSO bundles (comma-separated recipe names, each run with `generalise` first).")
@click.option("--retrain", is_flag=True, help="Train every fold again, replacing fold bundles of the same configuration "
              "(they are reused otherwise; use it after a code change that alters training).")
@_train_options
@friendly
def generalise(recipe, publish, resamples, report_dir, ensemble_of, retrain, **kw) -> None:
    """Train on all sources but one, score the held-out one; for each of --sources in turn.

    --sources defaults to kaggle,ham10000,isic2017. Every other option is a training option
    (the recipe). Writes reports/generalisation/<recipe>/{summary.json,details.json,report.md,
    predictions.csv} and a row in reports/generalisation/experiments.md. With --ensemble-of A,B
    nothing is trained: each fold scores the ensemble of A's and B's bundles for that fold.
    """
    from skinlesion import config
    from skinlesion.data.sources import DERMOSCOPIC_SOURCES
    from skinlesion.evaluation.generalise import leave_one_source_out
    from skinlesion.evaluation.generalise import publish as publish_summary

    members = _csv(ensemble_of)
    if members:
        ctx = click.get_current_context()
        # The members' recipes were fixed by their own runs; a training option here would be ignored.
        given = [name for name in kw if name not in ENSEMBLE_OPTIONS
                 and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--ensemble-of trains nothing; drop {', '.join('--' + g.replace('_', '-') for g in given)}")
        if retrain:
            raise click.UsageError("--ensemble-of trains nothing; retrain its member recipes instead (a fold's "
                                   "ensemble is built again when its member bundles were)")
        if len(members) < 2 or recipe in members:
            raise click.BadParameter("name at least two member recipes, none of them --recipe itself",
                                     param_hint="--ensemble-of")
    if kw["data_dir"] is not None:
        # Checked before --sources gets its default, else the refusal would blame sources nobody gave.
        raise click.UsageError(
            "generalise trains on registered sources (--sources, default "
            f"{','.join(DERMOSCOPIC_SOURCES)}) and holds out each in turn; it does not read --data-dir. "
            f"To read the Kaggle set from another folder set {config.SOURCE_ENV['kaggle']}=DIR; to train on one "
            "folder use `skinlesion train --data-dir DIR`")
    kw["sources"] = kw["sources"] or ",".join(DERMOSCOPIC_SOURCES)
    cfg = _config(**kw)
    out = report_dir or config.reports_dir() / "generalisation"
    command = "skinlesion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = leave_one_source_out(cfg, list(cfg.sources), recipe=recipe, out_dir=out, n_resamples=resamples,
                                   models_dir=Path(kw["out_dir"]) if kw["out_dir"] else None, command=command,
                                   ensemble_of=members, retrain=retrain)
    if publish:
        publish_summary(out / recipe, out)
    for src, v in summary["held_out"].items():
        click.echo(f"held out {src:10s} n={v['n']:5d}  AUC {v['roc_auc']:.3f} [{v['roc_auc_ci'][0]:.3f}, "
                   f"{v['roc_auc_ci'][1]:.3f}]  sens {v['sensitivity']:.3f}  spec {v['specificity']:.3f}")
    click.echo(f"mean {summary['mean_roc_auc']:.3f}, worst {summary['worst_roc_auc']:.3f}; report: {out / recipe / 'report.md'}")


@main.command("generalise-compare")
@click.argument("recipes", nargs=-1, required=True)
@click.option("--resamples", type=click.IntRange(min=1), default=N_BOOTSTRAP, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--report-dir", type=click.Path(path_type=Path), default=None, help="Default reports/generalisation.")
@friendly
def generalise_compare(recipes, resamples, report_dir) -> None:
    """Paired ROC AUC tests of LOSO recipes against the first one, per held-out source.

    Reads reports/generalisation/<recipe>/predictions.csv (trains nothing) and writes
    compare.md and compare.json to reports/generalisation/compare/<baseline>--<recipe>...
    """
    from skinlesion import config
    from skinlesion.evaluation.recipe_compare import compare_recipes, recipes_markdown, write_recipe_comparison

    root = report_dir or config.reports_dir() / "generalisation"
    data = compare_recipes(list(recipes), root, n_resamples=resamples)
    out = write_recipe_comparison(data, root / "compare" / "--".join(recipes))
    click.echo(recipes_markdown(data))
    click.echo(f"written: {config.display_path(out / 'compare.md')}")

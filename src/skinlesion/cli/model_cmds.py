"""Commands that make or use models: train, predict, ensemble, info."""
from __future__ import annotations

import os
from pathlib import Path

import click

from skinlesion import DISCLAIMER, config
from skinlesion.cli.base import check_run_id, friendly, main, os_error_message, refuse_existing


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _train_options(fn):
    """The options of ``train`` (and ``generalise``); defaults come from TrainConfig itself."""
    from skinlesion.training.train import AUGMENTATIONS, BALANCE_MODES, TrainConfig

    d = TrainConfig()
    opts = [
        click.option("--backbone", default=d.backbone, show_default=True),
        click.option("--weights", default=d.weights, show_default=True, help="imagenet, none, or a local weights file."),
        # 32 is the smallest the backbones build at (models.backbones); 0 is not "native", leave it out for that.
        click.option("--input-size", type=click.IntRange(min=32), default=d.input_size, help="Square input size, at least 32 (default: the backbone's native size)."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="One dataset root (else SKINLESION_DATA_DIR, else data/raw/...)."),
        click.option("--sources", default=",".join(d.sources), help="Train on these registered sources instead of one root, e.g. kaggle,ham10000,isic2017 (`skinlesion data sources` lists them)."),
        click.option("--holdout", default=",".join(d.holdout), help="Sources read only to be held out (never trained on); their images are de-duplicated against training."),
        click.option("--drop-copies-from", default="", help="Comma-separated sources (e.g. kaggle) whose training images are left out when a training source not named here holds the same lesion or a duplicate (the Kaggle set repackages HAM10000 and ISIC 2017 images). Needs --sources; a source not trained on (held out) is left as it is."),
        click.option("--balance", type=click.Choice(BALANCE_MODES), default=d.balance, show_default=True, help="Sample weights: equal classes, or equal sources (and classes within each)."),
        click.option("--tta/--no-tta", default=d.tta, show_default=True, help="Serve the mean over the 8 dihedral views (threshold fitted the same way)."),
        click.option("--colour-constancy/--no-colour-constancy", default=d.colour_constancy, show_default=True, help="Shades-of-Gray colour constancy as the model's first layer."),
        click.option("--harmonise", type=click.IntRange(min=0), default=d.harmonise or 0, show_default=True, help="Resolution harmonisation as the model's first layer: every image low-passed to this many pixels and back (150 = HAM10000's, the lowest source). 0 = off."),
        click.option("--lesion-crop/--no-lesion-crop", default=d.lesion_crop, show_default=True, help="Crop each image to its lesion (a classical Otsu rule, skinlesion.models.lesion) before its views, in training and when served. Stage 1 only."),
        click.option("--l2", type=click.FloatRange(min=0), default=d.l2, show_default=True, help="L2 penalty on the head's weights."),
        click.option("--seed", type=click.IntRange(min=0), default=d.seed, show_default=True,
                     help="Seeds the validation split, initialisation and shuffling."),
        click.option("--views", default=",".join(d.views), show_default=True, help="Comma-separated views of training images for the head: dihedral (id,r90,r180,r270,fh,fh_r90,...) and framing (zi: zoom in 15 %, zo: zoom out 15 % with a dark border; zi30, zo30: the same by 30 %) and degradation (ds: half resolution and back, wp: WebP q80 round trip) and aperture (ap: dark outside a centred circle, a full-field dermoscope's field stop)."),
        click.option("--head-units", type=click.IntRange(min=0), default=d.head_units, show_default=True, help="Hidden units of the head (0 = linear)."),
        click.option("--fine-tune", type=click.IntRange(min=0), default=d.fine_tune, show_default=True, help="Unfreeze the top N backbone layers (stage 2)."),
        click.option("--fine-tune-epochs", type=click.IntRange(min=1), default=d.fine_tune_epochs, show_default=True),
        click.option("--fine-tune-lr", type=click.FloatRange(min=0, min_open=True), default=d.fine_tune_lr, show_default=True, help="Learning rate of stage 2."),
        click.option("--augment", default=",".join(d.augment), show_default=True, help=f"Stage-2 augmentation kinds, from {','.join(AUGMENTATIONS)}."),
        click.option("--max-train-per-class", type=click.IntRange(min=1), default=None, help="Subsample for quick runs."),
        click.option("--max-eval-per-class", type=click.IntRange(min=1), default=None, help="Subsample val/test for quick runs."),
        click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="Where bundles go (default models/)."),
        click.option("--run-id", default=None, callback=check_run_id, help="Name of the bundle folder (default: time stamp, backbone, random suffix)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _config(**kw):
    from skinlesion.data.sources import parse_sources
    from skinlesion.models.features import ALL_VIEWS
    from skinlesion.training.train import AUGMENTATIONS, TrainConfig

    weights = kw["weights"]
    views = _csv(kw["views"])
    bad = [v for v in views if v not in ALL_VIEWS]
    if bad:
        raise click.BadParameter(f"unknown view(s) {bad}; choose from {list(ALL_VIEWS)}", param_hint="--views")
    augment = _csv(kw["augment"])
    bad = [a for a in augment if a not in AUGMENTATIONS]
    if bad:
        raise click.BadParameter(f"unknown augmentation(s) {bad}; choose from {list(AUGMENTATIONS)}", param_hint="--augment")
    if kw["lesion_crop"] and kw["fine_tune"]:
        raise click.BadParameter("the lesion crop is for stage 1 only; leave out --fine-tune", param_hint="--lesion-crop")
    if 0 < kw["harmonise"] < 8:
        raise click.BadParameter("give 0 (off) or a resolution of at least 8 pixels", param_hint="--harmonise")
    weights = None if str(weights).lower() in {"none", "random"} else weights
    _check_weights(kw["backbone"], weights)
    return TrainConfig(
        backbone=kw["backbone"], weights=weights,
        input_size=kw["input_size"], data_dir=str(kw["data_dir"]) if kw["data_dir"] else None, seed=kw["seed"],
        sources=tuple(parse_sources(kw["sources"])) if kw["sources"] else (),
        holdout=tuple(parse_sources(kw["holdout"])) if kw["holdout"] else (), balance=kw["balance"],
        drop_copies_from=tuple(parse_sources(kw["drop_copies_from"])) if kw["drop_copies_from"] else (),
        views=views, head_units=kw["head_units"], augment=augment, colour_constancy=kw["colour_constancy"], tta=kw["tta"],
        harmonise=kw["harmonise"] or None, lesion_crop=kw["lesion_crop"], l2=kw["l2"],
        fine_tune=kw["fine_tune"], fine_tune_epochs=kw["fine_tune_epochs"], fine_tune_lr=kw["fine_tune_lr"],
        max_train_per_class=kw["max_train_per_class"], max_eval_per_class=kw["max_eval_per_class"],
        out_dir=str(kw["out_dir"]) if kw["out_dir"] else None, run_id=kw["run_id"], progress=not kw["quiet"],
    )


def _check_weights(backbone: str, weights: str | None) -> None:
    """Read a local --weights file now, so a file that is not weights is one clear line before any
    data is read, not a traceback from deep in the converter minutes later.

    Keras-application backbones already turn a bad file into a BackboneError when they load it;
    the EfficientNet-Lite converter raises plain ValueErrors (LegacyTorchFormatError among them).
    """
    import zipfile

    from skinlesion.models.backbones import get_spec

    if weights is None or weights == "imagenet":
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise click.BadParameter(f"{weights}: no such file (give imagenet, none, or a weights file)", param_hint="--weights")
    if get_spec(backbone).family != "lite":
        return
    from skinlesion.models.efficientnet_lite import converted_weights

    try:
        converted_weights(backbone, path)
    except (ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise click.BadParameter(f"{weights} does not hold {backbone} weights this project can read "
                                 f"(.npz from its cache, or a PyTorch .pth): {exc}", param_hint="--weights") from exc


@main.command()
@_train_options
@click.option("--distributed", is_flag=True, help="Stage 1 on several machines: run the same command on each, with "
              "TF_CONFIG naming the cluster and this machine's task (tf.distribute.MultiWorkerMirroredStrategy). "
              "Each machine extracts its share of the features; the chief writes the bundle.")
@friendly
def train(distributed: bool = False, **kw) -> None:
    """Train a classifier (stage 1 on cached features; --fine-tune N for stage 2)."""
    import dataclasses

    from skinlesion.training.train import train as run_train

    cfg = _config(**kw)
    if cfg.run_id:
        refuse_existing((Path(cfg.out_dir) if cfg.out_dir else config.models_dir()) / cfg.run_id)
    path = run_train(dataclasses.replace(cfg, distributed=distributed))
    click.echo(str(path))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Bundle (default: SKINLESION_MODEL, else models/<skinlesion.config.DEFAULT_MODEL>).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write here instead of stdout.")
@click.option("--tta/--no-tta", default=None, help="Dihedral TTA (default: as the bundle was calibrated).")
@click.option("--backend", type=click.Choice(config.BACKENDS), default="keras", show_default=True, help="Run the model with Keras or the bundle's TFLite export (`skinlesion export BUNDLE --format tflite [--quantize dynamic]`).")
@click.option("--group-by", "group_by", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="CSV with columns path,lesion_id (one row per photo; relative paths from the CSV's folder): one combined row per lesion instead of PATHS.")
@friendly
def predict(paths, model_path, fmt, output, tta, backend, group_by) -> None:
    """Predict image files or folders (recursively); unreadable files get an error row.

    Exit status 1 when no row could be scored (the table is still written), 0 otherwise.

    With --group-by, several photos of one lesion are combined into one probability (sigmoid of the
    mean logit of their calibrated probabilities; skinlesion.serving.combine) and one decision.
    """
    from skinlesion.data.datasets import image_files
    from skinlesion.serving.inference import Predictor

    if group_by is not None:
        if paths:
            raise click.UsageError("give image PATHS or --group-by CSV, not both")
        from skinlesion.serving.combine import predict_groups, read_group_csv

        table = read_group_csv(group_by)
        _check_output(output, [group_by, *map(Path, table["path"])])
        predictor = Predictor.from_bundle(model_path, backend=backend)
        _check_output(output, [], predictor)
        df = predict_groups(predictor, table, tta=tta)
        _write_table(df, fmt, output)
        return
    if not paths:
        raise click.UsageError("give image files or folders (PATHS), or --group-by CSV")
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += image_files(p)
        else:
            files.append(p)
    if not files:
        raise click.ClickException("no image files found in the given paths")
    _check_output(output, files)
    predictor = Predictor.from_bundle(model_path, backend=backend)
    _check_output(output, [], predictor)
    df = predictor.predict_batch(files, tta=tta)
    _write_table(df, fmt, output)


def _check_output(output: Path | None, inputs: list[Path], predictor=None) -> None:
    """Refuse an --output that would destroy what the command reads: one of the input files, or
    anything inside the bundle folder (or an ensemble member's), which its checksums protect."""
    if output is None:
        return
    target = output.resolve()
    if target.is_dir():
        raise click.BadParameter(f"{output} is a folder; give a file name", param_hint="--output")
    # Its folder is made if missing, but not through a file ("File exists" would say too little).
    parent = next(a for a in target.parents if a.exists())
    if not parent.is_dir():
        raise click.BadParameter(f"{parent} is a file, not a folder, so {output} cannot be written",
                                 param_hint="--output")
    if any(target == p.resolve() for p in inputs):
        raise click.BadParameter(f"{output} is one of the input files; writing there would destroy it",
                                 param_hint="--output")
    if predictor is not None:
        for folder in {predictor.bundle.path, *(m.bundle.path for m in predictor.members)}:
            if target.is_relative_to(Path(folder).resolve()):
                raise click.BadParameter(f"{output} is inside the model bundle {folder}; write it elsewhere",
                                         param_hint="--output")


def _write_table(df, fmt: str, output: Path | None) -> None:
    """Predictions as CSV or JSON, to ``output`` or stdout, then the disclaimer on stderr.

    A file is written whole or not at all (temporary file beside it, then a rename), so a full
    disk or an interrupt never leaves half a table in place of an older one. A path that exists
    and is not a regular file (/dev/stdout, a pipe) is written to directly: renaming over it
    would replace the device with a file.
    """
    from skinlesion.io import atomic_write_text

    text = df.to_json(orient="records", indent=2) if fmt == "json" else df.to_csv(index=False)
    if output:
        try:
            if output.exists() and not output.is_file():  # follows links: /dev/stdout is a pipe
                with open(output, "w") as fh:
                    fh.write(text)
            else:
                # Through a symlink to its file, as a plain write would, rather than replacing the link.
                atomic_write_text(os.path.realpath(output), text)
        except OSError as exc:
            # Named after --output: a full disk's error names no file, a refused temporary file
            # names one the user never gave.
            raise click.ClickException(f"cannot write {output}: {os_error_message(exc)}") from exc
    else:
        click.echo(text)
    click.echo(DISCLAIMER, err=True)
    _report_failures(df)


def _report_failures(df) -> None:
    """A line on stderr when some rows are errors; exit status 1 when every row is one, so a script
    can tell "nothing could be scored" from a result (the table is written either way)."""
    failed = int((df["error"].fillna("") != "").sum()) if "error" in df.columns else 0
    if failed and failed == len(df):
        raise click.ClickException(f"none of the {len(df)} row(s) could be scored: see the error column")
    if failed:
        click.echo(f"{failed} of {len(df)} row(s) could not be scored: see the error column", err=True)


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="Where the ensemble bundle goes (default: beside the first member).")
@click.option("--run-id", default=None, callback=check_run_id, help="Name of the ensemble bundle folder.")
@friendly
def ensemble(bundles, out_dir, run_id) -> None:
    """Average the calibrated probabilities of several bundles (same split) into an ensemble bundle."""
    from skinlesion.training.ensemble import make_ensemble

    if run_id:
        refuse_existing((out_dir or bundles[0].parent) / run_id)

    click.echo(str(make_ensemble(list(bundles), out_dir=out_dir, run_id=run_id)))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@friendly
def info(bundle) -> None:
    """Verify a bundle and print its metadata."""
    from skinlesion.bundle.format import load_meta
    from skinlesion.io import dumps_json

    # load_meta, not read_meta: the typed fields are checked too, so what info passes, predict loads.
    meta = load_meta(bundle).raw
    if meta.get("synthetic"):
        click.echo("SYNTHETIC MODEL: trained on generated images.", err=True)
    click.echo(dumps_json(meta))



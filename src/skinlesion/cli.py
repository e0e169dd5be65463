"""The ``skinlesion`` command line: data, train, evaluate, predict, info and the main job."""
from __future__ import annotations

import json
import sys
import time
from functools import wraps
from pathlib import Path

import click

from skinlesion import DISCLAIMER, config

# Errors a user can fix: printed as one clear line with a non-zero exit, never a traceback.
def _user_errors():
    from skinlesion.models.backbones import BackboneError
    from skinlesion.bundle.format import BundleError
    from skinlesion.data.datasets import DataError
    from skinlesion.data.intake import ImageRejected

    return (BackboneError, BundleError, DataError, ImageRejected, FileNotFoundError)


def friendly(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            raise click.ClickException(getattr(exc, "message", None) or str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="skinlesion")
def main() -> None:
    """Dermoscopic skin lesion classifier (benign vs malignant). A research tool, not a medical device."""


# --- data ------------------------------------------------------------------------------
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


# --- train / evaluate ------------------------------------------------------------------
def _train_options(fn):
    opts = [
        click.option("--backbone", default="efficientnet_lite0", show_default=True),
        click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a local weights file."),
        click.option("--input-size", type=int, default=None, help="Square input size (default: the backbone's native size)."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Dataset root (else SKINLESION_DATA_DIR, else data/raw/...)."),
        click.option("--seed", default=42, show_default=True),
        click.option("--views", default="id", show_default=True, help="Comma-separated dihedral views of training images for the head (id,r90,r180,r270,fh,fh_r90,...)."),
        click.option("--head-units", default=256, show_default=True, help="Hidden units of the head (0 = linear)."),
        click.option("--fine-tune", default=0, show_default=True, help="Unfreeze the top N backbone layers (stage 2)."),
        click.option("--fine-tune-epochs", default=6, show_default=True),
        click.option("--fine-tune-lr", default=2e-5, show_default=True, help="Learning rate of stage 2."),
        click.option("--max-train-per-class", type=int, default=None, help="Subsample for quick runs."),
        click.option("--max-eval-per-class", type=int, default=None, help="Subsample val/test for quick runs."),
        click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="Where bundles go (default models/)."),
        click.option("--run-id", default=None),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _config(**kw):
    from skinlesion.training.train import TrainConfig

    weights = kw["weights"]
    return TrainConfig(
        backbone=kw["backbone"], weights=None if str(weights).lower() in {"none", "random"} else weights,
        input_size=kw["input_size"], data_dir=str(kw["data_dir"]) if kw["data_dir"] else None, seed=kw["seed"],
        views=tuple(v.strip() for v in kw["views"].split(",") if v.strip()), head_units=kw["head_units"],
        fine_tune=kw["fine_tune"], fine_tune_epochs=kw["fine_tune_epochs"], fine_tune_lr=kw["fine_tune_lr"],
        max_train_per_class=kw["max_train_per_class"], max_eval_per_class=kw["max_eval_per_class"],
        out_dir=str(kw["out_dir"]) if kw["out_dir"] else None, run_id=kw["run_id"], progress=not kw["quiet"],
    )


@main.command()
@_train_options
@friendly
def train(**kw) -> None:
    """Train a classifier (stage 1 on cached features; --fine-tune N for stage 2)."""
    from skinlesion.models.features import VIEWS
    from skinlesion.training.train import train as run_train

    cfg = _config(**kw)
    bad = [v for v in cfg.views if v not in VIEWS]
    if bad:
        raise click.BadParameter(f"unknown view(s) {bad}; choose from {list(VIEWS)}", param_hint="--views")
    path = run_train(cfg)
    click.echo(str(path))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the bundle's test images are (default: as trained).")
@click.option("--external", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Extra folder-per-class evaluation set (repeatable).")
@click.option("--no-test", is_flag=True, help="Only evaluate the --external sets.")
@click.option("--tta", is_flag=True, help="Test-time augmentation over the 8 dihedral views.")
@click.option("--resamples", default=2000, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Report folder (default reports/<run-id>).")
@click.option("--no-skin-tone", is_flag=True, help="Skip the ITA skin-tone subgroup table (about 40 ms an image).")
@click.option("--quiet", is_flag=True)
@friendly
def evaluate(bundle, data_dir, external, no_test, tta, resamples, out, no_skin_tone, quiet) -> None:
    """Score a bundle on the test split, the de-duplicated test and --external folders; write report.md."""
    from skinlesion.evaluation.evaluate import evaluate_bundle, format_results, save_results
    from skinlesion.evaluation.reports import write_report

    results, preds = evaluate_bundle(bundle, data_dir=data_dir, external=tuple(str(e) for e in external), tta=tta,
                                     n_resamples=resamples, include_test=not no_test, progress=not quiet)
    path = save_results(results, preds, out)
    # Same roots as evaluation_sets uses, so the skin-tone table reads the images that were scored.
    roots = {f"external:{Path(e).name}": Path(e) for e in external}
    if data_dir:
        roots.update(test=Path(data_dir), test_dedup=Path(data_dir))
    report = write_report(results, preds, bundle, path, skin_tone=not no_skin_tone, roots=roots,
                          n_resamples=min(resamples, 1000))
    click.echo(format_results(results))
    click.echo(f"report: {report}")
    click.echo(f"model card: skinlesion model-card {bundle} --report {path}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Bundle (default SKINLESION_MODEL or the newest in models/).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write here instead of stdout.")
@click.option("--tta", is_flag=True)
@friendly
def predict(paths, model_path, fmt, output, tta) -> None:
    """Predict image files or folders (recursively); unreadable files get an error row."""
    from skinlesion.data.datasets import IMAGE_SUFFIXES
    from skinlesion.serving.inference import Predictor

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise click.ClickException("no image files found in the given paths")
    predictor = Predictor.from_bundle(model_path)
    df = predictor.predict_batch(files, tta=tta)
    text = df.to_json(orient="records", indent=2) if fmt == "json" else df.to_csv(index=False)
    if output:
        output.write_text(text)
    else:
        click.echo(text)
    click.echo(DISCLAIMER, err=True)


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="Where the ensemble bundle goes (default: beside the first member).")
@click.option("--run-id", default=None)
@friendly
def ensemble(bundles, out_dir, run_id) -> None:
    """Average the calibrated probabilities of several bundles (same split) into an ensemble bundle."""
    from skinlesion.training.ensemble import make_ensemble

    click.echo(str(make_ensemble(list(bundles), out_dir=out_dir, run_id=run_id)))


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--set", "set_name", default="test", show_default=True, help="Evaluation set to compare (test, test_dedup, external:NAME).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for compare.md and compare.json (default reports/compare).")
@click.option("--resamples", default=2000, show_default=True, help="Bootstrap resamples for the AUC-difference CIs.")
@friendly
def compare_cmd(runs, set_name, out, resamples) -> None:
    """Compare evaluated runs (report folders or bundles) on the same images, with paired AUC tests."""
    from skinlesion.evaluation.reports import compare, write_comparison

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
    from skinlesion.bundle.format import read_meta
    from skinlesion.evaluation.reports import default_report_dir, model_card

    text = model_card(bundle, report_dir)
    if out is None:
        folder = report_dir or default_report_dir(read_meta(bundle))
        out = folder / "MODEL_CARD.md" if (folder / "metrics.json").is_file() else Path("-")
    if str(out) == "-":
        click.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    click.echo(f"model card: {out}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@friendly
def info(bundle) -> None:
    """Verify a bundle and print its metadata."""
    from skinlesion.bundle.format import read_meta

    meta = read_meta(bundle)
    if meta.get("synthetic"):
        click.echo("SYNTHETIC MODEL: trained on generated images.", err=True)
    click.echo(json.dumps(meta, indent=2))


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--quiet", is_flag=True)
@friendly
def run(data_dir, backbone, quiet) -> None:
    """The main job: find data (or download, or synthesise), train, evaluate, report."""
    from skinlesion.data.datasets import DataError, download
    from skinlesion.evaluation.evaluate import evaluate_bundle, format_results, save_results
    from skinlesion.evaluation.reports import write_report
    from skinlesion.data.synth import generate_dataset, is_synthetic
    from skinlesion.training.train import SYNTHETIC_BANNER, TrainConfig, train as run_train

    t0 = time.perf_counter()
    root = config.resolve_data_dir(data_dir)
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
    cfg = TrainConfig(backbone=backbone, data_dir=str(root), views=("id", "fh"), progress=not quiet)
    bundle_path = run_train(cfg)
    results, preds = evaluate_bundle(bundle_path, progress=not quiet)
    report = write_report(results, preds, bundle_path, save_results(results, preds), n_resamples=1000)
    click.echo("")
    click.echo(format_results(results))
    click.echo(f"\nbundle: {bundle_path}\nreport: {report}\nwall time: {time.perf_counter() - t0:.0f} s")
    click.echo(
        "next:\n"
        f"  skinlesion predict path/to/image.jpg --model {bundle_path}\n"
        "  make webapp      # Flask app on http://127.0.0.1:8000\n"
        "  make dashboard   # Voila dashboard\n"
        f"  skinlesion info {bundle_path}"
    )
    if results.get("synthetic"):
        click.echo(SYNTHETIC_BANNER, err=True)
    click.echo(DISCLAIMER)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

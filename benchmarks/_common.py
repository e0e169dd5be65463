"""What the benchmarks share: which model bundle they time, and one clear line when there is none.

A benchmark that times a trained model resolves it here, so that every one of them says the same
thing when it is missing (which bundle, how to make or name one) and exits non-zero instead of
ending in a traceback. Imported as ``from _common import ...``: a script's own folder is on
``sys.path`` when it is run as ``python benchmarks/<name>.py``.

    python benchmarks/_common.py   # checks the default model (``make benchmark`` runs it first)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# One sentence for the docstrings and --help of the benchmarks that time a trained model.
NEEDS_MODEL = ("Needs a trained model bundle: --model BUNDLE_DIR, else the default model "
               "(SKINLESION_MODEL, else models/<DEFAULT_MODEL>, which `make run` trains).")
MODEL_HELP = "bundle folder (default: SKINLESION_MODEL, else models/<DEFAULT_MODEL>, trained by `make run`)"
# Where the Kaggle images come from when none are found (README "Data sources").
GET_DATA = ("get the Kaggle set with `skinlesion data download` (or point SKINLESION_DATA_DIR at a copy), "
            "or pass --data-dir DIR")


def model_or_exit(model: str | os.PathLike[str] | None, *, who: str | None = None) -> Path:
    """The bundle to time: ``model`` when given, else the default model.

    Exits with one line (``who``, default the script's name; the missing bundle; how to make or
    name one) when it is not a bundle, before anything slow is imported or started.
    """
    from skinlesion.bundle.format import BUNDLE_FILE, BundleError, resolve_default_bundle

    script = Path(sys.argv[0]).name
    if model is None:
        try:
            return resolve_default_bundle()
        except BundleError as exc:  # its message already names the bundle, `make run` and SKINLESION_MODEL
            raise SystemExit(f"{who or script}: {exc}" + ("" if who else " Or pass --model BUNDLE_DIR.")) from None
    path = Path(model).expanduser()
    if path.name == BUNDLE_FILE:
        path = path.parent
    if not (path / BUNDLE_FILE).is_file():
        raise SystemExit(f"{script}: --model {model} is not a model bundle (no {BUNDLE_FILE} there); name a bundle "
                         "folder, or leave --model out to time the default model (`make run` trains it).")
    return path


if __name__ == "__main__":
    # `make benchmark`: stop before the benchmarks that need a model, with one line, when there is none.
    model_or_exit(None, who="make benchmark: webapp_load, tta_cost, gate_cost and export_backends need a "
                             "trained model and did not run")

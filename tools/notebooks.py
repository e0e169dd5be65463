"""Re-execute the research notebooks in place, or strip run metadata from them (``make notebooks``).

Usage::

    python tools/notebooks.py run-all            # full data, rewrite committed outputs (needs `make run` first)
    python tools/notebooks.py run-all --sample 40 --only 02
    python tools/notebooks.py clean notebooks/*.ipynb
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from skinlesion import config
from skinlesion.bundle.format import BUNDLE_FILE, resolve_default_bundle
from skinlesion.notebooks import NOTEBOOKS, clean_notebook, env_param, notebooks_dir, run_notebook

# Notebooks whose committed outputs show the served default model. When it is missing they train a
# quick stand-in instead (skinlesion.notebooks.ensure_bundle): right for a sample run, wrong for
# outputs that are committed as the default model's.
NEED_DEFAULT_MODEL = ("04_gradcam_explanations.ipynb",)


def default_model_path() -> Path:
    """Where notebook 04 looks for the model it explains: ``models/<the default model's name>``
    (its parameter ``model``, i.e. SKINLESION_NB_MODEL, overrides the name, as in the notebook)."""
    return config.models_dir() / env_param("model", resolve_default_bundle(must_exist=False).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python tools/notebooks.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run-all", help="execute the notebooks in place and clean their metadata",
                       description="Execute the notebooks in place and clean their metadata. On the full data "
                                   "(the default) it needs the served default model (`make run` trains it).")
    r.add_argument("--sample", type=int, default=0,
                   help="images per class, for a quick run whose outputs are not meant to be committed "
                        "(0 = the full data, which needs the default model)")
    r.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    c = sub.add_parser("clean", help="strip run metadata from notebooks")
    c.add_argument("paths", nargs="+", help="notebook files (.ipynb), cleaned in place")
    args = ap.parse_args(argv)
    if args.cmd == "clean":
        for p in args.paths:
            print(f"{p}: {clean_notebook(p) / 1024:.0f} KiB")
        return 0
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(o) for o in args.only)]
    model = default_model_path()
    if not args.sample and set(names) & set(NEED_DEFAULT_MODEL) and not (model / BUNDLE_FILE).is_file():
        # Refuse before anything runs: the committed outputs must not become a stand-in model's.
        print(f"{ap.prog} run-all: no default model at {model}, and notebook 04's committed "
              "outputs are that model's (it would train a quick stand-in and overwrite them): run `make run` "
              "first, or pass --sample N for a quick run whose outputs are not meant to be committed.",
              file=sys.stderr)
        return 1
    for name in names:
        path = notebooks_dir() / name
        print(f"running {name} ({'full data' if not args.sample else f'{args.sample} per class'}) ...", flush=True)
        secs = run_notebook(path, sample=args.sample)
        print(f"  done in {secs:.0f} s, {path.stat().st_size / 1024:.0f} KiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

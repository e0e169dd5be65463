"""Re-execute the research notebooks in place, or strip run metadata from them (``make notebooks``).

Usage::

    python tools/notebooks.py run-all            # full data, rewrite committed outputs
    python tools/notebooks.py run-all --sample 40 --only 02
    python tools/notebooks.py clean notebooks/*.ipynb
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skinlesion.notebooks import NOTEBOOKS, clean_notebook, notebooks_dir, run_notebook


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python tools/notebooks.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run-all", help="execute the notebooks in place and clean their metadata")
    r.add_argument("--sample", type=int, default=0, help="images per class (0 = the full data)")
    r.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    c = sub.add_parser("clean", help="strip run metadata from notebooks")
    c.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "clean":
        for p in args.paths:
            print(f"{p}: {clean_notebook(p) / 1024:.0f} KiB")
        return 0
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(o) for o in args.only)]
    for name in names:
        path = notebooks_dir() / name
        print(f"running {name} ({'full data' if not args.sample else f'{args.sample} per class'}) ...", flush=True)
        secs = run_notebook(path, sample=args.sample)
        print(f"  done in {secs:.0f} s, {path.stat().st_size / 1024:.0f} KiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the LOSO pilots in tools/ share: a check, before anything slow starts, that a recipe's
leave-one-source-out fold bundles exist, with the command that trains them when they do not."""
from __future__ import annotations

import json
from collections.abc import Sequence

from skinlesion.data.sources import DERMOSCOPIC_SOURCES as SOURCES


def require_loso_bundles(recipes: Sequence[str], script: str) -> None:
    """Exit with one line (naming ``script``) when a recipe's fold bundles
    (``models/loso/loso-<recipe>-<held>``) are missing, saying which command trains them."""
    from skinlesion import config

    root = config.models_dir() / "loso"
    for recipe in recipes:
        missing = [held for held in SOURCES if not (root / f"loso-{recipe}-{held}" / "bundle.json").is_file()]
        if not missing:
            continue
        details = config.reports_dir() / "generalisation" / recipe / "details.json"
        command = json.loads(details.read_text()).get("command") if details.is_file() else None
        how = (f"`{command}` (its committed command)" if command else
               f"`skinlesion generalise --recipe {recipe}` with that recipe's training options (README, \"Reproduce\")")
        raise SystemExit(f"{script}: no LOSO fold bundle of {recipe!r} for held-out {', '.join(missing)} "
                         f"(looked for {root}/loso-{recipe}-<source>); train them with {how}.")

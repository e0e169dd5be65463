"""The ``skinlesion`` command line. Each module registers its commands on the root group."""
from __future__ import annotations

from skinlesion.cli import data_cmds, eval_cmds, generalise_cmds, model_cmds, robust_cmds  # noqa: F401  (registers the commands)
from skinlesion.cli.base import main

__all__ = ["main"]

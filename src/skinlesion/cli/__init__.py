"""The ``skinlesion`` command line. Each module registers its commands on the root group."""
from __future__ import annotations

from skinlesion.cli import (  # noqa: F401  (registers the commands)
    data_cmds,
    eval_cmds,
    explain_cmds,
    export_cmds,
    gate_cmds,
    generalise_cmds,
    model_cmds,
    robust_cmds,
)
from skinlesion.cli.base import main

__all__ = ["main"]

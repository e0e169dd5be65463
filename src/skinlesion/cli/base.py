"""The root ``skinlesion`` command group and the error wrapper every command uses."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
_HANDLER_NAME = "skinlesion-cli"


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the package's log messages on stderr as ``[skinlesion] message``.

    The library only logs (``logging.getLogger(__name__)``); the command line is the
    application, so it decides what is printed. Idempotent: one handler however often called.
    """
    pkg = logging.getLogger("skinlesion")
    if not any(h.get_name() == _HANDLER_NAME for h in pkg.handlers):
        handler = _CurrentStderr()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("[skinlesion] %(message)s"))
        pkg.addHandler(handler)
    pkg.setLevel(level)
    # Our handler is the one place the package's messages are printed. Libraries such as absl
    # (TensorFlow's SavedModel writer) give the root logger a handler of their own the first time
    # they log, which would print every message a second time as "INFO:skinlesion...:".
    pkg.propagate = False


# Errors a user can fix: printed as one clear line with a non-zero exit, never a traceback.
def _user_errors() -> tuple[type[Exception], ...]:
    # Called as an error propagates: none of these modules may import Keras (BackboneError comes from the
    # registry, not models.backbones), or TensorFlow would start and print its lines before the error.
    from skinlesion.bundle.format import BundleError
    from skinlesion.data.datasets import DataError
    from skinlesion.data.intake import ImageRejected
    from skinlesion.data.synth import SynthError
    from skinlesion.models.registry import BackboneError

    return (BackboneError, BundleError, DataError, ImageRejected, SynthError)


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: the path and the reason, e.g.
    ``/dev/full: No space left on device`` (no errno, no repr quotes)."""
    if exc.strerror and exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {exc.strerror}"
    # Raised by our own code with a sentence of its own (e.g. "weights file not found: ...").
    return exc.strerror or str(exc) or type(exc).__name__


def friendly(fn: F) -> F:
    """Turn the errors a user can fix into one clear line and exit status 1 (no traceback).

    Any OSError counts: a missing input, an output path that is a folder (or lies under a file),
    no permission, a full disk are all the user's to fix, and a traceback hides the one line
    (path and reason) that says how.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            raise click.ClickException(getattr(exc, "message", None) or str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(os_error_message(exc)) from exc

    return wrapper  # type: ignore[return-value]


def check_run_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for ``--run-id``: one plain folder name (bundle.format.check_run_id), so the
    bundle or report lands inside its --out-dir (``../x`` would write elsewhere), refused before
    any work rather than after the training."""
    from skinlesion.bundle.format import BundleError
    from skinlesion.bundle.format import check_run_id as check

    if value is None:
        return None
    try:
        return check(value)
    except BundleError as exc:
        raise click.BadParameter(str(exc)) from exc


def refuse_existing(folder: Path) -> None:
    """Refuse up front a bundle folder that write_bundle would refuse only after all the work."""
    if folder.exists() or folder.is_symlink():
        raise click.BadParameter(f"bundle folder {folder} already exists; choose another --run-id or remove it",
                                 param_hint="--run-id")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="skinlesion")
def main() -> None:
    """Dermoscopic skin lesion classifier (benign vs malignant). A research tool, not a medical device."""
    configure_logging()



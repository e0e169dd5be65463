"""The root ``skinlesion`` command group and the error wrapper every command uses."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
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


# Errors a user can fix: printed as one clear line with a non-zero exit, never a traceback.
def _user_errors() -> tuple[type[Exception], ...]:
    from skinlesion.bundle.format import BundleError
    from skinlesion.data.datasets import DataError
    from skinlesion.data.intake import ImageRejected
    from skinlesion.models.backbones import BackboneError

    return (BackboneError, BundleError, DataError, ImageRejected, FileNotFoundError)


def friendly(fn: F) -> F:
    """Turn the errors a user can fix into one clear line and exit status 1 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            raise click.ClickException(getattr(exc, "message", None) or str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="skinlesion")
def main() -> None:
    """Dermoscopic skin lesion classifier (benign vs malignant). A research tool, not a medical device."""
    configure_logging()



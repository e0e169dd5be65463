"""The root ``skinlesion`` command group and the error wrapper every command uses."""
from __future__ import annotations

from functools import wraps

import click


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



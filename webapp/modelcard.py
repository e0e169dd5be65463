"""The model card page: the sections of :mod:`skinlesion.evaluation.model_card` (the same ones
``skinlesion model-card`` writes), plus the plain-words help shown beside a decision."""
from __future__ import annotations

import os

from markupsafe import Markup

from skinlesion.bundle.meta import BundleMeta
from skinlesion.evaluation.model_card import ModelCard, build_model_card
from skinlesion.metrics.calibration import BENIGN_APPEARING, SUSPICIOUS, UNCERTAIN_REFER
from skinlesion.serving.presentation import inline_html
from webapp.analysis import public_text

DECISION_HELP = {
    SUSPICIOUS: "The probability is at or above the upper edge of the uncertainty band: "
                "the model would send this lesion for a specialist's assessment.",
    UNCERTAIN_REFER: "The probability falls inside the uncertainty band, where the model cannot "
                     "tell reliably: have the lesion checked by a dermatologist.",
    BENIGN_APPEARING: "The probability is below the uncertainty band: the model sees nothing "
                      "suspicious. This does not rule out skin cancer.",
}

def inline_markdown(text: object) -> Markup:
    """Escaped ``text`` with `code`, **bold** and *italic* turned into HTML (Jinja filter ``md``);
    paths out of the project are cut to their last part (:func:`webapp.analysis.public_text`)."""
    return Markup(inline_html(public_text(str(text))))  # inline_html escapes first


def card(meta: BundleMeta, bundle_path: str | os.PathLike[str]) -> ModelCard:
    """The served bundle's :class:`ModelCard`, with its evaluation report when there is one."""
    return build_model_card(meta, bundle_path)

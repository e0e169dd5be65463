"""The model card page: the sections of :mod:`skinlesion.evaluation.model_card` (the same ones
``skinlesion model-card`` writes), plus the plain-words help shown beside a decision."""
from __future__ import annotations

import os
import re

from markupsafe import Markup, escape

from skinlesion.bundle.meta import BundleMeta
from skinlesion.evaluation.model_card import ModelCard, build_model_card
from skinlesion.metrics.calibration import BENIGN_APPEARING, SUSPICIOUS, UNCERTAIN_REFER
from webapp.analysis import public_text

DECISION_HELP = {
    SUSPICIOUS: "The probability is at or above the upper edge of the uncertainty band: "
                "the model would send this lesion for a specialist's assessment.",
    UNCERTAIN_REFER: "The probability falls inside the uncertainty band, where the model cannot "
                     "tell reliably: have the lesion checked by a dermatologist.",
    BENIGN_APPEARING: "The probability is below the uncertainty band: the model sees nothing "
                      "suspicious. This does not rule out skin cancer.",
}

# The inline markdown the model card's sentences use; applied after HTML escaping, so the
# card's text can never inject markup of its own.
_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
)


def inline_markdown(text: object) -> Markup:
    """Escaped ``text`` with `code`, **bold** and *italic* turned into HTML (Jinja filter ``md``);
    paths out of the project are cut to their last part (:func:`webapp.analysis.public_text`)."""
    html = str(escape(public_text(str(text))))
    for pattern, repl in _INLINE:
        html = pattern.sub(repl, html)
    return Markup(html)


def card(meta: BundleMeta, bundle_path: str | os.PathLike[str]) -> ModelCard:
    """The served bundle's :class:`ModelCard`, with its evaluation report when there is one."""
    return build_model_card(meta, bundle_path)

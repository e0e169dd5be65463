"""Several photos of one lesion: one probability and one decision from the photos' predictions.

**The rule.** The lesion's probability is the sigmoid of the mean logit of the photos' *calibrated*
probabilities (each clipped to ``[CLIP, 1 - CLIP]`` first, so a probability of exactly 0 or 1 does
not give an infinite logit):

    p_lesion = sigmoid( mean_i logit(p_i) )

Equivalently, the lesion's odds are the geometric mean of the photos' odds. Why this rule:

* it *averages* the evidence of the photos rather than adding it: photos of one lesion are far
  from independent (same lesion, same session, often the same framing), so multiplying their
  likelihood ratios (summing logits) would make three photos of a benign-looking mole look three
  times as sure. The mean keeps the result on the scale the threshold was frozen on;
* it is computed on the logit scale, where temperature scaling is a division, so combining the
  calibrated probabilities equals calibrating the combined raw ones; and one confident photo
  counts for more than under a plain mean of probabilities (0.99 and 0.5 give 0.91, not 0.75);
* one photo gives back its own probability exactly.

What it buys on real data (HAM10000 lesions with several photos, leave-one-source-out model) is
measured by :mod:`skinlesion.evaluation.lesion_groups` (``reports/lesion_groups/ham10000.json``).

:func:`combine_probabilities` and :func:`combine_predictions` are pure (no I/O, no model); the CLI
(``skinlesion predict --group-by CSV``) and the web app use the same two functions.
:func:`read_group_csv` reads and validates the ``--group-by`` table and :func:`predict_groups` runs a
Predictor over it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit, logit

from skinlesion.data.datasets import DataError
from skinlesion.serving.inference import NOT_ASSESSED

if TYPE_CHECKING:
    import pandas as pd

    from skinlesion.metrics.calibration import DecisionPolicy
    from skinlesion.serving.inference import Prediction, Predictor

# Probabilities are clipped to [CLIP, 1 - CLIP] before the logit (|logit| <= 13.8).
CLIP = 1e-6
RULE = "sigmoid of the mean logit of the calibrated probabilities (each clipped to [1e-6, 1 - 1e-6])"
GROUP_COLUMNS = ("path", "lesion_id")


def combine_probabilities(probs: Iterable[float] | np.ndarray) -> float:
    """One lesion's probability from its photos' calibrated probabilities (the rule in the module doc).

    Raises ValueError for no values, or values that are not finite probabilities in [0, 1].
    """
    p = np.asarray(probs if isinstance(probs, np.ndarray) else list(probs), dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("no probabilities to combine")
    if not np.all(np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError(f"probabilities must be finite and in [0, 1]; got {p.tolist()}")
    z = logit(np.clip(p, CLIP, 1.0 - CLIP))
    return float(expit(z.mean()))


def combine_predictions(preds: Sequence[Prediction], policy: DecisionPolicy) -> dict[str, Any]:
    """Combine the predictions of several photos of one lesion under the bundle's ``policy``.

    Photos the model does not assess (``pred.assessed`` is False: the image-type gate found no
    dermoscopic image) are skipped. Returns ``probability`` (None when no photo is assessed),
    ``decision`` (the policy's decision for it, or ``"not assessed"``), ``threshold``, ``band_low`` and
    ``band_high`` (the "uncertain — refer" band), ``n_images``, ``n_used``, ``n_skipped`` and ``out_of_distribution`` (any
    used photo flagged).
    """
    used = [p for p in preds if p.assessed]
    out: dict[str, Any] = {
        "n_images": len(preds), "n_used": len(used), "n_skipped": len(preds) - len(used),
        "threshold": float(policy.threshold), "rule": RULE,
        "band_low": float(policy.band_low), "band_high": float(policy.band_high),
    }
    if not used:
        return {**out, "probability": None, "decision": NOT_ASSESSED, "out_of_distribution": False}
    prob = combine_probabilities([p.probability for p in used])
    return {**out, "probability": prob, "decision": policy.decide(prob),
            "out_of_distribution": any(p.out_of_distribution for p in used)}


def repeated_photos(contents: Sequence[bytes]) -> dict[int, int]:
    """For every photo whose bytes repeat an earlier one: its index -> the first one's index.

    Several photos of one lesion are combined with equal weight, so a file sent twice would
    count twice (as ``read_group_csv`` refuses a photo listed twice, the upload paths refuse a
    copy: the web app and the dashboard make it that photo's error).
    """
    import hashlib

    first: dict[str, int] = {}
    repeats = {}
    for i, data in enumerate(contents):
        key = hashlib.sha256(data).hexdigest()
        if key in first:
            repeats[i] = first[key]
        else:
            first[key] = i
    return repeats


REPEATED_MESSAGE = "This is the same file as {first}; each photo counts once in the combined result."


def repeat_refusal(first_name: str,
                   first_refusal: tuple[int | None, str | None] | None) -> tuple[int | None, str | None]:
    """(status, message) for a copy of an earlier photo of the same upload: the earlier photo's own
    refusal when it was refused (same bytes, same reason), else a 400 saying it counts once."""
    return first_refusal if first_refusal is not None else (400, REPEATED_MESSAGE.format(first=first_name))


def read_group_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The ``--group-by`` table: columns ``path`` and ``lesion_id``, one row per photo.

    Relative paths are taken relative to the CSV's folder; extra columns are ignored. A missing
    file or column, an empty cell, a photo listed twice or a photo that does not exist is a
    :class:`DataError` that names the rows.
    """
    import pandas as pd

    csv = Path(path)
    if not csv.is_file():
        raise DataError(f"group CSV {csv} does not exist")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv} is not a readable CSV: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in GROUP_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{csv} needs the columns {', '.join(GROUP_COLUMNS)} (one row per photo); "
                        f"missing {', '.join(missing)}, found {', '.join(table.columns) or 'none'}")
    table = table[list(GROUP_COLUMNS)].apply(lambda col: col.str.strip())
    if table.empty:
        raise DataError(f"{csv} lists no photos")
    # Row numbers as a spreadsheet shows them: the header is line 1.
    lines = table.index.to_numpy() + 2
    empty = (table["path"] == "") | (table["lesion_id"] == "")
    if empty.any():
        raise DataError(f"{csv}: empty path or lesion_id on line(s) {lines[empty.to_numpy()][:10].tolist()}")
    base = csv.resolve().parent
    table["path"] = [str(p if Path(p).is_absolute() else base / p) for p in table["path"]]
    dup = table["path"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise DataError(f"{csv}: the same photo is listed more than once (line(s) {lines[dup][:10].tolist()})")
    absent = np.array([not Path(p).is_file() for p in table["path"]])
    if absent.any():
        raise DataError(f"{csv}: {int(absent.sum())} photo(s) do not exist, e.g. line {int(lines[absent][0])}: "
                        f"{table['path'].to_numpy()[absent][0]}")
    return table.reset_index(drop=True)


GROUP_RESULT_COLUMNS = ["lesion_id", "n_images", "n_unreadable", "n_used", "n_skipped", "probability", "decision",
                        "threshold", "out_of_distribution", "error"]


def predict_groups(predictor: Predictor, table: pd.DataFrame, *, tta: bool | None = None) -> pd.DataFrame:
    """One row per lesion of ``table`` (from :func:`read_group_csv`), in order of first appearance.

    Each photo is predicted as ``skinlesion predict`` would; unreadable photos are counted in
    ``n_unreadable`` (their messages joined in ``error``) and left out, photos the model does not
    assess in ``n_skipped``; the rest are combined by :func:`combine_predictions`.
    """
    import pandas as pd

    from skinlesion.data.intake import ImageRejected, read_file_bytes

    rows: list[dict[str, Any]] = []
    for lesion, group in table.groupby("lesion_id", sort=False):
        preds: list[Prediction] = []
        errors: list[str] = []
        for path in group["path"]:
            try:
                # Size-limited read: a huge photo is one unreadable photo, not a MemoryError.
                preds.append(predictor.predict(read_file_bytes(path), tta=tta))
            except (ImageRejected, OSError) as exc:
                errors.append(f"{Path(path).name}: {getattr(exc, 'message', None) or exc}")
        res = combine_predictions(preds, predictor.policy)
        rows.append({**res, "lesion_id": lesion, "n_images": len(group), "n_unreadable": len(errors),
                     "error": "; ".join(errors)})
    return pd.DataFrame(rows, columns=GROUP_RESULT_COLUMNS)

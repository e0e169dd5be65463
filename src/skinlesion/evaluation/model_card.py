"""The model card of a bundle, built once as sections and rendered as markdown (CLI) or HTML (web app).

:func:`build_model_card` collects the facts (bundle.json, and the evaluation report when there is
one) into a :class:`ModelCard`: a title, warning banners and :class:`Section` s of simple blocks
(headings, paragraphs, bullet lists, tables). :meth:`ModelCard.to_markdown` writes the file
``skinlesion model-card`` prints; the web app's ``/model`` page renders the same sections, so
both show the same words.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from skinlesion import DISCLAIMER, config
from skinlesion.bundle.format import Bundle, load, load_meta
from skinlesion.bundle.meta import BundleMeta
from skinlesion.data.audit import AUDIT_RECORD
from skinlesion.data.sources import INFO
from skinlesion.evaluation.common import (
    METRIC_LABELS,
    ReportError,
    band_text,
    calibration_text,
    default_report_dir,
    fmt,
    fmt_ci,
    load_evaluation,
    md_table,
    num,
    policy_text,
)
from skinlesion.evaluation.report import report_threshold, skin_tone_rows
from skinlesion.io import read_json

TRAINING_DATA_TEXT = (
    "Kaggle \"Melanoma Skin Cancer Dataset of 10000 Images\": dermoscopic photographs resized to "
    "300x300 JPEG, labelled benign or malignant, in fixed `train/` and `test/` folders. Known "
    "quirks that matter for anyone reading the numbers:"
)
TRAINING_DATA_QUIRKS: tuple[str, ...] = (
    "**Duplicates across splits.** The same lesion image (exact copies and near copies: re-crops, "
    "re-compressions) occurs in both `train/` and `test/`; `skinlesion data audit` lists them and "
    "the `test_dedup` evaluation set drops them. Scores on the full test split are optimistic.",
    "**No patient or lesion identifiers.** Splits cannot be grouped by patient, so images of the "
    "same patient or lesion may sit on both sides of every split (train/validation too).",
    "**Skin-tone skew.** Most images show light skin (ITA categories *very light* and *light*); "
    "brown and dark skin are barely represented, so performance there is unknown.",
    "**No metadata.** No age, sex, body site, acquisition device, histopathology confirmation "
    "status or diagnosis subtype (labels are only benign/malignant), and the provenance of the "
    "images is not documented in detail.",
    "Class balance is close to 50/50, far from the low prevalence of malignancy in practice, so "
    "PPV and NPV here do not transfer to a clinic.",
)
MULTI_SOURCE_QUIRKS: tuple[str, ...] = (
    "**The sets overlap.** Every HAM10000 melanoma and most ISIC 2017 melanomas also sit in the Kaggle set's "
    "malignant class (`skinlesion data audit --sources ...`), so in the Kaggle set the collection predicts the "
    "label. Splits group copies and lesion-mates; the Kaggle test score still contains part of that shortcut.",
    "**Different cameras and framing per set** (300x300 crops, 200x150 4:3 frames, 256x256 squashed frames; "
    "vignettes on Kaggle malignant images only), which a model can learn instead of the lesion.",
    "**Skin-tone skew.** Most images show light skin; brown and dark skin are barely represented.",
    "**Class balance differs by set** (Kaggle about 50/50, HAM10000 20 % malignant, ISIC 2017 19 %), far "
    "from clinical prevalence: PPV and NPV do not transfer to a clinic.",
)
OUT_OF_SCOPE_USES: tuple[str, ...] = (
    "Diagnosing, ruling out or triaging skin cancer for any real person, or any clinical decision.",
    "Use by patients or the public to decide whether to see a doctor.",
    "Non-dermoscopic photos (phone snapshots, clinical close-ups), histology, or images of "
    "anything that is not a single skin lesion; the out-of-distribution flag catches only some.",
    "Populations the training data do not represent: darker skin tones, children, acral or "
    "mucosal sites, rare lesion types.",
    "Any regulated or commercial use: it is not a medical device and has no clearance or approval.",
)
LIMITATIONS: tuple[str, ...] = (
    "One public dataset of uncertain provenance; no external clinical validation.",
    "Reported test scores are optimistic because of train/test duplicates; prefer `test_dedup` numbers.",
    "Balanced classes: PPV/NPV do not reflect real-world prevalence.",
    "Skin-tone coverage is narrow; subgroups with few images cannot be judged.",
    "Calibration was fitted on a validation split from the same source; it will drift on other cameras, "
    "clinics and populations.",
    "Explanations (Grad-CAM and the like) show where the model looked, not why a lesion is malignant.",
)
SYNTHETIC_BANNER = ("**SYNTHETIC MODEL.** Trained on generated images, only to exercise the software. It knows "
                    "nothing about skin cancer.")
NOT_A_DEVICE_BANNER = f"**NOT A MEDICAL DEVICE.** {DISCLAIMER}"

BlockKind = Literal["heading", "text", "bullets", "table"]


@dataclass
class Block:
    """One piece of a section: a sub-heading, a paragraph, a bullet list or a table.

    Text may hold inline markdown (`code`, **bold**, *italic*), which both renderers handle.
    """

    kind: BlockKind
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def to_markdown(self) -> str:
        if self.kind == "heading":
            return f"### {self.text}"
        if self.kind == "bullets":
            return "\n".join(f"* {item}" for item in self.items)
        if self.kind == "table":
            return md_table(self.header, self.rows)
        return self.text


@dataclass
class Section:
    """A titled part of the card (a ``##`` heading in markdown)."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def text(self, text: str) -> Section:
        self.blocks.append(Block("text", text=text))
        return self

    def heading(self, text: str) -> Section:
        self.blocks.append(Block("heading", text=text))
        return self

    def bullets(self, items: list[str] | tuple[str, ...]) -> Section:
        if items:
            self.blocks.append(Block("bullets", items=[str(i) for i in items]))
        return self

    def table(self, header: list[str], rows: list[list[Any]]) -> Section:
        self.blocks.append(Block("table", header=list(header), rows=[[str(c) for c in r] for r in rows]))
        return self


@dataclass
class ModelCard:
    """A model card: title, warning banners (most serious first) and sections."""

    run_id: str
    synthetic: bool
    banners: list[str]
    sections: list[Section]

    @property
    def title(self) -> str:
        return f"Model card: {self.run_id}"

    def section(self, title: str) -> Section:
        """The section called ``title`` (KeyError when there is none)."""
        for s in self.sections:
            if s.title == title:
                return s
        raise KeyError(title)

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [line for banner in self.banners for line in (f"> {banner}", "")]
        for section in self.sections:
            out += [f"## {section.title}", ""]
            out += [line for block in section.blocks for line in (block.to_markdown(), "")]
        return "\n".join(out).rstrip() + "\n"


def _audit_summary() -> str | None:
    f = config.reports_dir() / "audit" / "duplicates.csv"
    if not f.is_file():
        return None
    try:
        dup = pd.read_csv(f)
        exact = dup.loc[dup["kind"] == "exact", "test_path"].nunique()
        near = dup.loc[dup["kind"] == "near", "test_path"].nunique()
    except (KeyError, ValueError, OSError):
        return None
    rule = ""
    try:  # audit.json (absent in audits written before it existed) names the near-duplicate rule
        r = read_json(f.with_name(AUDIT_RECORD)).get("rule") or {}
        rule = (f" (near: pHash distance ≤ {int(r['max_phash_distance'])} and thumbnail correlation "
                f"≥ {float(r['min_thumb_correlation']):.2f})")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return (f"The duplicate audit (`{config.display_path(f)}`) found {exact} test images with an exact copy "
            f"and {near} with a near copy{rule} in the training data.")


def _metrics_rows(r: dict[str, Any]) -> list[list[str]]:
    return [[label, fmt_ci((r.get("at_threshold") or {}).get(key)), fmt_ci((r.get("at_0.5") or {}).get(key))]
            for key, label in METRIC_LABELS.items()]


def _member_bundles(bundle_path: Path) -> list[Bundle]:
    """The bundles whose outputs make this bundle's answer, as the Predictor loads them."""
    from skinlesion.serving.inference import Predictor

    return Predictor.member_bundles(load(bundle_path))


def _recipe(meta: BundleMeta) -> str:
    """One model's architecture and training recipe, in one line."""
    t = meta.training
    fine_tuned = int(t.config.get("fine_tune") or 0) > 0
    augment = ", ".join(t.config.get("augment") or ()) or "none"
    return (f"{meta.backbone} ({meta.weights or 'n/a'} weights) + dense head (hidden units: {t.head_units}); "
            + ("head trained on the frozen backbone's features" if meta.stage == "head" else meta.stage or "n/a")
            + (f" with augmentation {augment}" if fine_tuned else "")
            + f"; training views {', '.join(t.views) or 'n/a'}"
            + (f"; each image cropped to its lesion first (an Otsu rule, skinlesion.models.lesion; crop rule "
               f"{meta.crop_rule}), in training and when served" if meta.lesion_crop else "")
            + f"; seed {t.seed}")


def _details(meta: BundleMeta, members: list[Bundle]) -> Section:
    rows = [["Run id", meta.run_id], ["Created", meta.created or "n/a"]]
    if meta.kind == "ensemble":
        rows.append(["Kind", f"ensemble of {len(members)} models: the mean of their calibrated P(malignant), "
                             "calibrated again with the ensemble's own temperature and threshold"])
        rows += [[f"Member `{m.meta.run_id}`", _recipe(m.meta)] for m in members]
    else:
        rows += [["Kind", meta.kind], ["Architecture", _recipe(meta)]]
    rows += [["Task", "binary classification of a dermoscopic image: benign vs malignant; output P(malignant)"],
             ["Input", f"RGB {meta.input_size} x {meta.input_size} px, centre square crop, pixel values 0-255"]]
    return Section("Model details").table(["", ""], rows)


def _licences(sources: list[str]) -> str:
    """The training sets' licences, as the model inherits their terms."""
    known = [f"{k}: {INFO[k].licence}" for k in sources if k in INFO]
    return (f" Their licences ({'; '.join(known)}) carry over to what this model may be used for: check any "
            "non-commercial terms before using it outside research.") if known else ""


def _training_data(meta: BundleMeta) -> Section:
    t = meta.training
    s = Section("Training data")
    if meta.synthetic:
        where = config.display_path(t.data_dir) if t.data_dir else "n/a"
        s.text(f"Generated (SYNTHETIC) images from `{where}`; nothing below about the Kaggle data "
               "applies to this run's numbers.")
    if t.sources and not t.data_dir:
        return s.text(
            f"This run learned from the data sources {', '.join(f'`{k}`' for k in t.sources)} together: "
            f"{t.n_train} training and {t.n_val} validation images, split by lesion groups and duplicates so no "
            f"copy or lesion-mate of a test image was trained on (`splits.csv` in the bundle gives every image's "
            f"split and the reason). Source fingerprints: "
            + ", ".join(f"{k} {v}" for k, v in t.sources.items()) + "." + _licences(list(t.sources))
        ).bullets(MULTI_SOURCE_QUIRKS)
    s.text(TRAINING_DATA_TEXT).bullets(TRAINING_DATA_QUIRKS)
    where = config.display_path(t.data_dir) if t.data_dir else "n/a"
    return s.text(f"This run: {t.n_train} training, {t.n_val} validation (held out from Kaggle `train/`) and "
                  f"{t.n_test} test images (Kaggle `test/`), from `{where}`.")


def _evaluation(meta: BundleMeta, bundle_path: Path, report: Path | None,
                results: dict[str, Any] | None) -> Section:
    s = Section("Evaluation")
    if results:
        s.text(f"From the report in `{config.display_path(report or '')}`"
               + (" (with test-time augmentation)" if results.get("tta") else "")
               + ". 95 % CIs: stratified percentile bootstrap.")
        thr = report_threshold(results, meta)
        for name, r in results.get("sets", {}).items():
            s.heading(f"`{name}` (n = {r.get('n', 0)})")
            if "at_threshold" not in r:
                s.text("No metrics: " + "; ".join(r.get("notes", ["no readable images"])))
                continue
            s.table(["Metric", f"at frozen threshold {thr:.3f}", "at 0.5 (seed-comparable)"], _metrics_rows(r))
            s.text(f"ECE {fmt(r.get('ece'))}, Brier {fmt(r.get('brier'))}.")
            s.bullets([f"note: {n}" for n in r.get("notes", [])])
        return s
    s.text(f"No evaluation report found: run `skinlesion evaluate {config.display_path(bundle_path)}` and "
           "regenerate this card. Validation metrics (the data the threshold and temperature were fitted on, "
           "so optimistic):")
    v = meta.val_metrics
    rows = [[METRIC_LABELS[k], fmt(v.get(k))] for k in METRIC_LABELS if k in v]
    return s.table(["Metric (validation)", "value"], rows) if rows else s.text("none recorded")


def _calibration(meta: BundleMeta, results: dict[str, Any] | None) -> Section:
    items = [calibration_text(meta)]
    v = meta.val_metrics
    if "ece_before" in v or "ece_after" in v:
        items.append(f"validation ECE before {fmt(v.get('ece_before'))}, after {fmt(v.get('ece_after'))}")
    items.append("reliability diagrams: `figures/reliability_<set>.png` in the report" if results else
                 "no reliability diagrams until the bundle is evaluated")
    return Section("Calibration").bullets(items)


def _skin_tone(results: dict[str, Any] | None) -> Section:
    s = Section("Skin-tone subgroups")
    tables = [(n, r["skin_tone"]) for n, r in (results or {}).get("sets", {}).items()
              if (r.get("skin_tone") or {}).get("rows")]
    if not tables:
        return s.text("Not computed (evaluate the bundle with the skin-tone table on). Expect few or no images "
                      "of darker skin: the training data are mostly light skin.")
    for name, table in tables:
        header, rows, notes = skin_tone_rows(table)
        s.heading(f"`{name}`").table(header, rows).bullets(notes)
    return s


def _policy(meta: BundleMeta) -> Section:
    items = [policy_text(meta), f"uncertain band: {band_text(meta)}"]
    policy = meta.decision
    if policy is not None:
        items.append(f"band rule: below the band lie at most {1 - policy.band_sensitivity:.0%} of validation "
                     f"malignant lesions; at or above it at most {1 - policy.band_specificity:.0%} of validation "
                     "benign ones")
        pv = policy.validation_metrics
        if "fraction_uncertain" in pv:
            items.append(f"on validation: {num(pv['fraction_uncertain']):.0%} referred as uncertain, "
                         f"{num(pv.get('malignant_called_benign_appearing')):.1%} of malignant lesions called "
                         "benign-appearing")
    items.append("the threshold and band were frozen on validation data and never tuned on a test set")
    return Section("Decision policy").bullets(items)


def _ood(meta: BundleMeta) -> Section:
    s = Section("Out-of-distribution detector")
    o = meta.ood
    if o is None:
        return s.text("None in this bundle" + (" (ensembles average their members' flags)"
                                               if meta.kind == "ensemble" else "") + ".")
    return s.text(f"Squared Mahalanobis distance of the image's pooled backbone features to the training "
                  f"features (Ledoit-Wolf shrunk covariance); flagged when above the {num(o.quantile):.1%} quantile "
                  f"of validation distances (threshold {fmt(o.threshold, 1)}). It is meant to catch images far "
                  "from dermoscopy (objects, documents, animals), not every unusual lesion photo; a flag means the "
                  "probability must be ignored, no flag does not mean the image is fit for the model.")


def _gate(meta: BundleMeta, members: list[Bundle]) -> Section:
    """The image-type gate and its measured rates (``reports/gate/<run>/gate.json``); an ensemble's is
    its first member's that has one, as the Predictor uses it."""
    from skinlesion.io import read_json

    s = Section("Image-type gate (dermoscopic, clinical photo, other)")
    g = meta.raw.get("gate")
    if not g and meta.kind == "ensemble":
        from skinlesion.serving.inference import Predictor

        owner = Predictor.gate_owner(members)
        if owner is not None:
            s.text(f"The ensemble's images are screened by its member `{owner.meta.run_id}`'s gate.")
            meta, g = owner.meta, owner.meta.raw["gate"]
    if not g:
        return s.text("None in this bundle: every image gets a benign/malignant answer, including phone photos "
                      "and pictures that are not skin, for which the answer is meaningless. Fit one with "
                      "`skinlesion gate fit BUNDLE`.")
    s.text(f"Before any decision, a logistic-regression head on the same pooled features sorts the image into "
           f"dermoscopic, clinical (an ordinary photo of skin) or other (not skin). Only dermoscopic images "
           f"(calibrated P(dermoscopic) >= {fmt(g.get('threshold'))}) are assessed; the others get "
           "\"not assessed\" and no benign/malignant decision. Phone photos are not supported.")
    report = config.reports_dir() / "gate" / meta.run_id / "gate.json"
    if report.is_file():
        r = read_json(report, ReportError)
        s.heading("Measured: fraction set aside as not dermoscopic (`skinlesion gate evaluate`)")
        s.table(["set", "n", "set aside [95 % CI]"], [
            [name, v["n"], f"{v['rate']:.1%} [{v['ci'][0]:.1%}, {v['ci'][1]:.1%}]"]
            for name, v in r["flagged_rate"].items()])
    else:
        s.text("Not measured yet for this bundle (`skinlesion gate evaluate BUNDLE`).")
    return s


CROP_LIMITATION = ("A member reads each image cropped to its lesion by a classical rule (found on the 224-px reading, "
                   "cut from the decoded image): a small lesion in a small image (the Kaggle set's 300 px, HAM10000's "
                   "200 x 150 copies here) is still scaled up, and where the rule finds no lesion it reads the whole "
                   "image (README, goals: Kaggle test AUC; `tools/auc_strata.py --by crop`).")


def _limitations(meta: BundleMeta, members: list[Bundle]) -> Section:
    items = list(LIMITATIONS)
    if meta.training.sources and not meta.training.data_dir:
        items[:2] = ["Three public dermoscopic collections that overlap and share a few devices; no external "
                     "clinical validation. Leave-one-source-out scores (above) are the estimate for a new "
                     "collection, and they are much lower than in-source test scores.",
                     "Phone photos and other non-dermoscopic images are out of scope.",
                     "Benign keratoses (seborrhoeic keratoses, solar lentigines) are its weakest point: on "
                     "collections it never saw it separates malignant lesions from them far worse than from nevi, "
                     "and calls most of them suspicious (README, recipe search; `tools/per_diagnosis.py`)."]
    if meta.synthetic:
        items.insert(0, "SYNTHETIC MODEL: it was trained on generated images, not real lesions; its output says "
                        "nothing about skin cancer.")
    if any(b.meta.lesion_crop for b in members):
        items.append(CROP_LIMITATION)
    return Section("Limitations").bullets(items + list(meta.limitations))


def _leakage(results: dict[str, Any] | None) -> Section:
    items = ["The validation split is drawn from Kaggle `train/` without patient ids, so near-identical images "
             "of one lesion can fall into both training and validation: the threshold and temperature may be "
             "slightly optimistic.",
             "Kaggle's `test/` shares exact and near-duplicate images with `train/`."]
    audit = _audit_summary()
    if audit:
        items.append(audit)
    sets = (results or {}).get("sets", {})
    if "test_dedup" in sets and "test" in sets:
        a = (sets["test"].get("at_threshold") or {}).get("roc_auc")
        b = (sets["test_dedup"].get("at_threshold") or {}).get("roc_auc")
        items.append(f"ROC AUC on the full test split {fmt_ci(a)} vs the de-duplicated subset {fmt_ci(b)}.")
    return Section("Leakage notes").bullets(items)


# How and where a run went, not what it learned: `distributed` only spreads the same batches over devices.
_RUN_KEYS = ("sources", "holdout", "out_dir", "run_id", "progress", "data_dir", "splits_file", "distributed")


def _same_recipe(loso: dict[str, Any], bundle: dict[str, Any]) -> bool:
    """A LOSO run's training config and a bundle's describe the same recipe (data and run bookkeeping aside).

    An option added to ``TrainConfig`` after the LOSO run is absent from its config; the run then used
    that option's default, so the default stands in for it.
    """
    from skinlesion.training.train import TrainConfig

    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    then = {**{k: defaults[k] for k in bundle if k not in loso and k in defaults}, **loso}
    return ({k: v for k, v in then.items() if k not in _RUN_KEYS}
            == {k: v for k, v in bundle.items() if k not in _RUN_KEYS})


def _loso_runs() -> list[dict[str, Any]]:
    from skinlesion.io import read_json

    return [read_json(f, ReportError) for f in sorted((config.reports_dir() / "generalisation").glob("*/details.json"))]


def _loso_run(meta: BundleMeta, members: list[Bundle], runs: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The LOSO run of this bundle's recipe: the same training config; for an ensemble, the run of
    ``generalise --ensemble-of`` whose member recipes are, in order, those of its members."""
    runs = _loso_runs() if runs is None else runs
    if meta.kind != "ensemble":
        return next((d for d in runs if _same_recipe(d.get("config", {}), meta.training.config)), None)
    recipes = []
    for member in members:
        found = _loso_run(member.meta, [member], runs)
        if found is None:
            return None
        recipes.append(found["recipe"])
    return next((d for d in runs if d.get("config", {}).get("ensemble_of") == recipes), None)


def _generalisation(meta: BundleMeta, members: list[Bundle]) -> Section:
    """Leave-one-source-out results of this bundle's recipe, its robustness and site-calibration curves."""
    from skinlesion.io import read_json

    s = Section("Generalisation and robustness")
    root = config.reports_dir()
    recipe = _loso_run(meta, members)
    if recipe is None:
        s.text("No leave-one-source-out run of this recipe found (`skinlesion generalise --recipe NAME` with the "
               "same training options); expect lower performance on dermatoscopes and collections it never saw.")
    else:
        s.text(f"Leave-one-source-out (recipe `{recipe['recipe']}`): trained on the other sources, scored on the "
               "held-out one at the threshold frozen on the training sources' validation data.")
        s.table(["held-out source", "n", "ROC AUC [95 % CI]", "sensitivity", "specificity"], [
            [src, v["n"], f"{fmt(v['roc_auc'])} [{fmt(v['roc_auc_ci'][0])}, {fmt(v['roc_auc_ci'][1])}]",
             fmt(v["sensitivity"]), fmt(v["specificity"])] for src, v in recipe["held_out"].items()])
        curves = sorted((root / "site").glob(f"loso-{recipe['recipe']}-*/curve.json"))
        if curves:
            rows = []
            for f in curves:
                c = read_json(f, ReportError)
                for point in c["curve"]:
                    rows.append([c["site"]["name"], point["n"], fmt(point["sensitivity_mean"]),
                                 fmt(point["specificity_mean"])])
            s.heading("After re-fitting the threshold on N labelled images of the new site (`skinlesion calibrate --curve`)")
            s.table(["site (never trained on)", "N", "sensitivity (mean)", "specificity (mean)"], rows)
    rob = root / "robustness" / meta.run_id / "robustness.json"
    if rob.is_file():
        r = read_json(rob, ReportError)
        s.heading(f"Robustness (`skinlesion robustness`, {r.get('n_images', '?')} images)")
        s.table(["transform", "decision flips", "mean abs change of P", "95th percentile"], [
            [name, f"{v['decision_flip_rate']:.1%}", fmt(v["mean_abs_dp"]), fmt(v["p95_abs_dp"])]
            for name, v in r["transforms"].items() if name != "id"])
    return s


def find_report(meta: BundleMeta, bundle_path: str | os.PathLike[str],
                report_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The evaluation report of a bundle: ``report_dir`` (which must be one), else
    ``reports/<run-id>`` when it exists, else None."""
    if report_dir is not None:
        report = Path(report_dir)
        if not (report / "metrics.json").is_file():
            raise ReportError(f"{report} is not an evaluation report (no metrics.json); "
                              f"run `skinlesion evaluate {bundle_path}` first or leave --report out")
        return report
    candidate = default_report_dir(meta)
    return candidate if (candidate / "metrics.json").is_file() else None


def build_model_card(meta: BundleMeta, bundle_path: str | os.PathLike[str],
                     report_dir: str | os.PathLike[str] | None = None) -> ModelCard:
    """The :class:`ModelCard` of a bundle whose metadata is already loaded (see :func:`find_report`)."""
    bundle_path = Path(bundle_path)
    report = find_report(meta, bundle_path, report_dir)
    results = load_evaluation(report)[0] if report else None
    if results is not None and results.get("bundle", meta.run_id) != meta.run_id:
        # Another model's metrics and threshold under this model's name would be a false card.
        raise ReportError(f"{report} is the evaluation of {results['bundle']!r}, not of {meta.run_id!r}; "
                          f"run `skinlesion evaluate {bundle_path}` or give its own report")
    banners = ([SYNTHETIC_BANNER] if meta.synthetic else []) + [NOT_A_DEVICE_BANNER]
    intended = Section("Intended use").text(
        "Research and education only: studying dermoscopic image classification, calibration, decision "
        "thresholds, explanations and their failure modes, on public data.",
    ).heading("Out-of-scope uses").bullets(OUT_OF_SCOPE_USES)
    versions = Section("Versions")
    if meta.versions:
        versions.table(["Package", "Version"], [[k, v] for k, v in meta.versions.items()])
    else:
        versions.text("not recorded")
    members = _member_bundles(bundle_path)  # opened (and checksummed) once, for every section that needs them
    sections = [
        _details(meta, members), intended, _training_data(meta), _evaluation(meta, bundle_path, report, results),
        _generalisation(meta, members), _calibration(meta, results), _skin_tone(results), _policy(meta),
        _gate(meta, members), _ood(meta), _limitations(meta, members),
        _leakage(results), versions,
    ]
    return ModelCard(meta.run_id, meta.synthetic, banners, sections)


def model_card(bundle_path: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None) -> str:
    """Model card (markdown) of a bundle, with the evaluation from ``report_dir`` (default
    ``reports/<run-id>`` when it exists)."""
    meta = load_meta(bundle_path)
    return build_model_card(meta, bundle_path, report_dir).to_markdown()


def write_model_card(bundle_path: str | os.PathLike[str], report_dir: str | os.PathLike[str]) -> Path:
    """Write ``MODEL_CARD.md`` beside the evaluation report in ``report_dir`` and return its path.

    ``skinlesion evaluate`` and ``skinlesion run`` call it after every report they write, so a
    committed card never describes an older model than the report beside it.
    """
    from skinlesion.io import atomic_write_text

    # Atomic: a failed write leaves the previous card whole.
    return atomic_write_text(Path(report_dir) / "MODEL_CARD.md", model_card(bundle_path, report_dir))

"""Turn bundle.json into the rows and sentences of the model card page (pure functions)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from skinlesion.metrics.calibration import BENIGN_APPEARING, SUSPICIOUS, UNCERTAIN_REFER

# (key in the metrics dicts of bundle.json, label shown, True if it is a fraction shown as %)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("n", "Images", False),
    ("n_pos", "of which malignant", False),
    ("roc_auc", "ROC AUC", False),
    ("pr_auc", "PR AUC", False),
    ("sensitivity", "Sensitivity (malignant caught)", True),
    ("specificity", "Specificity (benign cleared)", True),
    ("balanced_accuracy", "Balanced accuracy", True),
    ("ppv", "Positive predictive value", True),
    ("npv", "Negative predictive value", True),
    ("ece", "Expected calibration error", False),
    ("brier", "Brier score", False),
)

DECISION_HELP = {
    SUSPICIOUS: "The probability is at or above the upper edge of the uncertainty band: "
                "the model would send this lesion for a specialist's assessment.",
    UNCERTAIN_REFER: "The probability falls inside the uncertainty band, where the model cannot "
                     "tell reliably: have the lesion checked by a dermatologist.",
    BENIGN_APPEARING: "The probability is below the uncertainty band: the model sees nothing "
                      "suspicious. This does not rule out skin cancer.",
}


def fmt_number(value: Any, percent: bool = False) -> str:
    """A value for display: ints as is, floats as % or to 3 decimals, missing as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if percent:
        return f"{100.0 * value:.1f}%"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def metric_rows(metrics: dict[str, dict[str, Any]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(split names, [(label, formatted value per split)]) for the metrics table."""
    splits = [s for s in ("val", "test") if isinstance(metrics.get(s), dict)]
    splits += [s for s, v in metrics.items() if s not in splits and isinstance(v, dict)]
    rows = [(label, [fmt_number(metrics[s].get(key), pct) for s in splits])
            for key, label, pct in METRICS if any(key in metrics[s] for s in splits)]
    return splits, rows


def limitations(meta: dict[str, Any]) -> list[str]:
    """Known limitations of the served model, most important first."""
    training = meta.get("training") or {}
    dataset = Path(str(training.get("data_dir", ""))).name or "one dataset"
    out = []
    if meta.get("synthetic"):
        out.append("SYNTHETIC MODEL: it was trained on generated images, not real lesions. Its output "
                   "says nothing about skin cancer.")
    out += [
        "Not clinically validated. This is a research tool, not a medical device, and it must not be "
        "used to diagnose, treat or rule out skin cancer.",
        f"Trained and validated on a single dataset ({dataset}); accuracy on other dermoscopes, clinics, "
        "populations and photo conditions is unknown.",
        "Public dermoscopy datasets are dominated by light skin; accuracy on darker skin has not been "
        "established.",
        "It answers one question (benign or malignant) for one lesion per image. It does not name the "
        "lesion type, and it was never shown images that are not dermoscopic photos.",
        "Images unlike the training data are flagged by a feature-distance check, which can miss some "
        "unusual images and flag some normal ones.",
        f"The threshold and the uncertainty band were chosen on {training.get('n_val', 'a few hundred')} "
        "validation images; small validation sets make them noisy.",
        "Heat maps (Grad-CAM and related methods) show where the model looked, not why a lesion is "
        "malignant; they are not a segmentation.",
    ]
    extra = meta.get("limitations")
    if isinstance(extra, str):
        out.append(extra)
    elif isinstance(extra, list):
        out += [str(x) for x in extra]
    return out


def card(meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the model card template shows, already formatted."""
    training = meta.get("training") or {}
    decision = meta.get("decision") or {}
    calibration = meta.get("calibration") or {}
    ood = meta.get("ood") or {}
    splits, rows = metric_rows(meta.get("metrics") or {})
    overview = [
        ("Run", meta.get("run_id", "—")),
        ("Created", meta.get("created", "—")),
        ("Kind", meta.get("kind", "single")),
        ("Backbone", meta.get("backbone", "—")),
        ("Pretrained weights", meta.get("weights", "—")),
        ("Input size", f"{meta['input_size']} × {meta['input_size']} px" if meta.get("input_size") else "—"),
        ("Training stage", meta.get("stage", "—")),
        ("Classes", ", ".join(meta.get("class_names", []))),
    ]
    if meta.get("members"):
        overview.append(("Ensemble members", ", ".join(map(str, meta["members"]))))
    data = [
        ("Dataset", Path(str(training.get("data_dir", "—"))).name),
        ("Synthetic images", "YES — generated, not real lesions" if meta.get("synthetic") else "no (real images)"),
        ("Data fingerprint", training.get("data_fingerprint", "—")),
        ("Training images", fmt_number(training.get("n_train"))),
        ("Validation images", fmt_number(training.get("n_val"))),
        ("Test images", fmt_number(training.get("n_test"))),
    ]
    policy = []
    if decision:
        policy = [
            ("Operating threshold", fmt_number(decision.get("threshold"), True)),
            ("Chosen to catch", f"{fmt_number(decision.get('target_sensitivity'), True)} of malignant lesions "
                                "(validation data)"),
            ("Uncertainty band", f"{fmt_number(decision.get('band_low'), True)} to "
                                 f"{fmt_number(decision.get('band_high'), True)}"),
            ("Rule", f"below {fmt_number(decision.get('band_low'), True)}: {BENIGN_APPEARING}; in the band: "
                     f"{UNCERTAIN_REFER}; at or above {fmt_number(decision.get('band_high'), True)}: {SUSPICIOUS}"),
        ]
    calib = [("Method", calibration.get("method", "none")),
             ("Temperature", fmt_number(calibration.get("temperature")))] if calibration else []
    ood_rows = [("Metric", ood.get("metric", "—")),
                ("Flag above quantile", fmt_number(ood.get("quantile")))] if ood else []
    versions = sorted((meta.get("versions") or {}).items())
    return {
        "name": meta.get("run_id", "model"), "synthetic": bool(meta.get("synthetic")),
        "overview": overview, "data": data, "splits": splits, "metric_rows": rows, "policy": policy,
        "calibration": calib, "ood": ood_rows, "versions": versions, "limitations": limitations(meta),
    }

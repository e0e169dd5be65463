"""``bundle.json`` as typed objects (:class:`BundleMeta`), so readers never chain ``.get(...) or {}``.

The file format itself is unchanged (schema version 1); :meth:`BundleMeta.from_dict` fills in
the defaults older or hand-written bundles leave out, and ``raw`` keeps the file's exact
contents for display (``skinlesion info``, the web app's ``/api/v1/model``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinlesion.metrics.calibration import DecisionPolicy


def _opt_int(value: Any, name: str) -> int | None:
    """``value`` as an int (None stays None); anything else is a ValueError naming the field."""
    if value is None:
        return None
    # int() would quietly truncate 64.5 to 64 and read true as 1: neither is an integer in JSON.
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name!r} must be an integer, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name!r} must be an integer, not {value!r}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    """``value`` as a mapping (empty for None/missing); anything else is a TypeError naming the
    field, so a hand-edited bundle.json gets a clear error, not an AttributeError traceback."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name!r} must be a JSON object, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class CalibrationInfo:
    """How raw model outputs were calibrated (``temperature`` 1.0 = used as is)."""

    method: str | None = None
    temperature: float = 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CalibrationInfo | None:
        data = _mapping(data, "calibration")
        if not data:
            return None
        t = 1.0 if data.get("temperature") is None else float(data["temperature"])
        # Every served probability is divided through it: checked here, not at the first predict.
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"'calibration.temperature' must be a finite number > 0, not {data['temperature']!r}")
        return cls(method=_opt_str(data.get("method")), temperature=t)


def _decision(data: Mapping[str, Any]) -> DecisionPolicy | None:
    """The bundle's :class:`DecisionPolicy` (None when it has none), its cut points checked to be
    probabilities: DecisionPolicy checks only that they are finite and ordered, and a threshold
    outside [0, 1] would give every image the same decision."""
    if not data:
        return None
    for name in ("threshold", "band_low", "band_high"):
        value = data.get(name)  # a missing one is DecisionPolicy.from_dict's to report
        if value is None:
            continue
        try:
            in_range = 0.0 <= float(value) <= 1.0  # NaN fails this too
        except (TypeError, ValueError):
            in_range = False
        if not in_range:
            raise ValueError(f"'decision.{name}' must be a probability in [0, 1], not {value!r}")
    return DecisionPolicy.from_dict(data)


def _check_temperatures(decision: DecisionPolicy | None, calibration: CalibrationInfo | None) -> None:
    """Refuse a bundle whose two temperatures disagree. Serving scales raw outputs by
    ``calibration.temperature`` and then applies the decision's threshold and refer band, which
    were fitted on probabilities scaled by ``decision.temperature``; every writer (training,
    ensembles, site calibration) stores the one fitted value in both."""
    if decision is None or calibration is None:
        return  # an uncalibrated bundle serves raw outputs (temperature 1.0)
    if not math.isclose(decision.temperature, calibration.temperature, rel_tol=1e-6):
        raise ValueError(
            f"'calibration.temperature' ({calibration.temperature!r}) differs from 'decision.temperature' "
            f"({decision.temperature!r}); the threshold and refer band hold only for probabilities scaled by "
            "the temperature they were fitted with, so both must record that one value"
        )


@dataclass(frozen=True)
class OODInfo:
    """The out-of-distribution detector stored beside the model."""

    file: str
    threshold: float = math.nan
    quantile: float | None = None
    metric: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OODInfo | None:
        data = _mapping(data, "ood")
        if "file" not in data:
            return None
        t = data.get("threshold")
        return cls(file=str(data["file"]), threshold=math.nan if t is None else float(t),
                   quantile=_opt_float(data.get("quantile")), metric=_opt_str(data.get("metric")))


@dataclass(frozen=True)
class TrainingInfo:
    """Where the training data came from, how it was split, and the training configuration."""

    data_dir: str | None = None
    splits_file: str | None = None
    data_fingerprint: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    skipped_unreadable: int | None = None
    members: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    # Multi-source training: source name -> fingerprint of the records it read.
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrainingInfo:
        data = _mapping(data, "training")
        return cls(
            data_dir=_opt_str(data.get("data_dir")), splits_file=_opt_str(data.get("splits_file")),
            data_fingerprint=_opt_str(data.get("data_fingerprint")),
            n_train=_opt_int(data.get("n_train"), "training.n_train"),
            n_val=_opt_int(data.get("n_val"), "training.n_val"),
            n_test=_opt_int(data.get("n_test"), "training.n_test"),
            skipped_unreadable=_opt_int(data.get("skipped_unreadable"), "training.skipped_unreadable"),
            members=tuple(str(m) for m in data.get("members") or ()),
            config=dict(_mapping(data.get("config"), "training.config")),
            sources={str(k): str(v) for k, v in _mapping(data.get("sources"), "training.sources").items()},
        )

    @property
    def seed(self) -> int | None:
        return _opt_int(self.config.get("seed"), "training.config.seed")

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.config.get("views") or ())

    @property
    def head_units(self) -> int | None:
        return _opt_int(self.config.get("head_units"), "training.config.head_units")


@dataclass(frozen=True)
class BundleMeta:
    """Everything ``bundle.json`` says about a model, typed.

    ``decision`` is the frozen :class:`DecisionPolicy` (None when the bundle has none),
    ``metrics`` maps a split name ("val") to its metrics, ``members`` are the member bundle
    paths of an ensemble (relative to the ensemble's folder).
    """

    run_id: str
    kind: str = "single"
    schema_version: int = 1
    created: str | None = None
    class_names: tuple[str, ...] = ()
    backbone: str | None = None
    weights: str | None = None
    input_size: int | None = None
    stage: str | None = None
    synthetic: bool = False
    feature_layer: str = "features"
    last_conv_layer: str | None = None
    decision: DecisionPolicy | None = None
    calibration: CalibrationInfo | None = None
    ood: OODInfo | None = None
    training: TrainingInfo = field(default_factory=TrainingInfo)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    limitations: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def dihedral_tta(self) -> bool:
        """Whether the bundle is served as the mean over the 8 dihedral views (its threshold
        was fitted that way)."""
        return self.raw.get("tta") == "dihedral"

    @property
    def served_views(self) -> tuple[str, ...]:
        """The views a served prediction computes: the 8 dihedral views with dihedral TTA, else
        the plain view (``models.features.VIEWS`` names), each behind the lesion crop
        (``lc2_<view>``, ``models.lesion``) for a bundle trained on crops."""
        from skinlesion.models.features import VIEWS
        from skinlesion.models.lesion import crop_views

        return crop_views(tuple(VIEWS) if self.dihedral_tta else ("id",), self.lesion_crop)

    @property
    def lesion_crop(self) -> bool:
        """Whether this bundle reads each image cropped to its lesion (``TrainConfig.lesion_crop``). An
        ensemble does not (its members say for themselves; it copies its first member's training record)."""
        return self.kind != "ensemble" and bool(self.training.config.get("lesion_crop"))

    @property
    def crop_rule(self) -> int:
        """The lesion-crop rule this bundle was trained with (``models.lesion.RULE``; a bundle whose
        training record says only ``true`` predates rule 2: rule 1); 0 without a crop."""
        return int(self.training.config.get("lesion_crop") or 0) if self.lesion_crop else 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_run_id: str = "model") -> BundleMeta:
        """Parse a ``bundle.json`` dict; raises ValueError or TypeError when a present field is malformed."""
        data = _mapping(data, "bundle.json")
        decision = _mapping(data.get("decision"), "decision")
        extra = data.get("limitations")
        limitations = (extra,) if isinstance(extra, str) else tuple(str(x) for x in extra or ())
        metrics = _mapping(data.get("metrics"), "metrics")
        policy = _decision(decision)
        calibration = CalibrationInfo.from_dict(data.get("calibration"))
        _check_temperatures(policy, calibration)
        input_size = _opt_int(data.get("input_size"), "input_size")
        if input_size is not None and input_size < 1:
            raise ValueError(f"'input_size' must be a positive number of pixels, not {data['input_size']!r}")
        return cls(
            run_id=str(data.get("run_id") or default_run_id),
            kind=str(data.get("kind") or "single"),
            schema_version=int(data.get("schema_version", 1)),
            created=_opt_str(data.get("created")),
            class_names=tuple(str(c) for c in data.get("class_names") or ()),
            backbone=_opt_str(data.get("backbone")),
            weights=_opt_str(data.get("weights")),
            input_size=input_size,
            stage=_opt_str(data.get("stage")),
            synthetic=bool(data.get("synthetic")),
            feature_layer=str(data.get("feature_layer") or "features"),
            last_conv_layer=_opt_str(data.get("last_conv_layer")),
            decision=policy,
            calibration=calibration,
            ood=OODInfo.from_dict(data.get("ood")),
            training=TrainingInfo.from_dict(data.get("training")),
            metrics={str(k): dict(v) for k, v in metrics.items() if isinstance(v, Mapping)},
            members=tuple(str(m) for m in data.get("members") or ()),
            versions={str(k): str(v) for k, v in _mapping(data.get("versions"), "versions").items()},
            files={str(k): str(v) for k, v in _mapping(data.get("files"), "files").items()},
            limitations=limitations,
            raw=dict(data),
        )

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0 when the bundle is not calibrated)."""
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def val_metrics(self) -> dict[str, Any]:
        """Validation metrics recorded at training time (empty when none)."""
        return self.metrics.get("val", {})

    @property
    def all_members(self) -> tuple[str, ...]:
        """Ensemble members from the top-level list, else the training record's run ids."""
        return self.members or self.training.members

    @property
    def data_name(self) -> str:
        """The training data folder's name, for display."""
        return Path(self.training.data_dir).name if self.training.data_dir else "one dataset"

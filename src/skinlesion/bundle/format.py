"""Model bundles: one directory per run holding the model and everything needed to trust it.

    models/<run-id>/
      model.keras      raw RGB (0..255) in -> P(malignant) out
      bundle.json      schema, backbone, input size, classes, decision policy, calibration,
                       data fingerprint, package versions, SYNTHETIC flag, file checksums
      history.csv      training curves
      splits.csv       the exact train/val/test split used
      ood.npz          feature-space statistics for out-of-distribution flags (optional)

Bundles are written to a temporary folder and renamed into place, so a crash never leaves
a half-written bundle that looks valid. ``load`` verifies checksums and the schema.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinlesion import CLASS_NAMES, config

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.keras"


class BundleError(ValueError):
    """A bundle that is missing, corrupt, or of an unknown schema."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions that decide whether a bundle reproduces."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("skinlesion", "tensorflow", "keras", "numpy", "pillow", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def new_run_id(backbone: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{backbone}-{uuid.uuid4().hex[:6]}"


@dataclass
class Bundle:
    """A loaded bundle: its folder and metadata; the Keras model loads on first use."""

    path: Path
    meta: dict[str, Any]
    _model: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "single")

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic"))

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    @property
    def model(self):
        if self._model is None:
            self._model = load_keras_model(self.path / MODEL_FILE)
        return self._model

    def file(self, name: str) -> Path:
        return self.path / name


def load_keras_model(path: Path):
    import keras

    import skinlesion.models.layers  # noqa: F401  registers ImagePreprocess for deserialisation

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def write_bundle(
    meta: dict[str, Any],
    files: dict[str, Any],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
) -> Path:
    """Write a bundle atomically and return its folder.

    ``files`` maps a file name to a writer: a keras Model (saved as .keras), a pandas
    DataFrame (CSV), bytes, a path to copy, or a callable ``f(path)``.
    """
    import keras
    import pandas as pd

    out_dir = Path(out_dir) if out_dir else config.models_dir()
    run_id = run_id or new_run_id(meta.get("backbone", "model"))
    final = out_dir / run_id
    if final.exists():
        raise BundleError(f"bundle folder already exists: {final}")
    tmp = out_dir / f".tmp-{run_id}"
    tmp.mkdir(parents=True)
    try:
        checksums = {}
        for name, obj in files.items():
            target = tmp / name
            if isinstance(obj, keras.Model):
                obj.save(target)
            elif isinstance(obj, pd.DataFrame):
                obj.to_csv(target, index=False)
            elif isinstance(obj, (bytes, bytearray)):
                target.write_bytes(obj)
            elif isinstance(obj, (str, os.PathLike)):
                shutil.copyfile(obj, target)
            elif callable(obj):
                obj(target)
            else:
                raise TypeError(f"don't know how to write {name!r} ({type(obj).__name__})")
            checksums[name] = sha256_file(target)
        full = {
            "schema_version": SCHEMA_VERSION,
            "kind": "single",
            "run_id": run_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "class_names": list(CLASS_NAMES),
            "positive_class": CLASS_NAMES[1],
            "versions": package_versions(),
            **meta,
            "files": checksums,
        }
        (tmp / BUNDLE_FILE).write_text(json.dumps(full, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def update_meta(path: str | os.PathLike[str], **changes: Any) -> dict[str, Any]:
    """Rewrite bundle.json with ``changes`` merged in (atomically)."""
    path = Path(path)
    meta = json.loads((path / BUNDLE_FILE).read_text())
    meta.update(changes)
    tmp = path / f".{BUNDLE_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path / BUNDLE_FILE)
    return meta


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """bundle.json of ``path`` after checking the schema and every file's checksum."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"no model bundle at {path}. Train one with `skinlesion train` or `make run`.")
    if path.is_file() and path.name == BUNDLE_FILE:
        path = path.parent
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file():
        raise BundleError(f"{path} is not a model bundle (no {BUNDLE_FILE}).")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_file} is not valid JSON: {exc}") from exc
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema version {version!r} is not supported (this skinlesion reads "
            f"version {SCHEMA_VERSION}); retrain the model or use a matching skinlesion release."
        )
    for key in ("kind", "class_names", "files"):
        if key not in meta:
            raise BundleError(f"{meta_file} lacks the required field {key!r}")
    if list(meta["class_names"]) != list(CLASS_NAMES):
        raise BundleError(f"{path}: class names {meta['class_names']} != {list(CLASS_NAMES)}")
    if meta["kind"] == "single" and MODEL_FILE not in meta["files"]:
        raise BundleError(f"{meta_file} does not list {MODEL_FILE}")
    for name, digest in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: file {name} listed in {BUNDLE_FILE} is missing")
        if sha256_file(f) != digest:
            raise BundleError(
                f"{path}: checksum mismatch for {name} (file changed or corrupt since the bundle "
                "was written); refusing to load it."
            )
    return meta


def load(path: str | os.PathLike[str]) -> Bundle:
    """Open and verify a bundle (the Keras model itself loads lazily)."""
    path = Path(path)
    meta = read_meta(path)
    return Bundle(path=path if path.is_dir() else path.parent, meta=meta)


def latest_bundle(models_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The newest complete bundle under ``models/`` (by creation time in bundle.json)."""
    root = Path(models_dir) if models_dir else config.models_dir()
    if not root.is_dir():
        return None
    found = []
    for meta_file in root.glob(f"*/{BUNDLE_FILE}"):
        if meta_file.parent.name.startswith("."):
            continue
        try:
            created = json.loads(meta_file.read_text()).get("created", "")
        except (OSError, json.JSONDecodeError):
            continue
        found.append((created, meta_file.parent))
    return max(found)[1] if found else None

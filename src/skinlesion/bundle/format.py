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

import contextlib
import datetime as _dt
import os
import platform
import shutil
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from skinlesion import CLASS_NAMES, config
from skinlesion.bundle.meta import BundleMeta
from skinlesion.io import atomic_write_text, dumps_json, read_json, sha256_file

if TYPE_CHECKING:
    from skinlesion.models.ood import OODDetector

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
BUNDLE_KINDS = ("single", "ensemble")  # one network, or the mean of member bundles' probabilities
MODEL_FILE = "model.keras"


class BundleError(ValueError):
    """A bundle that is missing, corrupt, or of an unknown schema."""


def package_versions() -> dict[str, str]:
    """Versions that decide whether a bundle reproduces."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("skinlesion", "tensorflow", "keras", "numpy", "pillow", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def new_run_id(backbone: str) -> str:
    """A unique, sortable run id: UTC time stamp, backbone and a random suffix."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{backbone}-{uuid.uuid4().hex[:6]}"


def check_run_id(run_id: str) -> str:
    """``run_id`` when it can name a bundle folder, else a :class:`BundleError` saying why.

    A run id becomes ``<models>/<run-id>``, so it must be one plain folder name: ``../x`` or
    ``/abs`` would write outside the models folder. Hidden names (leading ``.``) are refused too:
    ``.tmp-*`` and ``.previous-*`` are this module's scratch folders and hidden bundles are never
    listed. Cheap, so commands can call it before training rather than after.
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise BundleError(f"invalid run id {run_id!r}: it must be a non-empty folder name")
    if any(c in run_id for c in "/\\\0") or run_id.startswith("."):
        raise BundleError(
            f"invalid run id {run_id!r}: it names one bundle folder, so it must be a single name "
            "without '/', '\\' or a leading '.' (e.g. 'my-model-1')"
        )
    return run_id


@dataclass
class Bundle:
    """A loaded bundle: its folder and typed metadata; the Keras model loads on first use."""

    path: Path
    meta: BundleMeta
    _model: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def synthetic(self) -> bool:
        return self.meta.synthetic

    @property
    def input_size(self) -> int:
        if self.meta.input_size is None:
            raise BundleError(f"{self.path}: {BUNDLE_FILE} records no input_size")
        return self.meta.input_size

    @property
    def model(self) -> Any:
        """The Keras model (loaded from model.keras on first use)."""
        if self._model is None:
            self._model = load_keras_model(self.path / MODEL_FILE)
        return self._model

    def file(self, name: str) -> Path:
        return self.path / name

    def ood_detector(self) -> OODDetector | None:
        """The bundle's out-of-distribution detector (None when it has none); a damaged
        ``ood.npz`` is a :class:`BundleError`, not a numpy traceback."""
        from skinlesion.models.ood import OODDetector

        if self.meta.ood is None:
            return None
        if not _inside_bundle(self.meta.ood.file):
            raise BundleError(f"{self.path}: {BUNDLE_FILE} names {self.meta.ood.file!r} as its out-of-distribution "
                              "statistics, which is not a file inside the bundle folder; refusing to read it.")
        path = self.file(self.meta.ood.file)
        try:
            det = OODDetector.load(path)
        # What np.load raises for a truncated, non-zip or pickled file, or one without our arrays.
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{path}: the out-of-distribution statistics are damaged and cannot be "
                              f"read ({type(exc).__name__}: {exc}); retrain or restore the bundle.") from exc
        d = det.mean.shape[0] if det.mean.ndim == 1 else -1
        if d < 1 or det.precision.shape != (d, d):
            raise BundleError(f"{path}: the out-of-distribution statistics are damaged (mean {det.mean.shape}, "
                              f"precision {det.precision.shape}); retrain or restore the bundle.")
        return det


def load_keras_model(path: Path) -> Any:
    """Load a bundle's model.keras with the project's custom layers registered; a file Keras
    cannot read is a :class:`BundleError` saying it is damaged."""
    import keras

    # Imported for their side effect: they register the custom layers for deserialisation.
    import skinlesion.models.colour
    import skinlesion.models.layers
    import skinlesion.models.resolution  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: the model file is missing")
    # Keras says "File not found" for any file that is not a zip (empty, truncated, garbage):
    # misleading, since the file is there, so say what is wrong instead.
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path}: the model file is damaged (not a .keras zip archive; empty or truncated?); "
                          "retrain or restore the bundle.")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: the model file is damaged or was written by an incompatible Keras and "
                          f"cannot be loaded ({type(exc).__name__}: {exc}); retrain or restore the bundle.") from exc


def write_bundle(
    meta: Mapping[str, Any],
    files: Mapping[str, Any],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
) -> Path:
    """Write a bundle atomically and return its folder.

    ``files`` maps a file name to a writer: a keras Model (saved as .keras), a pandas
    DataFrame (CSV), bytes, a path to copy, or a callable ``f(path)``.
    """
    # Checked before anything is written: a bad run id must not leave folders behind.
    run_id = check_run_id(new_run_id(meta.get("backbone", "model")) if run_id is None else run_id)
    out_dir = Path(out_dir) if out_dir else config.models_dir()
    final = out_dir / run_id
    if final.exists():
        raise BundleError(f"bundle folder already exists: {final}")
    tmp = out_dir / f".tmp-{run_id}"
    tmp.mkdir(parents=True)
    try:
        checksums: dict[str, str] = {}
        for name, obj in files.items():
            target = tmp / name
            _write_file(target, name, obj)
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
        (tmp / BUNDLE_FILE).write_text(dumps_json(full) + "\n")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _writer_kind(name: str, obj: Any) -> str:
    """Which of :func:`write_bundle`'s writers ``obj`` is; anything else is a TypeError naming ``name``."""
    import keras
    import pandas as pd

    # Model before callable: a keras Model is callable too.
    if isinstance(obj, keras.Model):
        return "model"
    if isinstance(obj, pd.DataFrame):
        return "csv"
    if isinstance(obj, (bytes, bytearray)):
        return "bytes"
    if isinstance(obj, (str, os.PathLike)):
        return "copy"
    if callable(obj):
        return "callable"
    raise TypeError(f"don't know how to write {name!r} ({type(obj).__name__})")


def _write_file(target: Path, name: str, obj: Any) -> None:
    """Write bundle file ``name`` to ``target`` with its writer (see :func:`write_bundle`)."""
    kind = _writer_kind(name, obj)
    if kind == "model":
        obj.save(target)
    elif kind == "csv":
        obj.to_csv(target, index=False)
    elif kind == "bytes":
        target.write_bytes(obj)
    elif kind == "copy":
        shutil.copyfile(obj, target)
    else:
        obj(target)


def add_to_bundle(path: str | os.PathLike[str], files: Mapping[str, Any], meta_update: Mapping[str, Any]) -> None:
    """Add (or replace) artefacts of an existing single bundle: write ``files`` with the same
    writers as :func:`write_bundle`, then rewrite ``bundle.json`` with their checksums and
    ``meta_update`` merged in. The model itself is never touched.

    Every entry is checked before anything is written, and the new files are written beside their
    targets and moved into place only once all of them are written, so a failing entry or writer
    leaves the bundle as it was (and loadable). (A failure while they are being moved in, e.g. a
    full disk at the final bundle.json, can still leave checksums that no longer match.)"""
    folder = Path(path)
    meta = read_meta(folder)
    for name, obj in files.items():
        if name in (BUNDLE_FILE, MODEL_FILE):
            raise BundleError(f"refusing to overwrite {name} of {folder}")
        if not _inside_bundle(name):
            raise BundleError(f"refusing to write {name!r}, which is not a file inside the bundle folder {folder}")
        _writer_kind(name, obj)
    # The merged bundle.json must still load; checked now, while the bundle is untouched.
    parse_meta({**meta, **meta_update}, folder)
    checksums = dict(meta.get("files") or {})
    temps: dict[Path, Path] = {}  # target -> its temporary
    try:
        for name, obj in files.items():
            target = folder / name
            # Same folder (so the move is a rename); keeps the suffix (np.savez appends .npz otherwise).
            tmp = target.with_name(f".tmp{os.getpid()}.{target.name}")
            temps[target] = tmp  # before writing: a writer that fails halfway still leaves a file
            _write_file(tmp, name, obj)
            checksums[name] = sha256_file(tmp)
        text = dumps_json({**meta, **meta_update, "files": checksums}) + "\n"
        for target, tmp in temps.items():
            os.replace(tmp, target)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(folder / BUNDLE_FILE, text)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """bundle.json of ``path`` after checking the schema and every file's checksum."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"no model bundle at {path} (nothing there). The default model is trained by `make run` (or `skinlesion run`).")
    if path.is_file() and path.name == BUNDLE_FILE:
        path = path.parent
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file():
        raise BundleError(f"{path} is not a model bundle (no {BUNDLE_FILE}).")
    meta = read_json(meta_file, BundleError)
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_file} is damaged: expected a JSON object, found {_json_kind(meta)}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema version {version!r} is not supported (this skinlesion reads "
            f"version {SCHEMA_VERSION}); retrain the model or use a matching skinlesion release."
        )
    for key in ("kind", "class_names", "files"):
        if key not in meta:
            raise BundleError(f"{meta_file} lacks the required field {key!r}")
    if not isinstance(meta["files"], dict):
        raise BundleError(f"{meta_file} is damaged: 'files' must map file names to checksums, "
                          f"found {_json_kind(meta['files'])}")
    if not isinstance(meta["class_names"], list) or meta["class_names"] != list(CLASS_NAMES):
        raise BundleError(f"{path}: class names {meta['class_names']} != {list(CLASS_NAMES)}")
    if meta["kind"] not in BUNDLE_KINDS:
        raise BundleError(f"{meta_file}: kind {meta['kind']!r} is not one of {', '.join(BUNDLE_KINDS)}")
    if meta["kind"] == "single" and MODEL_FILE not in meta["files"]:
        raise BundleError(f"{meta_file} does not list {MODEL_FILE}")
    for name, digest in meta["files"].items():
        if not _inside_bundle(name):
            # Else the checksum check would read (and vouch for) a file outside the bundle.
            raise BundleError(f"{meta_file} lists {name!r}, which is not a file inside the bundle folder; "
                              "refusing to load it.")
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: file {name} listed in {BUNDLE_FILE} is missing")
        if sha256_file(f) != digest:
            raise BundleError(
                f"{path}: checksum mismatch for {name} (file changed or corrupt since the bundle "
                "was written); refusing to load it."
            )
    return meta


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (for messages about a hand-edited bundle.json)."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _inside_bundle(name: str) -> bool:
    """Whether ``name`` (a ``files`` key) is a relative path that stays inside the bundle folder."""
    rel = PurePosixPath(name)
    # "" and "." have no parts; a backslash would be a separator on Windows.
    return bool(rel.parts) and not rel.is_absolute() and ".." not in rel.parts and not any(c in name for c in "\\\0")


def parse_meta(meta: Mapping[str, Any], path: str | os.PathLike[str] = "") -> BundleMeta:
    """:class:`BundleMeta` of a bundle.json dict; a malformed field is a :class:`BundleError`."""
    try:
        return BundleMeta.from_dict(meta, default_run_id=Path(path).name or "model")
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path or 'bundle'}: {BUNDLE_FILE} has a malformed field: {exc}") from exc


def load_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """:func:`read_meta` (schema and checksums verified) as a typed :class:`BundleMeta`."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    return parse_meta(read_meta(path), folder)


def load(path: str | os.PathLike[str]) -> Bundle:
    """Open and verify a bundle (the Keras model itself loads lazily)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return Bundle(path=folder, meta=load_meta(path))


def member_refs(member_paths: Sequence[str | os.PathLike[str]], bundle_folder: str | os.PathLike[str]) -> list[str]:
    """How an ensemble bundle in ``bundle_folder`` names its members: paths relative to that folder,
    so a models/ folder stays relocatable (``Predictor.member_bundles`` resolves them against it)."""
    folder = Path(bundle_folder).resolve()
    return [os.path.relpath(Path(p).resolve(), folder) for p in member_paths]


def resolve_default_bundle(
    models_dir: str | os.PathLike[str] | None = None, *, must_exist: bool = True
) -> Path:
    """The bundle served when none is named; the one rule the web app, dashboard, CLI and notebooks use.

    1. ``SKINLESION_MODEL`` (a bundle folder or its bundle.json), when set;
    2. else ``models/<config.DEFAULT_MODEL>`` (``models_dir`` overrides ``models/``): the bundle
       ``make run`` trains.

    There is no "newest bundle" fallback: which model answers must not depend on what was trained
    last. With ``must_exist`` (the default) a missing bundle is a :class:`BundleError` saying how
    to get one and which bundles are there instead; ``must_exist=False`` returns the path anyway
    (e.g. to name the default's report folder before it is trained). Checksums are verified
    later, by :func:`load`.
    """
    env = config.model_env()
    root = Path(models_dir) if models_dir else config.models_dir()
    path = Path(env).expanduser() if env else root / config.DEFAULT_MODEL
    if path.name == BUNDLE_FILE:
        path = path.parent
    if not must_exist or (path / BUNDLE_FILE).is_file():
        return path
    if env:
        raise BundleError(f"SKINLESION_MODEL={env} is not a model bundle (no {BUNDLE_FILE} there); "
                          "point it at a bundle folder, or unset it to serve the default model.")
    others = sorted(p.parent.name for p in root.glob(f"*/{BUNDLE_FILE}") if not p.parent.name.startswith("."))
    hint = (f" Bundles found there: {', '.join(others)} (serve one with SKINLESION_MODEL={root}/<name>)."
            if others else "")
    raise BundleError(
        f"no trained model found at {path} (the default model, {config.DEFAULT_MODEL!r} in "
        f"skinlesion.config). Train it with `make run` (or `skinlesion run`), or set SKINLESION_MODEL "
        f"to a bundle folder.{hint}"
    )


def replacing(target: Path, make: Callable[[], Path], *, announce: Callable[[str], Any] | None = None) -> Path:
    """``make()`` writes the bundle ``target``, replacing one already there only once the new one
    is written (a failed run puts the old one back); ``announce`` gets one line when it replaces."""
    if not target.exists():
        return make()
    aside = target.with_name(f".previous-{target.name}")  # hidden: never listed or served
    shutil.rmtree(aside, ignore_errors=True)
    if announce is not None:
        announce(f"replacing {config.display_path(target)} (kept aside until the new bundle is written)")
    target.rename(aside)
    try:
        path = make()
    except BaseException:
        if not target.exists():
            aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return path

"""Small file helpers every layer shares: checksums, strict JSON (read and write), atomic writes.

Kept at the bottom of the package (no skinlesion imports) so that data, models, bundles and
reports can all use one definition.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def clean_json(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts.

    NaN and infinities become ``None`` (``null``), numpy scalars and arrays become Python
    numbers and lists, tuples become lists, paths become strings and mapping keys strings.
    Anything else is returned unchanged (``json.dumps`` then says what it cannot write).
    """
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [clean_json(x) for x in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [clean_json(x) for x in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` after :func:`clean_json` (never writes NaN or Infinity)."""
    return json.dumps(clean_json(obj), indent=indent, allow_nan=False)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> Any:
    """The parsed contents of a JSON file; invalid JSON (or bytes that are not UTF-8 text)
    raises ``error`` naming the file."""
    path = Path(path)
    try:
        # JSON is UTF-8 (RFC 8259); decoding with the locale's encoding could misread it.
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not valid JSON: not UTF-8 text (binary or damaged file?): {exc}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON (see :func:`clean_json`), atomically."""
    return atomic_write_text(path, dumps_json(obj) + "\n")

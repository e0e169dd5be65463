"""Small file helpers every layer shares: checksums, strict JSON (read and write), atomic writes
of one file (:func:`atomic_write_bytes`) and of a whole output folder (:func:`replacing_folder`).

Kept at the bottom of the package (no skinlesion imports) so that data, models, bundles and
reports can all use one definition.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
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


# --- output folders written as a whole -----------------------------------------------------------

def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _resolved_target(target: str | os.PathLike[str]) -> Path:
    path = Path(os.path.abspath(target))
    return path.resolve() if path.is_symlink() else path  # a link to a folder: replace what it points at


def check_replaceable(target: str | os.PathLike[str], *, owns: Iterable[str], keep: Iterable[str] = (),
                      what: str = "this command") -> Path:
    """The absolute folder :func:`replacing_folder` would replace, after checking it may.

    Refused with :class:`FileExistsError` (nothing written, nothing removed) when ``target`` is a
    file, holds the current working folder, or is an existing folder with entries that match
    neither ``owns`` nor ``keep`` (and are not hidden): those are someone else's files, and
    replacing the folder would delete them. Call it before a long computation to fail early.
    """
    path = _resolved_target(target)
    if path.parent == path:
        raise FileExistsError(f"{path}: cannot replace the root folder; give an output folder below it")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder; give an output folder")
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current folder was deleted: it cannot be this one
        cwd = None
    if cwd is not None and (path == cwd or path in cwd.parents):
        raise FileExistsError(f"{path} holds the current folder; give a separate output folder")
    if path.is_dir():
        owned = list(owns) + list(keep)
        foreign = sorted(e.name for e in path.iterdir() if not e.name.startswith(".") and not _matches(e.name, owned))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise FileExistsError(
                f"{path} holds files that {what} did not write ({shown}): it replaces its output folder as a "
                "whole and would delete them. Give an empty or new output folder, or one it wrote before.")
    return path


@contextlib.contextmanager
def replacing_folder(target: str | os.PathLike[str], *, owns: Iterable[str] = ("*",), keep: Iterable[str] = (),
                     what: str = "this command") -> Iterator[Path]:
    """Write an output folder as a whole: readers (and a crash) see the old folder or the new one.

    Yields a new, empty hidden sibling folder (``.tmp-<name>-<pid>``, same parent, so the final
    rename stays on one file system) to write every output file into. When the ``with`` body
    finishes, the previous ``target`` is renamed aside (``.old-<name>-<pid>``), the new folder
    renamed into its place, and the old one deleted. When the body raises, the new folder is
    deleted and ``target`` is left exactly as it was.

    ``owns`` are ``fnmatch`` patterns of the top-level names the writer makes (default: any);
    ``keep`` are patterns of entries of the previous folder copied into the new one before the
    body runs (caches the writer may reuse or overwrite, files of another command that shares the
    folder). Hidden entries (``.gitkeep``, ``.ipynb_checkpoints``) are carried over too. Entries of
    the previous folder matching ``owns`` but not ``keep`` are dropped: the new run writes its own.
    A folder holding anything else is refused up front (:func:`check_replaceable`), so a folder
    the writer does not own is never deleted. ``what`` names the writer in that message.
    """
    owns, keep = list(owns), list(keep)
    path = check_replaceable(target, owns=owns, keep=keep, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    aside = path.with_name(f".old-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run of a process with this id
    tmp.mkdir()
    try:
        if path.is_dir():
            shutil.copymode(path, tmp)  # a shared folder stays as readable (or writable) as it was
            for entry in path.iterdir():
                if entry.name.startswith(".") or _matches(entry.name, keep):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, tmp / entry.name, symlinks=True)
                    else:
                        shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
        yield tmp
        check_replaceable(path, owns=owns, keep=keep, what=what)  # nothing foreign appeared meanwhile
        if path.exists():
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            try:
                tmp.rename(path)
            except BaseException:
                aside.rename(path)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already on success

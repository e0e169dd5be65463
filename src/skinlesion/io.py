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
import tempfile
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
                      carry: Iterable[str] = (), what: str = "this command") -> Path:
    """The absolute folder :func:`replacing_folder` would replace, after checking it may.

    Refused with :class:`FileExistsError` (nothing written, nothing removed) when ``target`` is a
    file or an existing folder with entries that match none of ``owns``, ``keep`` and ``carry`` (and
    are not hidden): those are someone else's files, and replacing the folder would delete them.
    Call it before a long computation to fail early.
    """
    path = _resolved_target(target)
    if path.parent == path:
        raise FileExistsError(f"{path}: cannot replace the root folder; give an output folder below it")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder; give an output folder")
    if path.is_dir():
        owned = [*owns, *keep, *carry]
        foreign = sorted(e.name for e in path.iterdir() if not e.name.startswith(".") and not _matches(e.name, owned))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise FileExistsError(
                f"{path} holds files that {what} did not write ({shown}): it replaces its output folder as a "
                "whole and would delete them. Give an empty or new output folder, or one it wrote before.")
    return path


def _copy_entry(entry: Path, dest: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.copytree(entry, dest, symlinks=True)
    else:
        shutil.copy2(entry, dest, follow_symlinks=False)


def _swappable(path: Path) -> bool:
    """Whether ``path`` can be renamed away and replaced: not a mount point, in a writable folder."""
    return not os.path.ismount(path) and os.access(path.parent, os.W_OK | os.X_OK)


def _move_back(names: Iterable[str], src: Path, dest: Path) -> None:
    for name in names:
        os.replace(src / name, dest / name)


@contextlib.contextmanager
def replacing_folder(target: str | os.PathLike[str], *, owns: Iterable[str] = ("*",), keep: Iterable[str] = (),
                     carry: Iterable[str] = (), what: str = "this command") -> Iterator[Path]:
    """Write an output folder as a whole: readers (and a crash) see the old folder or the new one.

    Yields a new, empty hidden folder (``.tmp-<name>-*``, made by :func:`tempfile.mkdtemp` beside
    ``target``, so two runs never share one and the final rename stays on one file system) to write
    every output file into. When the ``with`` body finishes, the previous ``target`` is renamed
    aside, the new folder renamed into its place, and the old one deleted. When the body raises,
    the new folder is deleted and ``target`` is left exactly as it was.

    ``owns`` are ``fnmatch`` patterns of the top-level names the writer makes (default: any);
    ``keep`` are entries of the previous folder copied into the new one before the body runs
    (caches the writer may read and rewrite); ``carry`` are entries another command writes into
    this folder (e.g. ``sources/`` of ``data audit --sources``), moved over from the folder as it
    is at the end, so a newer one written meanwhile is not lost. Hidden entries (``.gitkeep``)
    are carried too. Entries matching ``owns`` only are dropped: the new run writes its own. A
    folder holding anything else is refused up front (:func:`check_replaceable`), so a folder the
    writer does not own is never deleted.

    A target that cannot be renamed (a mount point, or a folder whose parent is not writable, as
    a bind-mounted ``--out`` in a container) is updated file by file instead: each new file moved
    in with a rename, then the owned entries the new run did not write removed.
    """
    owns, keep, carry = list(owns), list(keep), list(carry)
    path = check_replaceable(target, owns=owns, keep=keep, carry=carry, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    in_place = path.is_dir() and not _swappable(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path if in_place else path.parent))
    try:
        if path.is_dir():
            if not in_place:
                shutil.copymode(path, tmp)  # a shared folder stays as readable (or writable) as it was
            for entry in path.iterdir():
                if _matches(entry.name, keep) and not entry.name.startswith("."):
                    _copy_entry(entry, tmp / entry.name)
        yield tmp
        check_replaceable(path, owns=owns, keep=keep, carry=carry, what=what)  # nothing foreign appeared meanwhile
        if in_place:
            written = {e.name for e in tmp.iterdir()}
            for entry in tmp.iterdir():
                if (path / entry.name).is_dir() and not (path / entry.name).is_symlink():
                    shutil.rmtree(path / entry.name)
                os.replace(entry, path / entry.name)
            for entry in path.iterdir():
                if entry != tmp and entry.name not in written and not entry.name.startswith(".") \
                        and not _matches(entry.name, [*keep, *carry]):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        elif path.exists():
            moved = [e.name for e in path.iterdir()  # the other command's entries, as they are now
                     if (e.name.startswith(".") or _matches(e.name, carry)) and not (tmp / e.name).exists()]
            for name in moved:
                os.replace(path / name, tmp / name)
            aside = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
            aside.rmdir()  # only its unique name is wanted: rename needs a free one
            try:
                path.rename(aside)
            except BaseException:
                _move_back(moved, tmp, path)
                raise
            try:
                tmp.rename(path)
            except BaseException as exc:
                _move_back(moved, tmp, aside)  # the previous folder whole again, then back in its place
                try:
                    aside.rename(path)
                except OSError:
                    raise OSError(f"could not put {path} back: the previous folder is at {aside}") from exc
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already on success

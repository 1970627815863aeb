"""The safetensors file format, read and written by nerve itself.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON, then
one byte buffer. The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets into the buffer, which the tensors cover without holes or overlaps)
and may hold ``"__metadata__"``, a flat ``str -> str`` map. Data is little-endian, row-major.

Why nerve does not use the ``safetensors`` package: it is not a dependency of nerve, and its
numpy API knows no ``BF16`` (numpy has no bfloat16; nerve holds bfloat16 as ``uint16`` bit
patterns) and no float8 types (nerve holds them as ``ml_dtypes`` arrays). The format is small
enough to implement here exactly, with zero-copy reads (``mmap``) and streaming writes.

nerve's element types map to the standard codes (``F32``, ``BF16``, ``F8_E4M3``, ...). Types
the format has no code for (the FNUZ float8s, float4, 4- and 2-bit integers, held one element
per byte) are written as ``U8`` and their nerve type is recorded in the metadata key
``nerve.dtypes``, so nerve reads them back exactly and other readers still see valid bytes.

>>> import numpy as np, tempfile, os
>>> from nerve.ir import DType
>>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
>>> write_tensors(path, {"w": np.arange(4, dtype=np.float32),
...                      "b": (DType.BFLOAT16, np.array([0x3F80], np.uint16))})
>>> f = read_tensors(path)
>>> f.arrays["w"], f.dtypes["b"]
(array([0., 1., 2., 3.], dtype=float32), <DType.BFLOAT16: 'bfloat16'>)
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nerve.errors import ModelFormatError
from nerve.ir import DType

# nerve type -> safetensors code (types absent here are stored as U8 + metadata).
CODES: dict[DType, str] = {
    DType.FLOAT64: "F64",
    DType.FLOAT32: "F32",
    DType.FLOAT16: "F16",
    DType.BFLOAT16: "BF16",
    DType.INT64: "I64",
    DType.UINT64: "U64",
    DType.INT32: "I32",
    DType.UINT32: "U32",
    DType.INT16: "I16",
    DType.UINT16: "U16",
    DType.INT8: "I8",
    DType.UINT8: "U8",
    DType.BOOL: "BOOL",
    DType.FLOAT8E4M3FN: "F8_E4M3",
    DType.FLOAT8E5M2: "F8_E5M2",
    DType.FLOAT8E8M0: "F8_E8M0",
}
FROM_CODE: dict[str, DType] = {code: dt for dt, code in CODES.items()}
DTYPES_KEY = "nerve.dtypes"
# The reference implementation refuses headers above 100 MB; so do we.
MAX_HEADER = 100_000_000

# A tensor to write: an array (its nerve type inferred) or (nerve type, array).
TensorLike = np.ndarray | tuple[DType, np.ndarray]


@dataclass
class TensorFile:
    """What :func:`read_tensors` returns: arrays by name, their nerve types, the metadata."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, DType] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    # name -> (absolute start, end) of its bytes in the file.
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)


def _as_entry(name: str, value: TensorLike) -> tuple[DType, np.ndarray]:
    if isinstance(value, tuple):
        dtype, array = value
    else:
        array = np.asarray(value)
        try:
            dtype = DType.from_numpy(array.dtype)
        except ModelFormatError:
            raise ModelFormatError(
                f"tensor {name!r}: numpy dtype {array.dtype} cannot be stored in safetensors"
            ) from None
    if dtype is DType.STRING or array.dtype == object:
        raise ModelFormatError(f"tensor {name!r}: string tensors cannot be stored in safetensors")
    if array.dtype != dtype.numpy:
        raise ModelFormatError(
            f"tensor {name!r}: a {dtype.value} tensor must be held as {dtype.numpy}, not "
            f"{array.dtype}"
        )
    return dtype, contiguous(array)


def contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order, copied only when needed (0-d stays 0-d, unlike ascontiguousarray)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _raw(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array (any element type, 0-d included), without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def header_for(
    tensors: Mapping[str, TensorLike], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    """The encoded header (length prefix included) and the arrays in buffer order."""
    meta = dict(metadata or {})
    header: dict[str, object] = {}
    extra: dict[str, str] = {}
    ordered: list[tuple[str, np.ndarray]] = []
    offset = 0
    for name, value in tensors.items():
        if name == "__metadata__":
            raise ModelFormatError("'__metadata__' is reserved and cannot name a tensor")
        dtype, array = _as_entry(name, value)
        code = CODES.get(dtype)
        if code is None:
            code = "U8"
            extra[name] = dtype.value
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        ordered.append((name, array))
    if extra:
        meta[DTYPES_KEY] = json.dumps(extra, sort_keys=True)
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ModelFormatError("safetensors metadata must map strings to strings")
    if meta:
        header = {"__metadata__": meta, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format allows space padding; 8 keeps data aligned
    return struct.pack("<Q", len(text)) + text, ordered


def write_stream(
    f: BinaryIO, tensors: Mapping[str, TensorLike], metadata: Mapping[str, str] | None = None
) -> int:
    """Write a safetensors file to the open binary file ``f``; returns the bytes written."""
    head, ordered = header_for(tensors, metadata)
    f.write(head)
    total = len(head)
    for _, array in ordered:
        if array.nbytes:
            f.write(_raw(array))
            total += array.nbytes
    return total


def write_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, TensorLike],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` atomically (a temporary file renamed into place)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write_stream(f, tensors, metadata)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _bad(source: str, why: str) -> ModelFormatError:
    return ModelFormatError(f"{source} is not a valid safetensors file: {why}")


def parse(buffer: memoryview | bytes, source: str = "buffer") -> TensorFile:
    """Decode a whole safetensors file held in ``buffer`` (arrays are views into it).

    Every offset is checked against the file's size and the tensors' shapes, so a truncated
    or garbled file raises :class:`~nerve.errors.ModelFormatError` instead of reading junk.
    """
    view = memoryview(buffer)
    if len(view) < 8:
        raise _bad(source, f"it has {len(view)} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", view[:8])
    if n > MAX_HEADER or 8 + n > len(view):
        raise _bad(source, f"its header claims {n} bytes but the file has {len(view) - 8}")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(source, f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(source, "its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(source, "__metadata__ must map strings to strings")
    try:
        extra = json.loads(meta.get(DTYPES_KEY, "{}"))
    except ValueError:
        raise _bad(source, f"metadata {DTYPES_KEY} is not JSON") from None
    data = view[8 + n :]
    result = TensorFile(metadata=dict(meta))
    spans = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(source, name, entry, extra)
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.numpy.itemsize or end > len(data) or begin < 0:
            raise _bad(
                source,
                f"tensor {name!r} ({dtype.value}{list(shape)}) spans bytes [{begin}, {end}) of "
                f"a {len(data)}-byte buffer — truncated or garbled",
            )
        array = np.frombuffer(data, dtype=dtype.numpy, count=count, offset=begin)
        result.arrays[name] = array.reshape(shape)
        result.dtypes[name] = dtype
        result.spans[name] = (8 + n + begin, 8 + n + end)
        spans.append((begin, end, name))
    _check_cover(source, sorted(spans), len(data))
    return result


def _entry(
    source: str, name: str, entry: object, extra: Mapping[str, str]
) -> tuple[DType, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise _bad(source, f"the entry of {name!r} is not an object")
    try:
        code = entry["dtype"]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise _bad(source, f"the entry of {name!r} lacks dtype, shape or data_offsets") from None
    if any(d < 0 for d in shape):
        raise _bad(source, f"tensor {name!r} has a negative dimension")
    if name in extra:
        try:
            dtype = DType(extra[name])
        except ValueError:
            raise _bad(source, f"tensor {name!r} has unknown nerve type {extra[name]!r}") from None
        if code != "U8" or dtype.itemsize != 1:
            raise _bad(source, f"tensor {name!r}: {dtype.value} must be stored as U8")
    elif code in FROM_CODE:
        dtype = FROM_CODE[code]
    else:
        known = ", ".join(sorted(FROM_CODE))
        raise ModelFormatError(
            f"{source}: tensor {name!r} has element type {code}, which nerve does not read "
            f"(it reads {known})"
        )
    return dtype, shape, begin, end


def _check_cover(source: str, spans: Iterable[tuple[int, int, str]], size: int) -> None:
    at = 0
    for begin, end, name in spans:
        if begin != at:
            what = "overlaps the previous tensor" if begin < at else "leaves a hole before it"
            raise _bad(source, f"tensor {name!r} {what}")
        at = end
    if at != size:
        raise _bad(source, f"the tensors cover {at} of the buffer's {size} bytes")


def read_tensors(path: str | os.PathLike[str]) -> TensorFile:
    """Open a safetensors file; arrays are read-only views of a memory map (no copy)."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _bad(source, "it is empty")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ModelFormatError(f"file {source!r} does not exist") from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read {source!r}: {exc}") from None
    # The arrays keep the map alive; it closes when the last of them is gone.
    return parse(memoryview(mapped), source)


__all__ = [
    "CODES",
    "DTYPES_KEY",
    "FROM_CODE",
    "TensorFile",
    "header_for",
    "parse",
    "read_tensors",
    "write_stream",
    "write_tensors",
]

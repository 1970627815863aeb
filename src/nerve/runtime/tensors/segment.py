"""The shared-memory format of a SharedTensor: header layout, segment names, mapping segments.

Every segment starts with a header (little-endian) at offset 0: magic, header version, dtype
(ONNX code), ndim, busy count, busy pid, version, data nbytes, data offset, token (8 random
bytes naming this incarnation), shape[8]. The data follows at a 64-byte boundary.
"""

from __future__ import annotations

import math
import os
import re
import struct
from multiprocessing import shared_memory
from typing import Any

from nerve.errors import SharedTensorError
from nerve.ir import DType

HEADER = struct.Struct("<4sHHIIIQQQ8s8q")
HEADER_SIZE = 128  # bytes reserved for the header; data starts at a 64-byte boundary after it
MAGIC = b"NRVT"
HEADER_VERSION = 1
MAX_DIMS = 8
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,200}$")
# Field offsets used to update single fields in place.
_BUSY_OFFSET = struct.calcsize("<4sHHI")
_VERSION_OFFSET = struct.calcsize("<4sHHIII")
assert HEADER.size <= HEADER_SIZE


def check_name(name: str) -> str:
    """``name`` without a leading slash, if it is a safe POSIX shared-memory name."""
    bare = name[1:] if name.startswith("/") else name
    if not isinstance(name, str) or not _NAME_RE.match(bare):
        raise SharedTensorError(
            f"invalid shared-memory name {name!r}: use 1-201 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit (no slashes)"
        )
    return bare


# This process's pid, kept current across fork (write_busy runs twice per tensor per run).
_PID = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Mapping:
    """An existing segment mapped into this process without the resource tracker.

    ``SharedMemory(name=...)`` registers even a segment it merely opens with this process's
    resource tracker (before Python 3.13), which then unlinks the creator's segment when this
    process exits (bpo-39959). Opening it directly avoids that: only creators track segments.
    """

    def __init__(self, name: str) -> None:
        import _posixshmem  # type: ignore[import-not-found,unused-ignore]
        import mmap

        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.name = name
        self.buf: memoryview | None = memoryview(self._mmap)

    def close(self) -> None:
        if self.buf is not None:
            self.buf.release()  # raises BufferError while numpy views exist
            self.buf = None
        self._mmap.close()

    def unlink(self) -> None:  # only creators unlink
        raise SharedTensorError(f"{self.name!r} was attached, not created, by this process")


Segment = shared_memory.SharedMemory | _Mapping


def segment_buffer(shm: Segment) -> memoryview:
    """The segment's memory (typed: the stub says Optional, an open segment always has it)."""
    buf = shm.buf
    if buf is None:
        raise SharedTensorError(f"shared memory {shm.name!r} is closed")
    return buf


def attach_segment(name: str) -> Segment:
    """Open an existing segment without making this process responsible for unlinking it."""
    try:
        return _Mapping(name)
    except FileNotFoundError:
        raise SharedTensorError(f"no shared memory named {name!r}") from None
    except (OSError, ValueError) as exc:
        raise SharedTensorError(f"cannot open shared memory {name!r}: {exc}") from None


def write_header(shm: Segment, dtype: DType, shape: tuple[int, ...], nbytes: int,
                 token: bytes) -> None:
    """Write a fresh header (busy count, pid and version zero) into a new segment."""
    dims = list(shape) + [0] * (MAX_DIMS - len(shape))
    HEADER.pack_into(
        segment_buffer(shm), 0, MAGIC, HEADER_VERSION, dtype.onnx, len(shape), 0, 0, 0, nbytes,
        HEADER_SIZE, token, *dims,
    )


def read_header(shm: Segment) -> dict[str, Any]:
    """The header, validated so that no field can point outside the segment."""
    name = shm.name.lstrip("/")
    if shm.size < HEADER_SIZE:
        raise SharedTensorError(f"shared memory {name!r} is too small for a tensor header")
    magic, hver, code, ndim, _busy, _pid, _ver, nbytes, offset, token, *dims = (
        HEADER.unpack_from(segment_buffer(shm), 0)
    )
    if magic != MAGIC:
        raise SharedTensorError(f"shared memory {name!r} is not a nerve SharedTensor")
    if hver != HEADER_VERSION:
        raise SharedTensorError(f"{name!r}: header version {hver}, expected {HEADER_VERSION}")
    try:
        dtype = DType.from_onnx(code)
    except Exception:
        raise SharedTensorError(f"{name!r}: unknown dtype code {code}") from None
    if dtype is DType.STRING or ndim > MAX_DIMS:
        raise SharedTensorError(f"{name!r}: bad header (dtype {dtype.value}, ndim {ndim})")
    shape = tuple(dims[:ndim])
    if any(d < 0 for d in shape) or nbytes != math.prod(shape) * dtype.itemsize:
        raise SharedTensorError(f"{name!r}: header shape {shape} and size {nbytes} disagree")
    if offset < HEADER_SIZE or offset % 64 or offset + nbytes > shm.size:
        raise SharedTensorError(
            f"{name!r}: data at offset {offset} + {nbytes} bytes lies outside the "
            f"{shm.size}-byte segment"
        )
    return {"dtype": dtype, "shape": shape, "nbytes": nbytes, "data_offset": offset,
            "token": token}


def read_version(shm: Segment) -> int:
    """The header's version field."""
    return int(struct.unpack_from("<Q", segment_buffer(shm), _VERSION_OFFSET)[0])


def write_version(shm: Segment, version: int) -> None:
    struct.pack_into("<Q", segment_buffer(shm), _VERSION_OFFSET, version)


def read_busy(shm: Segment) -> tuple[int, int]:
    """The header's busy count and the pid of the process that last set it."""
    count, pid = struct.unpack_from("<II", segment_buffer(shm), _BUSY_OFFSET)
    return count, pid


def add_busy(shm: Segment, delta: int) -> None:
    """Add ``delta`` to the busy count (never below zero), recording this process's pid."""
    count, _pid = read_busy(shm)
    count = max(0, count + delta)
    struct.pack_into("<II", segment_buffer(shm), _BUSY_OFFSET, count, _PID[0] if count else 0)

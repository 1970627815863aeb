"""Tensor I/O without copies: caller memory in, nerve memory out, POSIX shared memory between.

Three pieces:

* :func:`as_input` turns whatever the caller passed (a numpy array, anything with
  ``__dlpack__`` such as a torch tensor, a :class:`SharedTensor`, a list) into the numpy array a
  kernel reads. When dtype, shape and layout already match it returns a view of the caller's
  memory — no copy. Otherwise it converts once and says so at DEBUG level on the ``nerve``
  logger.
* :class:`OutputPool` hands out reusable output memory under one rule: **memory is never
  rewritten while a view of it is alive.** A buffer is reused only when nothing outside the
  pool references it (checked by reference count); otherwise the pool hands out another one.
* :class:`SharedTensor` is a named POSIX shared-memory segment holding one tensor behind a small
  header (dtype, shape, version, busy count), so another process can read and write it in place.

>>> import numpy as np
>>> x = np.arange(4, dtype=np.float32)
>>> as_input(x, "x", np.dtype(np.float32), (4,)) is x
True
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from nerve.errors import InputError, OutputError, SharedTensorBusyError, SharedTensorError
from nerve.ir import DType

log = logging.getLogger("nerve")


# --------------------------------------------------------------------------- inputs


def to_numpy(value: Any) -> np.ndarray:
    """A numpy view of ``value`` without copying when its memory is CPU memory numpy can see.

    Order of preference: ndarray itself; SharedTensor data; DLPack (``__dlpack__``);
    the array interface / buffer protocol (``np.asarray``), which copies only lists and scalars.
    """
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, SharedTensor):
        return value.array
    if hasattr(value, "__dlpack__"):
        return _from_dlpack(value)
    return np.asarray(value)


def _from_dlpack(value: Any) -> np.ndarray:
    dtype_name = str(getattr(value, "dtype", ""))
    if dtype_name == "torch.bfloat16":
        # numpy has no bfloat16; nerve stores bfloat16 as uint16 bit patterns. Reinterpret the
        # same memory as int16 (a torch view, no copy), then as uint16.
        torch = sys.modules["torch"]
        return np.from_dlpack(value.view(torch.int16)).view(np.uint16)
    try:
        return np.from_dlpack(value)
    except (BufferError, TypeError, RuntimeError) as exc:
        raise InputError(
            f"cannot read a {type(value).__name__} through DLPack ({exc}); move it to CPU memory "
            "or pass a numpy array"
        ) from exc


def as_input(
    value: Any, name: str, dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    """The array a kernel reads for input ``name``: the caller's memory when it fits.

    Raises InputError for a wrong shape or a dtype that cannot be converted without losing
    information (e.g. float64 into a float32 input); converts (once, logged) for a safe dtype
    change, a non-contiguous or misaligned layout, or foreign byte order.
    """
    array = to_numpy(value)
    if not isinstance(value, np.ndarray) and not hasattr(value, "__dlpack__") and not isinstance(
        value, SharedTensor
    ):
        log.debug("input %r: built an array from a %s (one copy)", name, type(value).__name__)
    if array.shape != shape:
        raise InputError(
            f"input {name!r}: expected shape {shape}, got {array.shape}. The program was "
            "compiled for that shape; recompile with shapes={...} for another"
        )
    if array.dtype != dtype:
        if array.dtype.newbyteorder("=") == dtype:
            log.debug("input %r: byte order %s converted to native (one copy)", name, array.dtype)
            return np.ascontiguousarray(array, dtype=dtype)
        if not np.can_cast(array.dtype, dtype, "safe"):
            raise InputError(
                f"input {name!r}: expected dtype {dtype}, got {array.dtype}. Convert it with "
                f".astype(np.{dtype}) (nerve converts only when no value can change)"
            )
        log.debug("input %r: dtype %s converted to %s (one copy)", name, array.dtype, dtype)
        return np.ascontiguousarray(array, dtype=dtype)
    if not (array.flags.c_contiguous and array.flags.aligned):
        log.debug("input %r: non-contiguous or misaligned layout copied once", name)
        return np.ascontiguousarray(array)
    return array


def as_output(value: Any, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A caller-supplied output buffer, checked: writable, exactly the output's dtype and shape."""
    array = to_numpy(value)
    if array.shape != shape or array.dtype != dtype:
        raise OutputError(
            f"out[{name!r}]: expected {dtype}{list(shape)}, got {array.dtype}{list(array.shape)}; "
            "an output buffer must match the output exactly"
        )
    if not array.flags.writeable:
        raise OutputError(f"out[{name!r}] is read-only; pass a writable array")
    return array


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (the array itself is left as it was)."""
    view = array.view()
    view.flags.writeable = False
    return view


# --------------------------------------------------------------------------- output memory


def _refcounts(objects: list[Any]) -> list[int]:
    return [sys.getrefcount(obj) for obj in objects]


# What _refcounts reports for an object only its list references. Measured rather than assumed:
# how many references the interpreter itself holds during the call differs between versions.
_UNREFERENCED = _refcounts([object()])[0]


def outside_references(objects: list[Any]) -> list[int]:
    """For each object, how many references exist besides the entry in ``objects``.

    numpy views keep their base alive through ``.base``; torch.from_numpy, memoryview and
    DLPack capsules keep the view alive; so any live view of a buffer raises its count. This is
    how the lifetime rule tells whether memory may be reused.
    """
    return [count - _UNREFERENCED for count in _refcounts(objects)]


class OutputPool:
    """Reusable memory for one output, under the rule "never rewrite memory a view can see".

    ``acquire()`` returns a buffer no one outside the pool references; if every pooled buffer
    is still referenced (the caller kept the previous result), it allocates another, keeping at
    most ``limit`` buffers. A loop that keeps only the latest result therefore alternates
    between two buffers with no allocation, and a result the caller keeps is never changed.

    >>> pool = OutputPool(np.dtype(np.float32), (2,))
    >>> a = pool.acquire(); b = pool.acquire()   # `a` is still held, so `b` is other memory
    >>> np.shares_memory(a, b)
    False
    >>> addr = a.ctypes.data; del a
    >>> pool.acquire().ctypes.data == addr      # dropped, so reused
    True
    """

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], limit: int = 4) -> None:
        self.dtype = dtype
        self.shape = shape
        self.limit = limit
        self._buffers: list[np.ndarray] = []
        self.allocations = 0

    def acquire(self) -> np.ndarray:
        """A writable buffer that no live view can see."""
        for buf, others in zip(self._buffers, outside_references(self._buffers)):
            if others == 0:
                return buf[...]
        buf = np.empty(self.shape, self.dtype)
        self.allocations += 1
        if len(self._buffers) < self.limit:
            self._buffers.append(buf)
        else:
            log.debug("output pool %s%s: %d buffers all in use; allocating an unpooled one",
                      self.dtype, list(self.shape), self.limit)
        return buf[...]


# --------------------------------------------------------------------------- shared memory

# Header at offset 0 of every SharedTensor segment (little-endian):
#   magic, header version, dtype (ONNX code), ndim, busy count, busy pid, version,
#   data nbytes, data offset, token (8 random bytes naming this incarnation), shape[8].
_HEADER = struct.Struct("<4sHHIIIQQQ8s8q")
HEADER_SIZE = 128  # bytes reserved for the header; data starts at a 64-byte boundary after it
MAGIC = b"NRVT"
HEADER_VERSION = 1
MAX_DIMS = 8
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,200}$")
# Field offsets used to update single fields in place.
_BUSY_OFFSET = struct.calcsize("<4sHHI")
_VERSION_OFFSET = struct.calcsize("<4sHHIII")
assert _HEADER.size <= HEADER_SIZE


def check_name(name: str) -> str:
    """``name`` without a leading slash, if it is a safe POSIX shared-memory name."""
    bare = name[1:] if name.startswith("/") else name
    if not isinstance(name, str) or not _NAME_RE.match(bare):
        raise SharedTensorError(
            f"invalid shared-memory name {name!r}: use 1-201 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit (no slashes)"
        )
    return bare


# This process's pid, kept current across fork (mark_busy runs twice per tensor per run).
_PID = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _pid_alive(pid: int) -> bool:
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


def _buf(shm: Segment) -> memoryview:
    """The segment's memory (typed: the stub says Optional, an open segment always has it)."""
    buf = shm.buf
    if buf is None:
        raise SharedTensorError(f"shared memory {shm.name!r} is closed")
    return buf


def _attach_segment(name: str) -> Segment:
    """Open an existing segment without making this process responsible for unlinking it."""
    try:
        return _Mapping(name)
    except FileNotFoundError:
        raise SharedTensorError(f"no shared memory named {name!r}") from None
    except (OSError, ValueError) as exc:
        raise SharedTensorError(f"cannot open shared memory {name!r}: {exc}") from None


class SharedTensor:
    """One tensor in a named POSIX shared-memory segment, readable and writable in place.

    Create it in one process, pass its ``name`` (or use it with a worker client), attach it in
    another. The header records dtype, shape, a version (bumped by every write through the API
    and by every run that writes it) and a busy count (set by a worker while a run uses it).

    >>> t = SharedTensor.create((2, 3), np.float32)
    >>> t.write(np.ones((2, 3), np.float32)); t.version
    1
    >>> u = SharedTensor.attach(t.name); float(u.array.sum()), u.shape
    (6.0, (2, 3))
    >>> u.close(); t.close()
    """

    def __init__(self, shm: Segment, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self._closed = False
        self._local_busy = 0  # runs of this process's client using the tensor
        header = self._read_header(shm)
        self.dtype: DType = header["dtype"]
        self.shape: tuple[int, ...] = header["shape"]
        self.nbytes: int = header["nbytes"]
        self.data_offset: int = header["data_offset"]
        self.token: bytes = header["token"]
        self._data = np.ndarray(
            self.shape, self.dtype.numpy, buffer=_buf(shm), offset=self.data_offset
        )
        # The reference never changes: build it once (clients send it with every run).
        self._ref = {"name": self.name, "offset": self.data_offset, "nbytes": self.nbytes,
                     "token": self.token.hex()}

    # -- construction ----------------------------------------------------------------

    @classmethod
    def create(
        cls, shape: Sequence[int], dtype: Any, name: str | None = None
    ) -> SharedTensor:
        """A new zero-filled shared tensor; this process owns it and unlinks it on close."""
        shape = tuple(int(d) for d in shape)
        ndtype = dtype if isinstance(dtype, DType) else DType.from_numpy(np.dtype(dtype))
        if ndtype is DType.STRING:
            raise SharedTensorError("string tensors cannot live in shared memory")
        if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
            raise SharedTensorError(f"shape {shape}: at most {MAX_DIMS} non-negative dims")
        nbytes = math.prod(shape) * ndtype.itemsize
        bare = check_name(name) if name else f"nerve_{os.getpid()}_{secrets.token_hex(6)}"
        try:
            shm = shared_memory.SharedMemory(name=bare, create=True, size=HEADER_SIZE + max(nbytes, 1))
        except FileExistsError:
            raise SharedTensorError(f"shared memory {bare!r} already exists") from None
        dims = list(shape) + [0] * (MAX_DIMS - len(shape))
        _HEADER.pack_into(
            _buf(shm), 0, MAGIC, HEADER_VERSION, ndtype.onnx, len(shape), 0, 0, 0, nbytes,
            HEADER_SIZE, secrets.token_bytes(8), *dims,
        )
        return cls(shm, owner=True)

    @classmethod
    def from_array(cls, array: Any, name: str | None = None) -> SharedTensor:
        """A new shared tensor holding a copy of ``array``."""
        src = to_numpy(array)
        tensor = cls.create(src.shape, src.dtype, name)
        tensor.write(src)
        return tensor

    @classmethod
    def attach(cls, name: str) -> SharedTensor:
        """Open an existing shared tensor by name (validating its header); this process does
        not own it: close() detaches, the creator unlinks."""
        shm = _attach_segment(check_name(name))
        try:
            return cls(shm, owner=False)
        except BaseException:
            shm.close()
            raise

    @staticmethod
    def _read_header(shm: Segment) -> dict[str, Any]:
        """The header, validated so that no field can point outside the segment."""
        name = shm.name.lstrip("/")
        if shm.size < HEADER_SIZE:
            raise SharedTensorError(f"shared memory {name!r} is too small for a tensor header")
        magic, hver, code, ndim, _busy, _pid, _ver, nbytes, offset, token, *dims = (
            _HEADER.unpack_from(_buf(shm), 0)
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

    # -- state -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._shm.name.lstrip("/")

    @property
    def segment_size(self) -> int:
        return self._shm.size

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.dtype.numpy

    @property
    def version(self) -> int:
        """Bumped by each write through the API and each run that writes this tensor."""
        return int(struct.unpack_from("<Q", _buf(self._shm), _VERSION_OFFSET)[0])

    def bump_version(self) -> int:
        new = self.version + 1
        struct.pack_into("<Q", _buf(self._shm), _VERSION_OFFSET, new)
        return new

    @property
    def busy(self) -> bool:
        """True while a run (of any process's worker) uses this tensor."""
        if self._local_busy:
            return True
        count, pid = struct.unpack_from("<II", _buf(self._shm), _BUSY_OFFSET)
        # A worker that died mid-run leaves its count behind; a dead pid does not count.
        return count > 0 and _pid_alive(pid)

    def mark_busy(self, delta: int) -> None:
        """Add ``delta`` to the shared busy count (the worker calls this around a run)."""
        count, _pid = struct.unpack_from("<II", _buf(self._shm), _BUSY_OFFSET)
        count = max(0, count + delta)
        struct.pack_into("<II", _buf(self._shm), _BUSY_OFFSET, count, _PID[0] if count else 0)

    def _check_writable(self) -> None:
        if self._closed:
            raise SharedTensorError(f"shared tensor {self.name!r} is closed")
        if self.busy:
            raise SharedTensorBusyError(
                f"shared tensor {self.name!r} is in use by a run; wait for the run's result "
                "before writing it"
            )

    # -- data ------------------------------------------------------------------------

    @property
    def array(self) -> np.ndarray:
        """A read-only numpy view of the data (zero-copy). Use write()/writable() to change it."""
        self._check_open()
        return read_only(self._data)

    def numpy(self) -> np.ndarray:
        """A copy of the data the caller owns."""
        self._check_open()
        return self._data.copy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self.array
        return data if dtype is None else data.astype(dtype)

    def write(self, value: Any) -> None:
        """Copy ``value`` into the tensor (refused while a run uses it) and bump the version."""
        self._check_writable()
        src = to_numpy(value)
        if src.shape != self.shape:
            raise SharedTensorError(
                f"shared tensor {self.name!r}: cannot write shape {src.shape} into {self.shape}"
            )
        if not np.can_cast(src.dtype, self.numpy_dtype, "same_kind"):
            raise SharedTensorError(
                f"shared tensor {self.name!r}: cannot write {src.dtype} into {self.dtype.value}"
            )
        np.copyto(self._data, src, casting="same_kind")
        self.bump_version()

    @contextmanager
    def writable(self) -> Iterator[np.ndarray]:
        """``with t.writable() as a: a[...] = ...`` — write in place, no staging copy.

        Refused while a run uses the tensor; the version is bumped when the block exits.
        """
        self._check_writable()
        self._local_busy += 1  # a run submitted from inside the block would race the writer
        try:
            yield self._data
        finally:
            self._local_busy -= 1
            self.bump_version()

    def data_view(self, offset: int | None = None, nbytes: int | None = None,
                  dtype: np.dtype | None = None, shape: tuple[int, ...] | None = None
                  ) -> np.ndarray:
        """A writable view of a byte window of the data region (validated; used by workers).

        ``offset`` counts from the start of the segment, like a Triton region offset.
        """
        self._check_open()
        start = self.data_offset if offset is None else int(offset)
        size = self.nbytes if nbytes is None else int(nbytes)
        dtype = self.numpy_dtype if dtype is None else dtype
        shape = self.shape if shape is None else shape
        end_of_data = self.data_offset + self.nbytes
        if start < self.data_offset or size < 0 or start + size > end_of_data:
            raise SharedTensorError(
                f"shared tensor {self.name!r}: window [{start}, {start + size}) lies outside its "
                f"data [{self.data_offset}, {end_of_data})"
            )
        if dtype != self.numpy_dtype:
            raise SharedTensorError(
                f"shared tensor {self.name!r} holds {self.dtype.value}, not {dtype}"
            )
        if start % dtype.itemsize:
            raise SharedTensorError(f"offset {start} is not aligned to {dtype} elements")
        if size != math.prod(shape) * dtype.itemsize:
            raise SharedTensorError(
                f"shared tensor {self.name!r}: window of {size} bytes does not hold "
                f"{dtype}{list(shape)} ({math.prod(shape) * dtype.itemsize} bytes)"
            )
        return np.ndarray(shape, dtype, buffer=_buf(self._shm), offset=start)

    def ref(self) -> dict[str, Any]:
        """What a client sends a worker to name this tensor (no data)."""
        return dict(self._ref)

    # -- lifetime --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SharedTensorError(f"shared tensor {self.name!r} is closed")

    def close(self) -> None:
        """Detach (and, for the creating process, unlink) the segment. Idempotent."""
        if self._closed:
            return
        self._closed = True
        name = self.name
        del self._data
        try:
            self._shm.close()
        except BufferError:
            # A numpy view of the data is still alive somewhere; the mapping is freed when the
            # last view goes. Unlinking below still removes the name.
            log.debug("shared tensor %r: views still alive at close; unmapping later", name)
        if self.owner:
            with suppress(FileNotFoundError):
                self._shm.unlink()

    def __enter__(self) -> SharedTensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self.owner and not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"v{self.version}"
        return f"<nerve.SharedTensor {self.name!r} {self.dtype.value}{list(self.shape)} {state}>"


__all__ = [
    "HEADER_SIZE",
    "OutputPool",
    "SharedTensor",
    "as_input",
    "as_output",
    "check_name",
    "outside_references",
    "read_only",
    "to_numpy",
]

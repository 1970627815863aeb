"""SharedTensor: one tensor in a named POSIX shared-memory segment, readable and writable in place
by several processes. The header format lives in :mod:`nerve.runtime.tensors.segment`."""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from nerve.errors import SharedTensorBusyError, SharedTensorError
from nerve.ir import DType
from nerve.runtime.tensors.outputs import read_only
from nerve.runtime.tensors.segment import (
    HEADER_SIZE,
    MAX_DIMS,
    Segment,
    add_busy,
    attach_segment,
    check_name,
    pid_alive,
    read_busy,
    read_header,
    read_version,
    segment_buffer,
    write_header,
    write_version,
)

log = logging.getLogger("nerve")


def _to_numpy(value: Any) -> np.ndarray:
    # convert.py imports this module (to_numpy recognises SharedTensor), so import it late.
    from nerve.runtime.tensors.convert import to_numpy

    return to_numpy(value)


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
        header = read_header(shm)
        self.dtype: DType = header["dtype"]
        self.shape: tuple[int, ...] = header["shape"]
        self.nbytes: int = header["nbytes"]
        self.data_offset: int = header["data_offset"]
        self.token: bytes = header["token"]
        self._data = np.ndarray(
            self.shape, self.dtype.numpy, buffer=segment_buffer(shm), offset=self.data_offset
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
            shm = shared_memory.SharedMemory(name=bare, create=True,
                                             size=HEADER_SIZE + max(nbytes, 1))
        except FileExistsError:
            raise SharedTensorError(f"shared memory {bare!r} already exists") from None
        write_header(shm, ndtype, shape, nbytes, secrets.token_bytes(8))
        return cls(shm, owner=True)

    @classmethod
    def from_array(cls, array: Any, name: str | None = None) -> SharedTensor:
        """A new shared tensor holding a copy of ``array``."""
        src = _to_numpy(array)
        tensor = cls.create(src.shape, src.dtype, name)
        tensor.write(src)
        return tensor

    @classmethod
    def attach(cls, name: str) -> SharedTensor:
        """Open an existing shared tensor by name (validating its header); this process does
        not own it: close() detaches, the creator unlinks."""
        shm = attach_segment(check_name(name))
        try:
            return cls(shm, owner=False)
        except BaseException:
            shm.close()
            raise

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
        return read_version(self._shm)

    def bump_version(self) -> int:
        new = self.version + 1
        write_version(self._shm, new)
        return new

    @property
    def busy(self) -> bool:
        """True while a run (of any process's worker) uses this tensor."""
        if self._local_busy:
            return True
        count, pid = read_busy(self._shm)
        # A worker that died mid-run leaves its count behind; a dead pid does not count.
        return count > 0 and pid_alive(pid)

    def mark_busy(self, delta: int) -> None:
        """Add ``delta`` to the shared busy count (the worker calls this around a run)."""
        add_busy(self._shm, delta)

    def _check_writable(self) -> None:
        self._check_open()
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
        src = _to_numpy(value)
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
        return np.ndarray(shape, dtype, buffer=segment_buffer(self._shm), offset=start)

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

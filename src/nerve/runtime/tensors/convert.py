"""Caller memory in: numpy views of whatever the caller passed, checked against a program's I/O.

:func:`as_input` returns a view of the caller's memory when dtype, shape and layout already
match — no copy. Otherwise it converts once and says so at DEBUG level on the ``nerve`` logger.
:func:`as_output` checks a caller-supplied output buffer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

from nerve.errors import InputError, OutputError
from nerve.runtime.tensors.shared import SharedTensor

log = logging.getLogger("nerve")


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

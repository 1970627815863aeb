"""Output memory nerve hands out, under one rule: never rewrite memory a view can see.

A buffer is reused only when nothing outside the pool references it (checked by reference
count); otherwise the pool hands out another one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

log = logging.getLogger("nerve")


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (the array itself is left as it was)."""
    view = array.view()
    view.flags.writeable = False
    return view


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

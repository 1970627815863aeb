"""Tensor I/O without copies: caller memory in, nerve memory out, POSIX shared memory between.

Three pieces, one module each:

* :func:`as_input` (:mod:`.convert`) turns whatever the caller passed (a numpy array, anything
  with ``__dlpack__`` such as a torch tensor, a :class:`SharedTensor`, a list) into the numpy
  array a kernel reads. When dtype, shape and layout already match it returns a view of the
  caller's memory — no copy. Otherwise it converts once and says so at DEBUG level on the
  ``nerve`` logger.
* :class:`OutputPool` (:mod:`.outputs`) hands out reusable output memory under one rule:
  **memory is never rewritten while a view of it is alive.** A buffer is reused only when
  nothing outside the pool references it (checked by reference count); otherwise the pool hands
  out another one.
* :class:`SharedTensor` (:mod:`.shared`, header format in :mod:`.segment`) is a named POSIX
  shared-memory segment holding one tensor behind a small header (dtype, shape, version, busy
  count), so another process can read and write it in place.

>>> import numpy as np
>>> x = np.arange(4, dtype=np.float32)
>>> as_input(x, "x", np.dtype(np.float32), (4,)) is x
True
"""

from nerve.runtime.tensors.convert import as_input, as_output, to_numpy
from nerve.runtime.tensors.outputs import OutputPool, outside_references, read_only
from nerve.runtime.tensors.segment import HEADER_SIZE, check_name
from nerve.runtime.tensors.segment import HEADER_VERSION as HEADER_VERSION
from nerve.runtime.tensors.segment import MAGIC as MAGIC
from nerve.runtime.tensors.segment import MAX_DIMS as MAX_DIMS
from nerve.runtime.tensors.segment import Segment as Segment
from nerve.runtime.tensors.shared import SharedTensor

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

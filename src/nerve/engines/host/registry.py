"""Registry of host (numpy) kernels: one function per op.

A kernel takes the IR node (for its attributes) and the input arrays (None for an omitted
optional input) and returns one array or a tuple of arrays, one per output.

>>> from nerve.engines.host.registry import get_kernel
>>> get_kernel("Relu", "") is not None
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nerve.ir import Node

KernelFn = Callable[..., Any]

_KERNELS: dict[tuple[str, str], KernelFn] = {}


def kernel(*op_types: str, domain: str = "") -> Callable[[KernelFn], KernelFn]:
    """Register ``fn`` as the host kernel of ``op_types``."""

    def wrap(fn: KernelFn) -> KernelFn:
        for op in op_types:
            _KERNELS[(op, domain)] = fn
        return fn

    return wrap


def get_kernel(op_type: str, domain: str = "") -> KernelFn | None:
    _ensure_loaded()
    return _KERNELS.get((op_type, domain))


def supported_kernels(domain: str = "") -> list[str]:
    _ensure_loaded()
    return sorted(op for (op, d) in _KERNELS if d == domain)


def _ensure_loaded() -> None:
    import nerve.engines.host.kernels  # noqa: F401


def as_outputs(node: Node, result: Any) -> list[np.ndarray]:
    """Normalise a kernel's return value to one array per output."""
    if isinstance(result, (tuple, list)):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]

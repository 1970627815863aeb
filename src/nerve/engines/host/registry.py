"""Registry of host (numpy) kernels: one function per op.

A kernel takes the IR node (for its attributes) and the input arrays (None for an omitted
optional input) and returns one array or a tuple of arrays, one per output. A kernel registered
with ``typed=True`` also takes ``input_types=`` (the IR TensorType of each input, None for an
omitted one): bfloat16 travels as uint16 bit patterns, so an op whose types include both (Cast)
can tell them apart only from the IR.

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
_TYPED: set[tuple[str, str]] = set()


def kernel(
    *op_types: str, domain: str = "", typed: bool = False
) -> Callable[[KernelFn], KernelFn]:
    """Register ``fn`` as the host kernel of ``op_types`` (``typed``: it takes input_types=)."""

    def wrap(fn: KernelFn) -> KernelFn:
        for op in op_types:
            _KERNELS[(op, domain)] = fn
            if typed:
                _TYPED.add((op, domain))
        return fn

    return wrap


def get_kernel(op_type: str, domain: str = "") -> KernelFn | None:
    _ensure_loaded()
    return _KERNELS.get((op_type, domain))


def wants_types(op_type: str, domain: str = "") -> bool:
    """Whether the op's kernel takes ``input_types=`` (registered with ``typed=True``)."""
    _ensure_loaded()
    return (op_type, domain) in _TYPED


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

"""Elementwise arithmetic, math, activations, comparisons and logic."""

from __future__ import annotations

import numpy as np

from nerve.engines.host.registry import kernel
from nerve.ir import Node


@kernel("Relu")
def relu(node: Node, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


@kernel("Add")
def add(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.add(a, b)


@kernel("Sub")
def sub(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.subtract(a, b)


@kernel("Mul")
def mul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.multiply(a, b)


@kernel("Div")
def div(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        # ONNX integer division truncates toward zero (C semantics), unlike numpy's floor.
        return np.trunc(a / b).astype(a.dtype)
    return np.divide(a, b)

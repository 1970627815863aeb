"""Host kernels of the linalg family: MatMul, Gemm, Einsum, MatMulInteger, QLinearMatMul, Det.

float16 and bfloat16 (uint16 bits; none of MatMul, Gemm, Det accepts uint16, so there uint16
always means bfloat16) compute in float32 and round once. Einsum does accept uint16: its kernel
is ``typed`` and reads the IR types to tell the two apart.
"""

from __future__ import annotations

import numpy as np

from nerve.engines.host.kernels.reduce import InputTypes, is_bfloat16, narrow, widen
from nerve.engines.host.registry import kernel
from nerve.ir import Node
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16


@kernel("MatMul")
def matmul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy's matmul is ONNX's: batch broadcasting, 1-D operands promoted and squeezed."""
    return narrow(np.matmul(widen(a), widen(b)), a.dtype)


def _scaled(y: np.ndarray, factor: float) -> np.ndarray:
    """``factor * y`` in y's dtype (integer results truncate, as a cast would)."""
    if factor == 1.0:
        return y
    if np.issubdtype(y.dtype, np.integer):
        return (y * factor).astype(y.dtype)
    # A numpy scalar of y's dtype, so float32 stays float32.
    return y * y.dtype.type(factor)


@kernel("Gemm")
def gemm(node: Node, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Y = alpha * A' @ B' + beta * C (A' = A.T when transA, B' likewise). With beta == 0 the
    bias is not read, so a C holding inf or NaN does not leak into Y."""
    x, w = widen(a), widen(b)
    if node.attr("transA", 0):
        x = x.T
    if node.attr("transB", 0):
        w = w.T
    y = _scaled(np.matmul(x, w), float(node.attr("alpha", 1.0)))
    beta = float(node.attr("beta", 1.0))
    if c is not None and beta != 0.0:
        y = y + _scaled(widen(c), beta)
    return narrow(y, a.dtype)


@kernel("Einsum", typed=True)
def einsum(node: Node, *operands: np.ndarray, input_types: InputTypes = None) -> np.ndarray:
    """np.einsum on the equation the importer checked and stripped of whitespace."""
    dtype = operands[0].dtype
    if is_bfloat16(input_types):
        wide = [bfloat16_to_float32(x) for x in operands]
    else:
        wide = [x.astype(np.float32) if x.dtype == np.float16 else x for x in operands]
    # Contraction-order optimisation pays off only with several operands.
    result = np.asarray(np.einsum(str(node.attr("equation")), *wide, optimize=len(wide) > 2))
    if is_bfloat16(input_types):
        return float32_to_bfloat16(result.astype(np.float32, copy=False))
    return result.astype(dtype, copy=False)


@kernel("MatMulInteger")
def matmul_integer(
    node: Node,
    a: np.ndarray,
    b: np.ndarray,
    a_zero_point: np.ndarray | None = None,
    b_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """(A - a_zero_point) @ (B - b_zero_point) in int32. A 1-D a_zero_point holds one value per
    row of A; a 1-D b_zero_point one per column of B."""
    x = a.astype(np.int32)
    w = b.astype(np.int32)
    if a_zero_point is not None:
        zero = a_zero_point.astype(np.int32)
        # Per row: shape [M] must line up with A's rows, not its columns.
        x = x - (zero.reshape(-1, 1) if zero.ndim == 1 and zero.size > 1 else zero)
    if b_zero_point is not None:
        w = w - b_zero_point.astype(np.int32)
    return np.matmul(x, w)


def _per_row(value: np.ndarray) -> np.ndarray:
    """A per-row quantization parameter of shape [M] as [M, 1], so it lines up with rows."""
    return value.reshape(-1, 1) if value.ndim == 1 and value.size > 1 else value


@kernel("QLinearMatMul")
def qlinear_matmul(
    node: Node,
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
) -> np.ndarray:
    """Integer matmul of the zero-point-shifted operands (exact in int32), requantized with
    a_scale * b_scale / y_scale, rounded half to even, shifted by y_zero_point, saturated."""
    x = a.astype(np.int32) - _per_row(a_zero_point.astype(np.int32))
    w = b.astype(np.int32) - b_zero_point.astype(np.int32)
    accumulated = np.matmul(x, w)
    # float16 scales are widened first: their product in float16 would lose digits.
    multiplier = (
        _per_row(widen(a_scale).astype(np.float32))
        * widen(b_scale).astype(np.float32)
        / widen(y_scale).astype(np.float32)
    )
    y = np.rint(accumulated * multiplier.astype(np.float64)) + y_zero_point.astype(np.float64)
    limits = np.iinfo(y_zero_point.dtype)
    return np.clip(y, limits.min, limits.max).astype(y_zero_point.dtype)


@kernel("Det")
def det(node: Node, x: np.ndarray) -> np.ndarray:
    """Determinant of each trailing square matrix."""
    return narrow(np.linalg.det(widen(x)), x.dtype)

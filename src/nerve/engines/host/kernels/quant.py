"""Host kernels of quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
ConvInteger, QLinearConv. (MatMulInteger and QLinearMatMul are in the linalg family.)

Scales and zero points are per tensor (one value), per axis (1-D, one value per element of
``axis``) or blocked (the input's rank, ``block_size`` consecutive elements of ``axis`` share a
value); :func:`expand` broadcasts all three to the input. bfloat16 travels as uint16 bits: a
uint16 *scale* or *x of QuantizeLinear* is bfloat16 (neither takes real uint16), a uint16
*zero point* or *x of DequantizeLinear* is a real uint16.

Integer arithmetic is exact: differences of zero-point-shifted values and their products are
accumulated in int64 and wrapped to int32, which is what int32 accumulation gives (ONNX allows
the accumulator to overflow only in 32 bits).
"""

from __future__ import annotations

import numpy as np

from nerve.engines.host.kernels.nn import convolve
from nerve.engines.host.kernels.nn_window import window_geometry
from nerve.engines.host.registry import kernel
from nerve.ir import DType, Node
from nerve.ir.dtypes import (
    bfloat16_to_float32,
    float32_to_bfloat16,
    to_low_precision,
    widen_low_precision,
)

# Saturation range of each integer quantized type.
INTEGER_RANGES: dict[DType, tuple[int, int]] = {
    DType.INT8: (-128, 127), DType.UINT8: (0, 255), DType.INT16: (-32768, 32767),
    DType.UINT16: (0, 65535), DType.INT4: (-8, 7), DType.UINT4: (0, 15), DType.INT2: (-2, 1),
    DType.UINT2: (0, 3),
}  # fmt: skip
_FLOAT8 = frozenset(
    {DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ}
)


def expand(value: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """A scale or zero point broadcast against an input of ``shape`` (see the module doc)."""
    if value.size == 1 and value.ndim <= 1:
        return value.reshape(())
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    repeated = np.repeat(value, block_size, axis=axis)
    return np.take(repeated, np.arange(shape[axis]), axis=axis)


def _scale_as_float(scale: np.ndarray) -> np.ndarray:
    """A scale's values as a numpy float array (bfloat16 bits and float8 E8M0 widened)."""
    if scale.dtype == np.uint16:
        return bfloat16_to_float32(scale)
    if scale.dtype.kind == "V" or scale.dtype.name.startswith("float8"):
        return scale.astype(np.float32)
    return scale


def _zero_as_number(zero: np.ndarray, dtype: DType) -> np.ndarray:
    """A zero point's values in a type numpy computes with (float8/float4 as float32)."""
    if dtype.is_low_precision:
        return widen_low_precision(zero, dtype)
    return zero


def _quantized_dtype(node: Node, zero: np.ndarray | None) -> DType:
    code = int(node.attr("output_dtype", 0))
    if code:
        return DType.from_onnx(code)
    if zero is not None:
        return DType.from_numpy(zero.dtype)
    return DType.UINT8


def _divide(x: np.ndarray, scale: np.ndarray, node: Node) -> np.ndarray:
    """x / scale in the division precision: the ``precision`` attribute, else the scale's type.

    float16 and bfloat16 quotients are computed in float32 and rounded to the narrow type
    once; a float32 quotient is float32 division (exactly rounded); float64 and int32 scales
    divide in float64.
    """
    code = int(node.attr("precision", 0))
    if code:
        precision = DType.from_onnx(code)
    elif scale.dtype == np.uint16:
        precision = DType.BFLOAT16
    elif scale.dtype in (np.float16, np.float64):
        precision = DType.from_numpy(scale.dtype)
    elif scale.dtype.kind in "iu":
        precision = DType.FLOAT64
    else:
        precision = DType.FLOAT32
    wide = np.float64 if precision is DType.FLOAT64 else np.float32
    xs = bfloat16_to_float32(x) if x.dtype == np.uint16 else x
    xs = xs.astype(wide)
    divisor = _scale_as_float(scale).astype(wide)
    if precision is DType.FLOAT16:
        xs, divisor = xs.astype(np.float16).astype(wide), divisor.astype(np.float16).astype(wide)
    elif precision is DType.BFLOAT16:
        xs = bfloat16_to_float32(float32_to_bfloat16(xs))
        divisor = bfloat16_to_float32(float32_to_bfloat16(divisor))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = xs / divisor
    if precision is DType.FLOAT16:
        return q.astype(np.float16).astype(wide)
    if precision is DType.BFLOAT16:
        return bfloat16_to_float32(float32_to_bfloat16(q))
    return q


@kernel("QuantizeLinear")
def quantize_linear(
    node: Node, x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None
) -> np.ndarray:
    """y = saturate(round_half_even(x / scale) + zero_point); float8/float4 targets round
    ``x / scale + zero_point`` to the type (saturating float8 when ``saturate``)."""
    axis, block = int(node.attr("axis", 1)), int(node.attr("block_size", 0))
    out = _quantized_dtype(node, zero)
    q = _divide(x, expand(scale, x.shape, axis, block), node)
    zp = None if zero is None else expand(_zero_as_number(zero, out), x.shape, axis, block)
    if out in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[out]
        with np.errstate(invalid="ignore"):
            whole = np.rint(q.astype(np.float64))
            if zp is not None:
                whole = whole + zp.astype(np.float64)
            clipped = np.clip(np.nan_to_num(whole, nan=0.0), lo, hi)
        return clipped.astype(np.int64).astype(out.numpy)
    if zp is not None:
        q = q + zp.astype(q.dtype)
    return to_low_precision(q, out, saturate=bool(node.attr("saturate", 1)))


@kernel("DequantizeLinear")
def dequantize_linear(
    node: Node, x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None
) -> np.ndarray:
    """y = (x - zero_point) * scale in float32, rounded once to the output type
    (``output_dtype``, else the scale's type)."""
    axis, block = int(node.attr("axis", 1)), int(node.attr("block_size", 0))
    x_type = DType.from_numpy(x.dtype)
    values = widen_low_precision(x, x_type) if x_type.is_low_precision else x
    diff = values.astype(np.float32)
    if zero is not None:
        zp = expand(_zero_as_number(zero, x_type), x.shape, axis, block)
        if x_type.is_integer or (x_type.is_low_precision and not x_type.is_float):
            # Integer differences are exact (at most 17 bits): subtract before widening.
            diff = (values.astype(np.int64) - zp.astype(np.int64)).astype(np.float32)
        else:
            diff = diff - zp.astype(np.float32)
    y = diff * expand(_scale_as_float(scale), x.shape, axis, block).astype(np.float32)
    code = int(node.attr("output_dtype", 0))
    out = DType.from_onnx(code) if code else (
        DType.BFLOAT16 if scale.dtype == np.uint16 else DType.from_numpy(scale.dtype))
    if out is DType.BFLOAT16:
        return float32_to_bfloat16(y)
    if out is DType.FLOAT8E8M0:
        out = DType.FLOAT32  # not an output type of the spec; inference refuses it before
    return y.astype(out.numpy)


@kernel("DynamicQuantizeLinear")
def dynamic_quantize_linear(
    node: Node, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 quantization of x over its range widened to include 0; returns (y, scale, zp)."""
    low = np.float32(min(0.0, float(np.min(x)))) if x.size else np.float32(0)
    high = np.float32(max(0.0, float(np.max(x)))) if x.size else np.float32(0)
    span = np.float32(1.0) if high == low else np.float32(high - low)
    scale = np.float32(span / np.float32(255))
    zero = np.float32(np.clip(np.float32(0) - low / scale, 0, 255))
    zero_point = np.uint8(np.rint(zero))
    q = np.rint(x / scale) + np.float32(zero_point)
    y = np.clip(q, 0, 255).astype(np.uint8)
    return y, np.array(scale, np.float32), np.array(zero_point, np.uint8)


def _per_channel(value: np.ndarray, rank: int) -> np.ndarray:
    """A scalar, or a per-output-channel vector shaped (M, 1, ...) against a weight of rank."""
    if value.size == 1:
        return value.reshape(())
    return value.reshape((-1,) + (1,) * (rank - 1))


def integer_conv(
    node: Node, x: np.ndarray, w: np.ndarray, x_zero: np.ndarray | None,
    w_zero: np.ndarray | None,
) -> np.ndarray:
    """(x - x_zero) conv (w - w_zero), exact, as int64 (the caller wraps to int32).

    Shifting first and padding with 0 is padding with the zero point, as the spec's reference
    does: a padded position contributes nothing.
    """
    xs = x.astype(np.int64)
    if x_zero is not None:
        xs = xs - x_zero.astype(np.int64).reshape(())
    ws = w.astype(np.int64)
    if w_zero is not None:
        ws = ws - _per_channel(w_zero.astype(np.int64), w.ndim)
    geo = window_geometry(node, x.shape[2:], w.shape[2:])
    return convolve(xs, ws, int(node.attr("group", 1)), geo)


@kernel("ConvInteger")
def conv_integer(
    node: Node, x: np.ndarray, w: np.ndarray, x_zero: np.ndarray | None = None,
    w_zero: np.ndarray | None = None,
) -> np.ndarray:
    return integer_conv(node, x, w, x_zero, w_zero).astype(np.int32)


@kernel("QLinearConv")
def qlinear_conv(
    node: Node, x: np.ndarray, x_scale: np.ndarray, x_zero: np.ndarray, w: np.ndarray,
    w_scale: np.ndarray, w_zero: np.ndarray, y_scale: np.ndarray, y_zero: np.ndarray,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Integer convolution plus the int32 bias, requantized with x_scale * w_scale / y_scale
    (float32), rounded half to even, shifted by y_zero_point and saturated."""
    accumulated = integer_conv(node, x, w, x_zero, w_zero).astype(np.int32)
    if bias is not None:
        accumulated = accumulated + bias.astype(np.int32).reshape((1, -1) + (1,) * (x.ndim - 2))
    channel = (1, -1) + (1,) * (x.ndim - 2)
    w_scales = w_scale.astype(np.float32)
    w_scales = w_scales.reshape(channel) if w_scales.size > 1 else w_scales.reshape(())
    multiplier = x_scale.astype(np.float32).reshape(()) * w_scales / y_scale.astype(
        np.float32).reshape(())
    y = np.rint(accumulated.astype(np.float64) * multiplier.astype(np.float64))
    y = y + float(y_zero.reshape(()))
    lo, hi = INTEGER_RANGES[DType.from_numpy(y_zero.dtype)]
    return np.clip(y, lo, hi).astype(y_zero.dtype)


__all__ = ["INTEGER_RANGES", "expand", "integer_conv"]

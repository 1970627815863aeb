"""Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, ConvInteger, QLinearConv.

(MatMulInteger and QLinearMatMul live with the linalg family.) The IR holds the latest forms
(QuantizeLinear/DequantizeLinear of opset 25+): older versions only lack attributes whose
defaults give their semantics (``saturate=1``, ``block_size=0``, ``output_dtype=0``,
``precision=0``), so the importer fills those in. It also checks what the kernels would
otherwise discover at run time: the granularity of scales and zero points (per tensor, per
axis, blocked), conflicting ``output_dtype``/zero-point types, and convolution geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import onnx

from nerve.errors import ModelFormatError, ShapeError
from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.importers.nn import _AUTO_PAD, _check_choice, _check_windows_fit
from nerve.frontend.onnx.registry import importer
from nerve.ir import DType

# Attributes of the latest (Q|DQ)Linear forms, with the defaults older versions imply.
_LATEST_DEFAULTS: dict[str, dict[str, Any]] = {
    "QuantizeLinear": {"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0,
                       "precision": 0},
    "DequantizeLinear": {"axis": 1, "block_size": 0, "output_dtype": 0},
}  # fmt: skip
# The types QuantizeLinear produces (float8 E8M0 is a scale type, not a quantized one).
QUANTIZED_TYPES = frozenset(
    {DType.INT8, DType.UINT8, DType.INT16, DType.UINT16}
    | {d for d in DType if d.is_low_precision and d is not DType.FLOAT8E8M0}
)
_DIVISION_PRECISIONS = frozenset({DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64})


def _latest_attrs(ctx: ImportContext, node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {**_LATEST_DEFAULTS[node.op_type], **ctx.attrs(node)}
    rank = ctx.type_of(node.input[0]).rank
    axis = int(attrs["axis"])
    scale_rank = ctx.type_of(node.input[1]).rank
    if scale_rank > 0 and rank > 0 and not -rank <= axis < rank:
        ctx.refuse(node, "axis", f"{axis} is out of range for a rank-{rank} input")
    attrs["axis"] = axis % rank if rank else 0
    if int(attrs["block_size"]) < 0:
        ctx.refuse(node, "block_size", f"{attrs['block_size']} must be positive")
    return attrs


def check_granularity(
    node: onnx.NodeProto, x_shape: Sequence[int], role: str, shape: Sequence[int], axis: int,
    block_size: int,
) -> None:
    """Raise ShapeError unless ``shape`` (a scale's or zero point's) is per tensor, per axis
    or blocked over ``x_shape`` as the spec allows."""
    if math.prod(shape) == 1 and len(shape) <= 1:
        return  # per tensor
    what = f"node {node.name!r} ({node.op_type}): {role} of shape {list(shape)}"
    if block_size == 0:
        if len(shape) == 1 and x_shape and shape[0] == x_shape[axis]:
            return  # per axis
        raise ShapeError(
            f"{what} is neither a scalar nor one value per element of axis {axis} of the input "
            f"{list(x_shape)}; for blocked quantization set block_size"
        )
    expected = list(x_shape)
    expected[axis] = -(-x_shape[axis] // block_size)
    if list(shape) != expected:
        raise ShapeError(
            f"{what} does not fit blocked quantization of the input {list(x_shape)} along axis "
            f"{axis} with block_size {block_size}: expected {expected}"
        )


def _check_scales(ctx: ImportContext, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x_shape = ctx.type_of(node.input[0]).shape
    for index, role in ((1, "scale"), (2, "zero_point")):
        if index < len(node.input) and node.input[index]:
            check_granularity(node, x_shape, role, ctx.type_of(node.input[index]).shape,
                              int(attrs["axis"]), int(attrs["block_size"]))
    if len(node.input) > 2 and node.input[2]:
        scale, zero = ctx.type_of(node.input[1]).shape, ctx.type_of(node.input[2]).shape
        if math.prod(scale) != math.prod(zero):
            raise ShapeError(
                f"node {node.name!r} ({node.op_type}): scale {list(scale)} and zero point "
                f"{list(zero)} must have the same shape"
            )


@importer("QuantizeLinear", since=10)
def import_quantize_linear(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """y = saturate(round_half_even(x / y_scale) + y_zero_point)."""
    attrs = _latest_attrs(ctx, node)
    _check_scales(ctx, node, attrs)
    output_dtype = int(attrs["output_dtype"])
    if output_dtype and len(node.input) > 2 and node.input[2]:
        zero_type = ctx.type_of(node.input[2]).dtype
        if DType.from_onnx(output_dtype) is not zero_type:
            ctx.refuse(node, "output_dtype", f"{DType.from_onnx(output_dtype).value} differs "
                       f"from the zero point's type {zero_type.value}")
    if output_dtype:
        out = DType.from_onnx(output_dtype)
        if out not in QUANTIZED_TYPES:
            ctx.refuse(node, "output_dtype", f"{out.value} is not a quantized type")
    precision = int(attrs["precision"])
    if precision and DType.from_onnx(precision) not in _DIVISION_PRECISIONS:
        ctx.refuse(node, "precision", f"{DType.from_onnx(precision).value} is not a float type "
                   "nerve divides in (float32, float16, bfloat16, float64)")
    ctx.emit(node.op_type, list(node.input), list(node.output), attrs, node.name)


@importer("DequantizeLinear", since=10)
def import_dequantize_linear(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """y = (x - x_zero_point) * x_scale, in the output type (``output_dtype`` or the scale's)."""
    attrs = _latest_attrs(ctx, node)
    _check_scales(ctx, node, attrs)
    x_type = ctx.type_of(node.input[0]).dtype
    if x_type is DType.INT32 and len(node.input) > 2 and node.input[2]:
        raise ModelFormatError(
            f"node {node.name!r} (DequantizeLinear): int32 input takes no zero point (the spec "
            "fixes it at 0); remove the x_zero_point input"
        )
    ctx.emit(node.op_type, list(node.input), list(node.output), attrs, node.name)


@importer("DynamicQuantizeLinear", since=11)
def import_dynamic_quantize_linear(ctx: ImportContext, node: onnx.NodeProto) -> None:
    ctx.passthrough(node)


def _check_conv_geometry(ctx: ImportContext, node: onnx.NodeProto, weight: str) -> None:
    _check_choice(ctx, node, "auto_pad", _AUTO_PAD)
    w_shape = ctx.type_of(weight).shape
    kernel = tuple(w_shape[2:])
    given = ctx.attrs(node).get("kernel_shape")
    if given and tuple(int(k) for k in given) != kernel:
        ctx.refuse(node, "kernel_shape",
                   f"{list(given)} differs from the weight's spatial shape {list(kernel)}")
    x_shape = ctx.type_of(node.input[0]).shape
    group = int(ctx.attrs(node).get("group", 1))
    if group < 1 or x_shape[1] != w_shape[1] * group or w_shape[0] % group:
        ctx.refuse(node, "group", f"{group} does not fit input channels {x_shape[1]} and weight "
                   f"{list(w_shape)}")
    _check_windows_fit(ctx, node, kernel, ceil_mode=False)


def _check_per_channel(
    ctx: ImportContext, node: onnx.NodeProto, index: int, role: str, channels: int | None
) -> None:
    """Input ``index`` must be a scalar, or (when ``channels``) one value per output channel."""
    if index >= len(node.input) or not node.input[index]:
        return
    shape = ctx.type_of(node.input[index]).shape
    if math.prod(shape) == 1 and len(shape) <= 1:
        return
    if channels is not None and list(shape) == [channels]:
        return
    per = f" or one value per output channel ({channels})" if channels is not None else ""
    raise ShapeError(
        f"node {node.name!r} ({node.op_type}): {role} of shape {list(shape)} is not a scalar{per}"
    )


@importer("ConvInteger", since=10)
def import_conv_integer(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """(x - x_zero_point) conv (w - w_zero_point), accumulated in int32."""
    _check_conv_geometry(ctx, node, node.input[1])
    channels = ctx.type_of(node.input[1]).shape[0]
    _check_per_channel(ctx, node, 2, "x_zero_point", None)
    _check_per_channel(ctx, node, 3, "w_zero_point", channels)
    ctx.passthrough(node)


@importer("QLinearConv", since=10)
def import_qlinear_conv(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Integer convolution of the zero-point-shifted operands, plus the int32 bias, requantized
    with x_scale * w_scale / y_scale."""
    _check_conv_geometry(ctx, node, node.input[3])
    channels = ctx.type_of(node.input[3]).shape[0]
    for index, role in ((1, "x_scale"), (2, "x_zero_point"), (6, "y_scale"),
                        (7, "y_zero_point")):
        _check_per_channel(ctx, node, index, role, None)
    for index, role in ((4, "w_scale"), (5, "w_zero_point")):
        _check_per_channel(ctx, node, index, role, channels)
    if len(node.input) > 8 and node.input[8]:
        shape = ctx.type_of(node.input[8]).shape
        if list(shape) != [channels]:
            raise ShapeError(f"node {node.name!r} (QLinearConv): B of shape {list(shape)} must "
                             f"hold one int32 per output channel ({channels})")
    ctx.passthrough(node)


__all__ = ["QUANTIZED_TYPES", "check_granularity"]

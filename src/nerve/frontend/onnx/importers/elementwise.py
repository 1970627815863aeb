"""Elementwise arithmetic, math, activations, comparisons and logic.

None of these ops changed meaning since opset 13 (the oldest nerve imports directly): later
versions only added element types, or (Mod 28, BitShift 28) defined cases that were undefined
before, which the host kernels implement. So every importer here emits the node as it is, after
checking the attributes whose values nerve must understand.

bfloat16 travels as uint16 bit patterns, so a kernel of an op that accepts both uint16 and
bfloat16 cannot tell which it got. For those ops (``_AMBIGUOUS_WITH_BF16``) a bfloat16 node is
imported as Cast to float32 -> op -> Cast back, which is also how ONNX runtimes compute
bfloat16 arithmetic. Ops with no uint16 in their type list decode bfloat16 in their kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from nerve.errors import ShapeError
from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.loader import MIN_OPSET
from nerve.frontend.onnx.registry import ImporterFn, importer
from nerve.ir import DType, Node, infer_node

# Ops whose type lists hold both uint16 and bfloat16 and whose result depends on the values
# (Where, which only selects, is exempt: it moves bfloat16 bits unchanged).
_AMBIGUOUS_WITH_BF16 = (
    "Add", "Sub", "Mul", "Div", "Mod", "Pow", "Abs", "Sign", "Min", "Max", "Clip",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
)  # fmt: skip

_UNCHANGED = (
    # math
    "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Floor", "Ceil", "Round", "Sign", "Abs",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Erf", "IsNaN", "IsInf", "Sum", "Mean", "Min", "Max",
    # arithmetic
    "Add", "Sub", "Mul", "Div", "Pow",
    # activations
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Elu", "Selu", "Celu", "ThresholdedRelu", "Mish", "Shrink", "Swish",
    # bitwise, comparison, logic
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
    "And", "Or", "Xor", "Not", "Where",
)  # fmt: skip


def _first_version(op_type: str) -> int:
    """The earliest schema version a model of opset >= MIN_OPSET can carry for ``op_type``.

    Older versions (e.g. Add-6 with its ``broadcast`` attribute) are upgraded by onnx's
    version converter before import, so they never reach these importers.
    """
    try:
        return int(onnx.defs.get_schema(op_type, MIN_OPSET).since_version)
    except onnx.defs.SchemaError:  # the op is newer than MIN_OPSET: all its versions import
        return 1


def _register(*op_types: str) -> Callable[[ImporterFn], ImporterFn]:
    """Register an importer for each op from its first importable version on."""

    def wrap(fn: ImporterFn) -> ImporterFn:
        for op in op_types:
            if onnx.defs.has(op):  # Swish exists from onnx 1.17 on
                importer(op, since=_first_version(op))(fn)
        return fn

    return wrap


@_register(*_UNCHANGED)
def import_unchanged(ctx: ImportContext, node: onnx.NodeProto) -> None:
    _emit(ctx, node, ctx.attrs(node))


@_register("Mod")
def import_mod(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    if attrs.get("fmod", 0) not in (0, 1):
        ctx.refuse(node, "fmod", f"must be 0 or 1, not {attrs['fmod']!r}")
    _emit(ctx, node, attrs)


@_register("BitShift")
def import_bit_shift(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    if attrs.get("direction") not in ("LEFT", "RIGHT"):
        ctx.refuse(node, "direction", f"must be 'LEFT' or 'RIGHT', not {attrs.get('direction')!r}")
    _emit(ctx, node, attrs)


@_register("Gelu")
def import_gelu(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    if attrs.get("approximate", "none") not in ("none", "tanh"):
        ctx.refuse(node, "approximate", f"must be 'none' or 'tanh', not {attrs['approximate']!r}")
    _emit(ctx, node, attrs)


@_register("Clip")
def import_clip(ctx: ImportContext, node: onnx.NodeProto) -> None:
    for bound, name in zip(("min", "max"), list(node.input)[1:]):
        if name and ctx.type_of(name).numel != 1:
            raise ShapeError(
                f"node {node.name!r} (Clip): input {bound!r} ({name!r}) must be a scalar, it "
                f"has shape {list(ctx.type_of(name).shape)}"
            )
    _emit(ctx, node, ctx.attrs(node))


@_register("PRelu")
def import_prelu(ctx: ImportContext, node: onnx.NodeProto) -> None:
    x_shape = ctx.type_of(node.input[0]).shape
    slope_shape = ctx.type_of(node.input[1]).shape
    try:
        fits = np.broadcast_shapes(x_shape, slope_shape) == x_shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(
            f"node {node.name!r} (PRelu): slope {node.input[1]!r} of shape {list(slope_shape)} "
            f"does not broadcast onto X of shape {list(x_shape)} (the slope broadcasts one way)"
        )
    _emit(ctx, node, ctx.attrs(node))


# ---- emitting ---------------------------------------------------------------------------------


def _emit(ctx: ImportContext, node: onnx.NodeProto, attrs: dict[str, object]) -> None:
    inputs, outputs = list(node.input), list(node.output)
    if node.op_type in _AMBIGUOUS_WITH_BF16 and any(
        name and ctx.type_of(name).dtype is DType.BFLOAT16 for name in inputs
    ):
        _emit_bf16_via_float32(ctx, node, attrs)
        return
    ctx.emit(node.op_type, inputs, outputs, attrs, node.name)


def _emit_bf16_via_float32(
    ctx: ImportContext, node: onnx.NodeProto, attrs: dict[str, object]
) -> None:
    """Emit ``node`` on float32 copies of its bfloat16 inputs, casting bfloat16 results back."""
    original = Node(node.op_type, list(node.input), list(node.output), dict(attrs), node.name)
    out_types = infer_node(original, ctx.graph.types, ctx.graph.constants)
    inputs = []
    for name in node.input:
        if name and ctx.type_of(name).dtype is DType.BFLOAT16:
            wide = ctx.fresh(f"{name}_f32")
            _cast(ctx, name, wide, DType.FLOAT32, f"{node.name}_widen")
            name = wide
        inputs.append(name)
    outputs, narrow = [], []
    for name, t in zip(node.output, out_types):
        if name and t is not None and t.dtype is DType.BFLOAT16:
            wide = ctx.fresh(f"{name}_f32")
            narrow.append((wide, name))
            name = wide
        outputs.append(name)
    ctx.emit(node.op_type, inputs, outputs, attrs, node.name)
    for wide, name in narrow:
        _cast(ctx, wide, name, DType.BFLOAT16, f"{node.name}_narrow")


def _cast(ctx: ImportContext, source: str, target: str, to: DType, name: str) -> None:
    # Through passthrough so the Cast gets every attribute default (saturate, round_mode).
    ctx.passthrough(helper.make_node("Cast", [source], [target], name=name, to=to.onnx))

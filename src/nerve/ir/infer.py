"""Static type inference for IR nodes, with constant propagation for shape subgraphs.

ONNX-domain ops use ONNX's own inference (``onnx.shape_inference.infer_node_outputs``, C++,
about 10 µs a node), fed with the values of constant inputs so shape-computing inputs (a
Reshape's target shape, a Slice's starts) resolve. nerve-domain ops use the rules registered in
:mod:`nerve.ir.opset`.

Shape subgraphs (``Shape -> Gather -> Concat -> Reshape``) are folded by :func:`fold_shape_op`, a
small integer evaluator in the spirit of ONNX's data propagation: once input shapes are static
such subgraphs are constants, and folding them is what makes every later shape static.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nerve.errors import ShapeError
from nerve.ir.dtypes import (
    DType,
    bfloat16_to_float32,
    float32_to_bfloat16,
    to_low_precision,
    widen_low_precision,
)
from nerve.ir.graph import NERVE_DOMAIN, Node
from nerve.ir.opset import NERVE_OPS, ONNX_OPSET, onnx_schema
from nerve.ir.types import TensorType

# Folded results larger than this stay nodes: their bytes would bloat the structure.
MAX_FOLDED_ELEMENTS = 4096

# ONNX ops whose schema has no inference function (ONNX does not expand a function body when
# inferring one node): their one output has the type of their first input.
SAME_TYPE_AS_INPUT = frozenset({"GroupNormalization", "MeanVarianceNormalization"})


def to_onnx_attr(name: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list) and not value:
        # An empty list has no type of its own; ONNX's INTS is the common case.
        attr = onnx.AttributeProto()
        attr.name = name
        attr.type = onnx.AttributeProto.INTS
        return attr
    return helper.make_attribute(name, value)


def to_onnx_node(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(
        node.op_type, node.inputs, node.outputs, name=node.name, domain=node.domain or None
    )
    proto.attribute.extend(to_onnx_attr(k, v) for k, v in sorted(node.attrs.items()))
    return proto


def _type_proto(t: TensorType) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(t.dtype.onnx, list(t.shape))


def _from_type_proto(tp: onnx.TypeProto) -> TensorType | None:
    if not tp.HasField("tensor_type"):
        return None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return TensorType(DType.from_onnx(tt.elem_type), tuple(dims))


def infer_node(
    node: Node,
    types: Mapping[str, TensorType],
    constants: Mapping[str, np.ndarray],
) -> list[TensorType | None]:
    """Output types of ``node``; an entry is None where the shape is not statically known.

    Raises :class:`ShapeError` naming the node when ONNX's rules reject the input types.
    """
    in_types = [types[i] if i else None for i in node.inputs]
    if node.domain == NERVE_DOMAIN:
        opdef = NERVE_OPS.get(node.op_type)
        if opdef is None:
            raise ShapeError(f"node {node.name!r}: unknown nerve op {node.op_type!r}")
        consts = [constants.get(i) if i else None for i in node.inputs]
        return list(opdef.infer(node, in_types, consts))
    schema = onnx_schema(node.op_type, node.domain)
    if schema is None:
        raise ShapeError(f"node {node.name!r}: {node.qualified_op} is not an ONNX op")
    if node.op_type in SAME_TYPE_AS_INPUT and not schema.has_type_and_shape_inference_function:
        return [in_types[0]]
    input_types = {i: _type_proto(types[i]) for i in node.inputs if i}
    input_data = {
        i: _constant_proto(i, np.asarray(constants[i]), types[i].dtype)
        for i in node.inputs
        if i and i in constants and constants[i].dtype != object
    }
    try:
        out = onnx.shape_inference.infer_node_outputs(
            schema,
            to_onnx_node(node),
            input_types,
            input_data,
            opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        )
    except Exception as exc:  # onnx raises InferenceError / RuntimeError / ValueError
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        shown = ", ".join(str(t) if t else "-" for t in in_types)
        raise ShapeError(
            f"node {node.name!r} ({node.op_type}) rejects its inputs ({shown}): {detail}"
        ) from None
    return [_from_type_proto(out[o]) if o and o in out else None for o in node.outputs]


# ---- constant propagation of integer shape math ---------------------------------------------


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)
    return a / b


def _gather(node: Node, data: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = int(node.attr("axis", 0))
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    return np.take(data, idx, axis=axis)


def _slice(node: Node, data: np.ndarray, *rest: np.ndarray | None) -> np.ndarray:
    starts, ends = rest[0], rest[1]
    assert starts is not None and ends is not None
    axes = rest[2] if len(rest) > 2 and rest[2] is not None else np.arange(len(starts))
    steps = rest[3] if len(rest) > 3 and rest[3] is not None else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % data.ndim
        dim = data.shape[a]
        s, e, st = int(s), int(e), int(st)
        index[a] = slice(*slice(s, e, st).indices(dim)) if st > 0 else _neg_slice(s, e, st, dim)
    return data[tuple(index)]


def _neg_slice(s: int, e: int, st: int, dim: int) -> slice:
    s = max(-1, min(dim - 1, s + dim if s < 0 else s))
    e = max(-1, min(dim - 1, e + dim if e < 0 else e))
    return slice(s, e if e >= 0 else None, st)


def _unsqueeze(node: Node, data: np.ndarray, axes: np.ndarray) -> np.ndarray:
    rank = data.ndim + len(axes)
    out = data
    for a in sorted(int(x) % rank for x in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node: Node, data: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(int(a) % data.ndim for a in axes))


def _reshape(node: Node, data: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = [int(d) for d in shape]
    if not node.attr("allowzero", 0):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


def _constant_proto(name: str, value: np.ndarray, dtype: DType) -> onnx.TensorProto:
    """A constant as ONNX data; bfloat16 bit patterns become a BFLOAT16 tensor, not UINT16."""
    if dtype is DType.BFLOAT16:
        bits = np.ascontiguousarray(value, dtype=np.uint16)
        return helper.make_tensor(name, dtype.onnx, value.shape, bits.tobytes(), raw=True)
    return numpy_helper.from_array(value, name)


def _cast_typed(data: np.ndarray, source: DType, target: DType, node: Node) -> np.ndarray:
    """Cast that knows bfloat16 bits (uint16 in numpy) from uint16 numbers, and ONNX's rules
    for the low-precision types (saturate, round_mode)."""
    if source is DType.BFLOAT16:
        data = bfloat16_to_float32(data)
    elif source.is_low_precision:
        data = widen_low_precision(data, source)
    if target is DType.BFLOAT16:
        return float32_to_bfloat16(data.astype(np.float32))
    if target.is_low_precision:
        saturate, round_mode = bool(node.attr("saturate", 1)), str(node.attr("round_mode", "up"))
        return to_low_precision(data, target, saturate=saturate, round_mode=round_mode)
    return data.astype(target.numpy)


# Ops that only move or select elements: folding them over bfloat16 bit patterns is exact.
# Any other op over bfloat16 (arithmetic on the bits would be wrong) is left to its kernel.
_MOVES_BITS = frozenset(
    {"Identity", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Where", "Expand"}
)


def _cast(node: Node, data: np.ndarray) -> np.ndarray:
    return data.astype(DType.from_onnx(int(node.attr("to"))).numpy)


def _constant_of_shape(node: Node, shape: np.ndarray) -> np.ndarray:
    value = node.attr("value")
    fill = np.asarray(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    return np.full([int(d) for d in shape], fill[0], dtype=fill.dtype)


def _range(node: Node, start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    dtype = np.asarray(start).dtype
    return np.arange(start.item(), limit.item(), delta.item(), dtype=dtype)


def _reduce(fn: Any) -> Any:
    def run(node: Node, data: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        keep = bool(node.attr("keepdims", 1))
        if axes is None or axes.size == 0:
            if node.attr("noop_with_empty_axes", 0):
                return data
            return np.asarray(fn(data, axis=None, keepdims=keep))
        return np.asarray(fn(data, axis=tuple(int(a) for a in axes), keepdims=keep))

    return run


_SHAPE_EVAL: dict[str, Any] = {
    "Identity": lambda n, x: x,
    "Gather": _gather,
    "Concat": lambda n, *xs: np.concatenate(xs, axis=int(n.attr("axis"))),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Cast": _cast,
    "Reshape": _reshape,
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: _int_div(a, b),
    "Neg": lambda n, a: -a,
    "Abs": lambda n, a: np.abs(a),
    "Max": lambda n, *xs: np.maximum.reduce(np.broadcast_arrays(*xs)),
    "Min": lambda n, *xs: np.minimum.reduce(np.broadcast_arrays(*xs)),
    "Equal": lambda n, a, b: a == b,
    "Less": lambda n, a, b: a < b,
    "Greater": lambda n, a, b: a > b,
    "Not": lambda n, a: np.logical_not(a),
    "And": lambda n, a, b: np.logical_and(a, b),
    "Or": lambda n, a, b: np.logical_or(a, b),
    "Xor": lambda n, a, b: np.logical_xor(a, b),
    "LessOrEqual": lambda n, a, b: a <= b,
    "GreaterOrEqual": lambda n, a, b: a >= b,
    # fmod=0: the result takes the divisor's sign (numpy's mod); fmod=1: the dividend's (C fmod).
    "Mod": lambda n, a, b: np.fmod(a, b) if n.attr("fmod", 0) else np.mod(a, b),
    "Where": lambda n, c, a, b: np.where(c, a, b),
    "Expand": lambda n, x, s: x * np.ones([int(d) for d in s], dtype=x.dtype),
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "ReduceProd": _reduce(np.prod),
    "ReduceSum": _reduce(np.sum),
    "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
    "Floor": lambda n, a: np.floor(a),
    "Ceil": lambda n, a: np.ceil(a),
    "Sqrt": lambda n, a: np.sqrt(a),
}


def fold_shape_op(
    node: Node,
    types: Mapping[str, TensorType],
    constants: Mapping[str, np.ndarray],
) -> list[np.ndarray] | None:
    """The node's outputs when they can be computed now from constants and static shapes.

    Returns None when the node reads a runtime value (an input or a Param), is not shape math,
    or would produce a large tensor that belongs in a kernel, not in the structure.
    """
    if node.domain == NERVE_DOMAIN or len(node.outputs) != 1:
        return None
    if node.op_type == "Shape":
        shape = np.array(types[node.inputs[0]].shape, dtype=np.int64)
        start = int(node.attr("start", 0))
        end = node.attr("end")
        return [shape[start : (int(end) if end is not None else None)]]
    if node.op_type == "Size":
        return [np.array(types[node.inputs[0]].numel, dtype=np.int64)]
    fn = _SHAPE_EVAL.get(node.op_type)
    # bfloat16 (uint16 bits) and the low-precision types: only Cast and bit-moving ops fold.
    bfloat16_in = any(
        name and (types[name].dtype is DType.BFLOAT16 or types[name].dtype.is_low_precision)
        for name in node.inputs
    )
    if node.op_type == "Cast" and node.inputs[0] in constants:
        source = types[node.inputs[0]].dtype
        fn = lambda n, x: _cast_typed(x, source, DType.from_onnx(int(n.attr("to"))), n)  # noqa: E731
    elif bfloat16_in and node.op_type not in _MOVES_BITS:
        return None
    if fn is None:
        return None
    values: list[np.ndarray | None] = []
    for name in node.inputs:
        if not name:
            values.append(None)
        elif name in constants:
            values.append(np.asarray(constants[name]))
        else:
            return None
    while values and values[-1] is None:
        values.pop()
    try:
        out = np.asarray(fn(node, *values))
    except Exception:
        return None  # leave it to the kernel, which raises a proper error at run time
    if out.size > MAX_FOLDED_ELEMENTS or out.dtype == object:
        return None
    return [out]

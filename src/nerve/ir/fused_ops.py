"""The ``nerve`` domain's fused ops: what the compiler's fuse pass produces.

Each op is defined by the ONNX ops it stands for, so its type rule replays ONNX's own
inference over those ops and its host kernel calls their host kernels. Where a fused op ends
in an elementwise tail (an *epilogue*), the tail is a small **program**: a tuple of steps
``(op_type, input registers, attributes)``. Registers ``0..k-1`` are the op's main result
followed by its extra inputs; each step appends its result as the next register; the last
register is the output. A step's attributes are a tuple of ``(name, value)`` pairs.

* ``FusedConv(x, W, [B], *extra)`` — ``Conv`` (attributes as Conv's), then ``epilogue``.
* ``FusedMatMul(A, B, [C], *extra)`` — ``MatMul(A, B) + C``, or with ``gemm=1``
  ``Gemm(A, B, C; transB, alpha, beta)``; then ``epilogue``.
* Both take ``operands="bfloat16"`` (:data:`OPERANDS`): A/x and B/W are read rounded to
  bfloat16 (a bfloat16 tensor is widened), products and sums stay float32.
* ``FusedElementwise(*inputs)`` — runs ``program`` over its inputs.
* ``Attention(Q, Kt, V, [mask], [scale])`` — ``MatMul(Softmax(MatMul(Q, Kt) * scale + mask),
  V)``; ``Kt`` is K already transposed, as the pattern found it. The scale is the ``scale``
  input (a scalar tensor, e.g. a weight) when given, else the ``scale`` attribute, else 1.
* ``LayerNorm(x, [scale], [bias])`` — normalises over the axes from ``axis`` to the last, like
  ONNX ``LayerNormalization`` with ``stash_type=1``.
* ``RMSNorm(x, [scale])`` — ``x / sqrt(mean(x^2) + epsilon) * scale`` over the same axes.

>>> from nerve.ir import NERVE_OPS
>>> sorted(op for op in NERVE_OPS if op in FUSED_OPS)
['Attention', 'FusedConv', 'FusedElementwise', 'FusedMatMul', 'LayerNorm', 'RMSNorm']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nerve.errors import ShapeError
from nerve.ir.graph import Node
from nerve.ir.infer import infer_node
from nerve.ir.opset import register_op
from nerve.ir.types import DType, TensorType

# One step of an elementwise program: (op_type, input registers, attributes).
Step = tuple[str, tuple[int, ...], tuple[tuple[str, Any], ...]]
Program = tuple[Step, ...]

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
GEMM_ATTRS = ("alpha", "beta", "transB")
# FusedConv / FusedMatMul attribute: "bfloat16" = inputs 0 and 1 are read rounded to bfloat16
# (float32 values round to nearest even, bfloat16 ones are widened); the products and sums
# stay float32 (what AMX and AVX512-BF16 compute; the precision pass sets it).
OPERANDS = "operands"

FUSED_OPS = (
    "Attention", "FusedConv", "FusedElementwise", "FusedMatMul", "LayerNorm", "RMSNorm",
)

Types = Sequence["TensorType | None"]
Consts = Sequence["np.ndarray | None"]


def reg(i: int) -> str:
    """The name a program register has inside the synthetic nodes of a step."""
    return f"r{i}"


def step_node(step: Step) -> Node:
    """The ONNX node a program step stands for (inputs named by register)."""
    op, ins, attrs = step
    return Node(op, [reg(i) for i in ins], ["out"], dict(attrs), name=op)


def infer_program(
    program: Program, types: Sequence[TensorType], consts: Sequence[np.ndarray | None] = ()
) -> TensorType:
    """The type of a program's result, given the types of its first registers."""
    env = {reg(i): t for i, t in enumerate(types)}
    values = {reg(i): c for i, c in enumerate(consts) if c is not None}
    last = types[0] if not program else None
    for k, step in enumerate(program):
        out = infer_node(step_node(step), env, values)[0]
        if out is None:
            raise ShapeError(f"program step {k} ({step[0]}) has no static type")
        env[reg(len(types) + k)] = out
        last = out
    assert last is not None
    return last


def _present(types: Types, i: int) -> TensorType | None:
    return types[i] if i < len(types) else None


def _inner(op: str, inputs: Sequence[str], attrs: dict[str, Any], types: Types) -> TensorType:
    """The type of an ONNX op over the fused op's first inputs (placeholders by position)."""
    env = {f"i{k}": t for k, t in enumerate(types) if t is not None}
    node = Node(op, [f"i{k}" if name else "" for k, name in enumerate(inputs)], ["y"], attrs)
    out = infer_node(node, env, {})[0]
    if out is None:
        raise ShapeError(f"{op} inside a fused op has no static type")
    return out


def _epilogue(node: Node, main: TensorType, types: Types, consts: Consts, first: int) -> TensorType:
    program: Program = node.attr("epilogue", ())
    extra = [t for t in types[first:] if t is not None]
    out = infer_program(program, [main, *extra], [None, *consts[first:]])
    if out.shape != main.shape:
        raise ShapeError(
            f"node {node.name!r}: the epilogue changes the shape {main} -> {out}; a fused "
            "epilogue must keep the main result's shape"
        )
    return out


def _operand_types(node: Node, types: Types) -> Types:
    """With narrowed operands, the types the float32 op over them would see."""
    if node.attr(OPERANDS) != "bfloat16":
        return types
    wide = list(types)
    for i in (0, 1):
        t = wide[i] if i < len(wide) else None
        if t is not None and t.dtype is DType.BFLOAT16:
            wide[i] = TensorType(DType.FLOAT32, t.shape)
    return wide


@register_op("FusedConv", "Conv + optional bias + an elementwise epilogue")
def _fused_conv(node: Node, types: Types, consts: Consts) -> list[TensorType]:
    types = _operand_types(node, types)
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    conv = _inner("Conv", node.inputs[:3], attrs, types[:3])
    return [_epilogue(node, conv, types, consts, 3)]


@register_op("FusedMatMul", "MatMul (or Gemm) + optional bias + an elementwise epilogue")
def _fused_matmul(node: Node, types: Types, consts: Consts) -> list[TensorType]:
    types = _operand_types(node, types)
    if node.attr("gemm", 0):
        attrs = {k: v for k, v in node.attrs.items() if k in GEMM_ATTRS}
        main = _inner("Gemm", node.inputs[:3], attrs, types[:3])
    else:
        main = _inner("MatMul", node.inputs[:2], {}, types[:2])
        bias = _present(types, 2)
        if bias is not None and node.inputs[2]:
            main = _inner("Add", ["y", "b"], {}, [main, bias])
    return [_epilogue(node, main, types, consts, 3)]


@register_op("FusedElementwise", "a chain of elementwise ops run as one node")
def _fused_elementwise(node: Node, types: Types, consts: Consts) -> list[TensorType]:
    known = [t for t in types if t is not None]
    return [infer_program(node.attr("program", ()), known, list(consts))]


@register_op("Attention", "MatMul(Softmax(MatMul(Q, Kt) * scale + mask), V)")
def _attention(node: Node, types: Types, consts: Consts) -> list[TensorType]:
    scores = _inner("MatMul", ["q", "k"], {}, types[:2])
    mask = _present(types, 3)
    if mask is not None and node.inputs[3]:
        scores = _inner("Add", ["s", "m"], {}, [scores, mask])
    return [_inner("MatMul", ["p", "v"], {}, [scores, types[2]])]


def _same_as_input(node: Node, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    assert x is not None
    axis = int(node.attr("axis", -1))
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"node {node.name!r}: axis {axis} is out of range for {x}")
    return [x]


register_op("LayerNorm", "layer normalisation over the axes from `axis` on")(_same_as_input)
register_op("RMSNorm", "root-mean-square normalisation over the axes from `axis` on")(
    _same_as_input
)


__all__ = [
    "CONV_ATTRS",
    "FUSED_OPS",
    "GEMM_ATTRS",
    "OPERANDS",
    "Program",
    "Step",
    "infer_program",
    "reg",
    "step_node",
]

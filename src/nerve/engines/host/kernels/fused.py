"""Host kernels of the nerve-domain fused ops (see :mod:`nerve.ir.fused_ops`).

A fused op means "these ONNX ops, in this order", so its host kernel calls those ops' own host
kernels: the fused graph then computes exactly what the unfused graph computes, and the host
engine stays the oracle for engines that really fuse. Only the normalisations are written out
here (they are their definition).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nerve.engines.host.registry import as_outputs, get_kernel, kernel, wants_types
from nerve.errors import KernelError
from nerve.ir import DType, Node, TensorType
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16
from nerve.ir.fused_ops import CONV_ATTRS, GEMM_ATTRS, OPERANDS, Program, reg, step_node


def _invoke(node: Node, inputs: Sequence[np.ndarray | None]) -> np.ndarray:
    fn = get_kernel(node.op_type, "")
    if fn is None:
        raise KernelError(
            f"a fused op needs the host kernel of {node.op_type}, which is not registered"
        )
    if wants_types(node.op_type, ""):
        # The fuse pass keeps bfloat16 out of fused programs, so numpy dtypes tell the types.
        types = [
            TensorType(DType.from_numpy(x.dtype), x.shape) if x is not None else None
            for x in inputs
        ]
        return as_outputs(node, fn(node, *inputs, input_types=types))[0]
    return as_outputs(node, fn(node, *inputs))[0]


def call(op: str, attrs: Mapping[str, Any], *inputs: np.ndarray | None) -> np.ndarray:
    """Run the host kernel of the ONNX op ``op`` on ``inputs`` (None: an omitted input)."""
    node = Node(op, [reg(i) if x is not None else "" for i, x in enumerate(inputs)], ["y"],
                dict(attrs), name=op)
    return _invoke(node, inputs)


def run_program(program: Program, registers: Sequence[np.ndarray]) -> np.ndarray:
    """Run an elementwise program over its first registers; returns the last register."""
    regs = list(registers)
    for step in program:
        regs.append(_invoke(step_node(step), [regs[i] for i in step[1]]))
    return regs[-1]


def _extras(inputs: Sequence[np.ndarray | None], first: int) -> list[np.ndarray]:
    return [x for x in inputs[first:] if x is not None]


def _operands(node: Node, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs 0 and 1 as the node's products read them: with ``operands="bfloat16"``,
    float32 values rounded to bfloat16 (nearest even) and bfloat16 bits (uint16) widened."""
    if node.attr(OPERANDS) != "bfloat16":
        return a, b
    return _bf16_value(a), _bf16_value(b)


def _bf16_value(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint16:  # bfloat16 bit patterns (a bf16 weight slot)
        return bfloat16_to_float32(x)
    return bfloat16_to_float32(float32_to_bfloat16(x))


@kernel("FusedConv", domain="nerve")
def fused_conv(node: Node, x: np.ndarray, w: np.ndarray, *rest: np.ndarray | None) -> np.ndarray:
    x, w = _operands(node, x, w)
    bias = rest[0] if rest else None
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    y = call("Conv", attrs, x, w, bias)
    return run_program(node.attr("epilogue", ()), [y, *_extras(rest, 1)])


@kernel("FusedMatMul", domain="nerve")
def fused_matmul(
    node: Node, a: np.ndarray, b: np.ndarray, *rest: np.ndarray | None
) -> np.ndarray:
    a, b = _operands(node, a, b)
    c = rest[0] if rest else None
    if node.attr("gemm", 0):
        attrs = {k: v for k, v in node.attrs.items() if k in GEMM_ATTRS}
        y = call("Gemm", attrs, a, b, c)
    else:
        y = call("MatMul", {}, a, b)
        if c is not None:
            y = call("Add", {}, y, c)
    return run_program(node.attr("epilogue", ()), [y, *_extras(rest, 1)])


@kernel("FusedElementwise", domain="nerve")
def fused_elementwise(node: Node, *inputs: np.ndarray | None) -> np.ndarray:
    return run_program(node.attr("program", ()), [x for x in inputs if x is not None])


@kernel("Attention", domain="nerve")
def attention(
    node: Node,
    q: np.ndarray,
    kt: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    scale_input: np.ndarray | None = None,
) -> np.ndarray:
    scores = call("MatMul", {}, q, kt)
    scale = scale_input if scale_input is not None else node.attr("scale")
    if scale is not None:
        scores = call("Mul", {}, scores, np.asarray(scale, scores.dtype))
    if mask is not None:
        scores = call("Add", {}, scores, mask)
    probs = call("Softmax", {"axis": -1}, scores)
    return call("MatMul", {}, probs, v)


def _norm_axes(node: Node, x: np.ndarray) -> tuple[int, ...]:
    axis = int(node.attr("axis", -1)) % x.ndim
    return tuple(range(axis, x.ndim))


def _stash(x: np.ndarray) -> np.ndarray:
    # Like ONNX's stash_type=1: half-precision inputs are normalised in float32.
    return x.astype(np.float32) if x.dtype in (np.float16,) else x


@kernel("LayerNorm", domain="nerve")
def layer_norm(
    node: Node, x: np.ndarray, scale: np.ndarray | None = None, bias: np.ndarray | None = None
) -> np.ndarray:
    axes = _norm_axes(node, x)
    xs = _stash(x)
    eps = np.asarray(node.attr("epsilon", 1e-5), xs.dtype)
    centered = xs - xs.mean(axis=axes, keepdims=True)
    var = (centered * centered).mean(axis=axes, keepdims=True)
    y = (centered / np.sqrt(var + eps)).astype(x.dtype)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype, copy=False)


@kernel("RMSNorm", domain="nerve")
def rms_norm(node: Node, x: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    axes = _norm_axes(node, x)
    xs = _stash(x)
    eps = np.asarray(node.attr("epsilon", 1e-5), xs.dtype)
    y = (xs / np.sqrt((xs * xs).mean(axis=axes, keepdims=True) + eps)).astype(x.dtype)
    if scale is not None:
        y = y * scale
    return y.astype(x.dtype, copy=False)

"""Decompositions a target can ask normalize for: one op rewritten as ops the target has.

Each ``fn(graph, ctx) -> int`` rewrites every match in ``graph`` and returns how many it
rewrote. The restriction catalogs use them as fixes (``normalize(fix=True)``):

* :func:`gelu_to_tanh` — Gelu (also the erf-form pattern) as its tanh approximation
  ``0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3)))``;
* :func:`layer_norm_to_primitives` / :func:`rms_norm_to_primitives` — mean, centre, square,
  mean, + eps, ``pow(-0.5)``, scale, shift;
* :func:`rsqrt_to_pow` — ``Reciprocal(Sqrt(v))`` as ``Pow(v, -0.5)``;
* :func:`split_conv_bias` — ``Conv(x, W, B)`` as ``Conv(x, W) + B[C, 1, 1]``;
* :func:`causal_attention_to_primitives` — ONNX ``Attention(is_causal=1)`` as explicit
  ``MatMul -> * scale -> + mask -> Softmax -> MatMul`` with the mask as a constant;
* :func:`clamp_masks` — additive-mask constants below ``-65504`` (``-inf``) clamped to
  ``-1e4``;
* :func:`place_on_host` — nodes matching a predicate are pinned to the host engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from nerve.compiler.bake import step
from nerve.compiler.context import PassContext
from nerve.compiler.passes.rewrite import Rewriter, apply_rules
from nerve.ir import NERVE_DOMAIN, Graph, Node, TensorType


class _Emit:
    """Appends nodes computing into fresh values; ``out`` names the last one's output."""

    def __init__(self, rw: Rewriter, base: str) -> None:
        self.rw, self.base = rw, base
        self.nodes: list[Node] = []

    def const(self, value: float, like: str) -> str:
        dtype = self.rw.type(like).dtype.numpy
        return self.rw.constant(f"{self.base}_c", np.asarray(value, dtype=dtype))

    def axes(self, values: Sequence[int]) -> str:
        return self.rw.constant(f"{self.base}_axes", np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: object) -> str:
        node = self.rw.node(op_type, inputs, [out] if out else None, attrs,
                            name=f"{self.base}_{op_type.lower()}")
        self.nodes.append(node)
        return node.outputs[0]


def _each(graph: Graph, ctx: PassContext, match: Callable[[Node], bool],
          rewrite: Callable[[Rewriter, Node], bool]) -> int:
    rw = Rewriter(graph, ctx)
    done = 0
    for node in list(graph.nodes):
        if rw.alive(node) and match(node) and rewrite(rw, node):
            done += 1
    rw.commit()
    return done


# ---- Gelu -------------------------------------------------------------------------------------


def gelu_to_tanh(graph: Graph, ctx: PassContext) -> int:
    """Gelu (op or erf pattern) as the tanh approximation (Orion's GELU composite)."""
    from nerve.compiler.passes.patterns import _gelu

    apply_rules(graph, [("gelu", _gelu)], ctx=ctx)
    return _each(graph, ctx, lambda n: n.domain == "" and n.op_type == "Gelu", _gelu_tanh)


def _gelu_tanh(rw: Rewriter, node: Node) -> bool:
    x = node.inputs[0]
    e = _Emit(rw, node.name)
    cube = e.op("Pow", [x, e.const(3.0, x)])
    inner = e.op("Add", [x, e.op("Mul", [cube, e.const(0.044715, x)])])
    t = e.op("Tanh", [e.op("Mul", [inner, e.const(math.sqrt(2 / math.pi), x)])])
    half_x = e.op("Mul", [x, e.const(0.5, x)])
    e.op("Mul", [half_x, e.op("Add", [t, e.const(1.0, x)])], node.outputs[0])
    rw.replace([node], e.nodes)
    return True


# ---- normalisations ---------------------------------------------------------------------


def _is_norm(node: Node, onnx_op: str, nerve_op: str) -> bool:
    if node.domain == NERVE_DOMAIN:
        return node.op_type == nerve_op
    return node.domain == "" and node.op_type == onnx_op and not any(node.outputs[1:])


def layer_norm_to_primitives(graph: Graph, ctx: PassContext) -> int:
    """LayerNormalization / nerve.LayerNorm as primitives (Orion's LayerNorm composite)."""
    return _each(graph, ctx, lambda n: _is_norm(n, "LayerNormalization", "LayerNorm"),
                 lambda rw, n: _norm(rw, n, center=True))


def rms_norm_to_primitives(graph: Graph, ctx: PassContext) -> int:
    """RMSNormalization / nerve.RMSNorm as primitives (Orion's RMSNorm composite)."""
    return _each(graph, ctx, lambda n: _is_norm(n, "RMSNormalization", "RMSNorm"),
                 lambda rw, n: _norm(rw, n, center=False))


def _norm(rw: Rewriter, node: Node, *, center: bool) -> bool:
    x = node.inputs[0]
    rank = rw.type(x).rank
    axis = int(node.attr("axis", -1)) % rank
    eps = float(node.attr("epsilon", 1e-5))
    e = _Emit(rw, node.name)
    axes = e.axes(list(range(axis, rank)))
    d = e.op("Sub", [x, e.op("ReduceMean", [x, axes], keepdims=1)]) if center else x
    var = e.op("ReduceMean", [e.op("Mul", [d, d]), axes], keepdims=1)
    inv = e.op("Pow", [e.op("Add", [var, e.const(eps, x)]), e.const(-0.5, x)])
    y = e.op("Mul", [d, inv])
    scale = node.inputs[1] if len(node.inputs) > 1 else ""
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    if scale:
        y = e.op("Mul", [y, scale])
    if bias:
        y = e.op("Add", [y, bias])
    last = e.nodes[-1]
    last.outputs = [node.outputs[0]]
    rw.graph.types[node.outputs[0]] = rw.type(y)
    rw.replace([node], e.nodes)
    return True


def rsqrt_to_pow(graph: Graph, ctx: PassContext) -> int:
    """``Reciprocal(Sqrt(v))`` as ``Pow(v, -0.5)`` (rsqrt fails to compile on the ANE)."""

    def rewrite(rw: Rewriter, node: Node) -> bool:
        sqrt = rw.producer(node.inputs[0])
        if sqrt is None or sqrt.op_type != "Sqrt" or sqrt.domain:
            return False
        e = _Emit(rw, node.name)
        e.op("Pow", [sqrt.inputs[0], e.const(-0.5, sqrt.inputs[0])], node.outputs[0])
        rw.replace([node], e.nodes)
        return True

    return _each(graph, ctx, lambda n: n.domain == "" and n.op_type == "Reciprocal", rewrite)


# ---- conv bias ----------------------------------------------------------------------------


def split_conv_bias(graph: Graph, ctx: PassContext) -> int:
    """``Conv(x, W, B)`` as ``Add(Conv(x, W), B[C, 1, ...])`` (the ANE conv takes no bias)."""

    def rewrite(rw: Rewriter, node: Node) -> bool:
        bias = node.inputs[2]
        out = rw.type(node.outputs[0])
        shape = (out.shape[1],) + (1,) * (out.rank - 2)
        bias_type = TensorType(rw.type(bias).dtype, shape)
        if rw.is_weight(bias):
            shaped = ctx.book.derive([bias], step("reshape", shape=shape), bias_type)
        elif bias in rw.graph.constants:
            shaped = rw.constant(f"{bias}_nd", rw.graph.constants[bias].reshape(shape))
        else:
            return False
        conv_out = rw.fresh(f"{node.outputs[0]}_nobias", out)
        conv = rw.node("Conv", node.inputs[:2], [conv_out], node.attrs, name=node.name)
        add = rw.node("Add", [conv_out, shaped], node.outputs, name=f"{node.name}_bias")
        rw.replace([node], [conv, add])
        return True

    return _each(graph, ctx, lambda n: n.domain == "" and n.op_type == "Conv"
                 and len(n.inputs) > 2 and bool(n.inputs[2]), rewrite)


# ---- causal attention -----------------------------------------------------------------------

_ATTENTION_DEFAULTS = {"softcap": 0.0, "qk_matmul_output_mode": 0, "left_window_size": -1,
                       "right_window_size": -1}


def simple_causal_attention(node: Node, graph: Graph) -> bool:
    """Whether an ONNX Attention(is_causal=1) is simple enough to decompose here: 4-D Q/K/V
    with equal heads and sequence lengths, no mask, cache, softcap, window or extra output."""
    if node.domain or node.op_type != "Attention" or not node.attr("is_causal", 0):
        return False
    if len([i for i in node.inputs if i]) != 3 or any(node.outputs[1:]):
        return False
    if any(node.attr(k, v) != v for k, v in _ATTENTION_DEFAULTS.items()):
        return False
    q, k, v = (graph.types[i] for i in node.inputs[:3])
    return q.rank == k.rank == v.rank == 4 and q.shape[:3] == k.shape[:3] and k.shape[:3] == \
        v.shape[:3]


def causal_attention_to_primitives(graph: Graph, ctx: PassContext) -> int:
    """Attention(is_causal=1) as explicit ops with a -1e4 causal mask constant."""

    def rewrite(rw: Rewriter, node: Node) -> bool:
        q, k, v = node.inputs[:3]
        qt = rw.type(q)
        seq, head = qt.shape[2], qt.shape[3]
        scale = node.attr("scale")
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(head)
        mask = np.triu(np.full((seq, seq), -1.0e4, dtype=qt.dtype.numpy), k=1)
        e = _Emit(rw, node.name)
        kt = e.op("Transpose", [k], perm=(0, 1, 3, 2))
        scores = e.op("Mul", [e.op("MatMul", [q, kt]), e.const(scale, q)])
        masked = e.op("Add", [scores, rw.constant(f"{node.name}_causal_mask", mask)])
        probs = e.op("Softmax", [masked], axis=-1)
        e.op("MatMul", [probs, v], node.outputs[0])
        rw.replace([node], e.nodes)
        return True

    return _each(graph, ctx, lambda n: simple_causal_attention(n, graph), rewrite)


# ---- masks --------------------------------------------------------------------------------------

FP16_MAX = 65504.0
MASK_VALUE = -1.0e4


def overflowing_mask(graph: Graph, node: Node) -> str | None:
    """The constant input of an Add that holds values below fp16's range (e.g. -inf)."""
    if node.domain or node.op_type != "Add":
        return None
    for name in node.inputs:
        value = graph.constants.get(name)
        if value is not None and np.issubdtype(value.dtype, np.floating) and value.size \
                and float(np.min(value)) < -FP16_MAX:
            return name
    return None


def clamp_masks(graph: Graph, ctx: PassContext) -> int:
    """Replace additive-mask constants below -65504 by copies clamped at -1e4."""

    def rewrite(rw: Rewriter, node: Node) -> bool:
        name = overflowing_mask(graph, node)
        if name is None:
            return False
        clamped = np.maximum(graph.constants[name], MASK_VALUE).astype(graph.constants[name].dtype)
        new = rw.constant(f"{name}_clamped", clamped)
        rw.set_inputs(node, [new if i == name else i for i in node.inputs])
        return True

    return _each(graph, ctx, lambda n: overflowing_mask(graph, n) is not None, rewrite)


# ---- placement ----------------------------------------------------------------------------


def place_on_host(graph: Graph, ctx: PassContext, match: Callable[[Node], bool]) -> int:
    """Pin every node ``match`` accepts to the host engine; returns how many were new."""
    count = 0
    for node in graph.nodes:
        if match(node) and node.name not in ctx.placement:
            ctx.placement[node.name] = "host"
            count += 1
    return count


__all__ = [
    "causal_attention_to_primitives",
    "clamp_masks",
    "gelu_to_tanh",
    "layer_norm_to_primitives",
    "overflowing_mask",
    "place_on_host",
    "rms_norm_to_primitives",
    "rsqrt_to_pow",
    "simple_causal_attention",
    "split_conv_bias",
]

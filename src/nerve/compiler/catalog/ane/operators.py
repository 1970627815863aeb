"""ANE restrictions on operator support: ops the ANE's MIL op set lacks or rejects, and
tensor dtypes it cannot hold. Most are fixed by decomposing into ops it has, or by running the
node on the host engine."""

from __future__ import annotations

from collections.abc import Iterator

from nerve.compiler.catalog.ane.common import flag_nodes, host_fixer, is_op, producer_of
from nerve.compiler.context import PassContext
from nerve.compiler.passes import decompose
from nerve.compiler.restrictions import (
    ERROR,
    INFO,
    OPERATOR_SUPPORT,
    CheckContext,
    Diagnostic,
    Restriction,
    restriction,
)
from nerve.compiler.targets import ane
from nerve.ir import NERVE_DOMAIN, Graph, Node

_NORMS = {("", "LayerNormalization"), ("", "RMSNormalization"), (NERVE_DOMAIN, "LayerNorm"),
          (NERVE_DOMAIN, "RMSNorm")}
# Ops a specific restriction covers; the generic op-support check (R20) leaves them alone.
_SPECIFIC = {"Concat", "Gelu", "Erf", "LayerNormalization", "RMSNormalization", "nerve.LayerNorm",
             "nerve.RMSNorm"}


def _concat(node: Node, graph: Graph) -> bool:
    return is_op(node, "Concat")


@restriction(
    "ane", "ANE-R01", OPERATOR_SUPPORT, ERROR, "concat is rejected by the ANE compiler",
    fix="assemble on the host: the Concat runs on the host engine and the ANE program returns "
        "its inputs as separate outputs (a multi-output program)",
    fixer=host_fixer(_concat),
)
def concat(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #1 (§4.1 [P*][R]): MIL ``concat`` makes ``ANECCompile()`` fail; Orion's IR names
    the op ``concat_BANNED`` and its validator rejects it (§3.3, §3.4 [C]). Workaround used by
    Orion: multi-output programs and host-side assembly (§2.2)."""
    yield from flag_nodes(ctx, r, _concat,
                          "Concat makes the ANE compiler fail (ANECCompile() FAILED)")


@restriction(
    "ane", "ANE-R08", OPERATOR_SUPPORT, ERROR, "conv takes no bias",
    fix="add the bias with a separate Add after the Conv",
    fixer=decompose.split_conv_bias,
)
def conv_bias(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #13 (§4.1, README [R]): the MIL ``conv`` op rejects ``bias=``; Orion's conv-bias
    fusion pass is disabled for this reason (§3.4 [C])."""
    for node in ctx.target_nodes():
        if is_op(node, "Conv") and len(node.inputs) > 2 and node.inputs[2]:
            yield r.diagnose("Conv with a bias input: MIL conv rejects bias=", node=node)


def _gelu_fixer(graph: Graph, ctx: PassContext) -> int:
    done = decompose.gelu_to_tanh(graph, ctx)
    return done + decompose.place_on_host(graph, ctx, lambda n: is_op(n, "Erf"))


@restriction(
    "ane", "ANE-R10", OPERATOR_SUPPORT, ERROR, "gelu is not an ANE op",
    fix="use the tanh approximation 0.5x(1+tanh(0.7979(x+0.044715x^3))) (max error ~1e-3); "
        "an Erf outside a Gelu runs on the host",
    fixer=_gelu_fixer,
)
def gelu(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #10 (§4.1 [P*][R]): MIL ``gelu`` is not accepted; Orion's IR has no gelu op and
    builds GELU as its tanh approximation, ~10 ops with the constant 0.7979 (§3.1, §3.2 [C])."""
    for node in ctx.target_nodes():
        if is_op(node, "Gelu"):
            yield r.diagnose("Gelu is not an ANE op", node=node)
        elif is_op(node, "Erf"):
            yield r.diagnose("Erf (the exact GELU's building block) is not an ANE op",
                             node=node)


def _norm_fixer(graph: Graph, ctx: PassContext) -> int:
    return decompose.layer_norm_to_primitives(graph, ctx) + decompose.rms_norm_to_primitives(
        graph, ctx)


@restriction(
    "ane", "ANE-R11", OPERATOR_SUPPORT, ERROR, "no layernorm / rmsnorm op",
    fix="decompose: mean, centre, square, mean, + eps, pow(-0.5), scale, shift",
    fixer=_norm_fixer,
)
def norms(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: Orion's op set has no layernorm (nor gelu/silu) 'by design — only
    composites'; §3.2 [C] gives the LayerNorm and RMSNorm composites it emits instead."""
    for node in ctx.target_nodes():
        if (node.domain, node.op_type) in _NORMS:
            yield r.diagnose(f"{node.qualified_op} is not an ANE op; it must be decomposed",
                             node=node)


def _rsqrt(node: Node, graph: Graph) -> bool:
    if not is_op(node, "Reciprocal"):
        return False
    producer = producer_of(graph, node.inputs[0])
    return producer is not None and is_op(producer, "Sqrt")


@restriction(
    "ane", "ANE-R12", OPERATOR_SUPPORT, ERROR, "rsqrt fails to compile",
    fix="use pow(v, -0.5) instead of 1/sqrt(v)", fixer=decompose.rsqrt_to_pow,
)
def rsqrt(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§4.2 [3P] (community report on the Orion repository, M4 Max, reproduced on M4): MIL
    ``rsqrt`` fails to compile; Orion's norms use ``pow(x, -0.5)`` (§3.2 [C])."""
    yield from flag_nodes(ctx, r, _rsqrt,
                          "Reciprocal(Sqrt(v)) lowers to rsqrt, which fails to compile")


_OPS = ane.target().ops or {}


def _unsupported(node: Node, graph: Graph) -> bool:
    if node.qualified_op in _OPS or node.qualified_op in _SPECIFIC:
        return False
    return not _folds_into_conv(node, graph)


def _folds_into_conv(node: Node, graph: Graph) -> bool:
    """An inference BatchNormalization right after a Conv: the fuse pass folds it away."""
    if not is_op(node, "BatchNormalization") or node.attr("training_mode", 0):
        return False
    producer = producer_of(graph, node.inputs[0])
    readers = [n for n in graph.nodes if node.inputs[0] in n.inputs]
    static = all(i in graph.params or i in graph.constants for i in node.inputs[1:5])
    return producer is not None and is_op(producer, "Conv") and len(readers) == 1 and static


@restriction(
    "ane", "ANE-R20", OPERATOR_SUPPORT, ERROR, "op outside the ANE's MIL op set",
    fix="run the node on the host engine (a multi-program plan), or replace the op",
    fixer=host_fixer(_unsupported),
)
def op_set(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: Orion's IR (what its MIL generator emits and what was verified on the ANE)
    has 27 ops: conv, add, sub, mul, matmul, reshape, transpose, cast, relu, tanh, sigmoid,
    softmax, exp, pow, reduce_sum/mean/max, neg, sqrt, split, pad, slice, identity (+ input,
    const). §10.5 [P*]: ``gather`` is not in MIL (embedding lookups stay on the CPU); §3.5
    [C]: other ops emit a comment — an invalid program."""
    yield from flag_nodes(ctx, r, _unsupported,
                          lambda node: f"{node.qualified_op} is not in the ANE's op set")


def _bad_dtype(node: Node, graph: Graph) -> str | None:
    for name in (*node.inputs, *node.outputs):
        if name and name not in graph.constants and graph.types[name].dtype not in ane.DTYPES:
            return name
    return None


@restriction(
    "ane", "ANE-R21", OPERATOR_SUPPORT, ERROR, "tensor dtype the ANE cannot hold",
    fix="run the node on the host engine, or cast to int32/fp16 in the model",
    fixer=host_fixer(lambda n, g: _bad_dtype(n, g) is not None),
)
def dtypes(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: ``OrionDtype`` is fp16, fp32, int32, bool (and string for names); int64
    indices, float64 and 8-bit types have no ANE representation (INT8 is dequantized to fp16,
    §10.2 [P*])."""
    for node in ctx.target_nodes():
        bad = _bad_dtype(node, ctx.graph)
        if bad is not None and not _unsupported(node, ctx.graph):
            dtype = ctx.graph.types[bad].dtype.value
            yield r.diagnose(f"{bad!r} is {dtype}; the ANE holds fp16/fp32/int32/bool",
                             node=node, tensor=bad)


def _linear(node: Node, graph: Graph) -> bool:
    return is_op(node, "MatMul", "Gemm") and node.inputs[1] in graph.params


@restriction(
    "ane", "ANE-R26", OPERATOR_SUPPORT, INFO, "linears run faster as 1x1 convolutions",
    fix="nerve's ANE export lowers linears to conv1x1 (weights [out, in, 1, 1]); nothing to do",
)
def linear_as_conv(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #17 (§4.1 [P], prior work; §10.2): a 1x1 conv is ~3x faster than the equivalent
    matmul; Orion emits every Linear as conv1x1 (§3.2 [C]). Independent measurements give
    1.4-2.2x, shape-dependent (§10.6 [3P])."""
    yield from flag_nodes(ctx, r, _linear, "a linear with a weight operand: emit it as a 1x1 conv")

"""Pass 3, precision: a dtype for every tensor, from the target's precision policy.

The policy (``Target.precision(name)``) names a compute dtype and the ops that compute in it.
For each such op whose float inputs have another dtype, the pass

* casts activation inputs with a Cast node (one per value, shared by its readers),
* casts weights through a bake-recipe step (``cast``) — a new weight slot, never new data,
* casts structural constants directly (they are structure),

re-infers the op's output types, and casts each output back to the dtype its readers expect.
A Cast of a Cast that restores the original exactly (fp16 -> fp32 -> fp16) is removed, so
chains of converted ops pass the low-precision tensor straight through. Graph inputs and
outputs keep their dtypes. The ``native`` policy (host) changes nothing.

>>> import numpy as np
>>> from nerve.compiler.context import PassContext
>>> from nerve.compiler.targets import get_target
>>> from nerve.ir import DType, Graph, Node, TensorType
>>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (1, 4)))
>>> g.add_param("w", np.ones((4, 2), np.float32))
>>> _ = g.add_node(Node("MatMul", ["x", "w"], ["y"]), {"y": TensorType(DType.FLOAT32, (1, 2))})
>>> g.set_outputs(["y"])
>>> ctx = PassContext.new(g, get_target("ane"))
>>> [n.op_type for n in precision(g, ctx).nodes]
['Cast', 'MatMul', 'Cast']
"""

from __future__ import annotations

import numpy as np

from nerve.compiler.bake import step
from nerve.compiler.context import PassContext
from nerve.compiler.passes.precision_operands import OperandNarrower
from nerve.compiler.passes.rewrite import Rewriter, apply_rules, dead_code, prune
from nerve.compiler.targets import PrecisionPolicy
from nerve.errors import CompileError, ShapeError
from nerve.ir import DType, Graph, Node, TensorType, infer_node
from nerve.ir.dtypes import float32_to_bfloat16

# (narrow, wide): a value of `narrow` survives narrow -> wide -> narrow exactly.
EXACT_ROUND_TRIPS = frozenset({
    (DType.FLOAT16, DType.FLOAT32), (DType.FLOAT16, DType.FLOAT64),
    (DType.BFLOAT16, DType.FLOAT32), (DType.BFLOAT16, DType.FLOAT64),
    (DType.FLOAT32, DType.FLOAT64),
})

# Ops that fix their own dtypes (or only move bits): never converted.
_KEEP = frozenset({"Cast", "CastLike", "Shape", "Size", "ConstantOfShape", "Range"})


def precision(graph: Graph, ctx: PassContext) -> Graph:
    """Apply the target's precision policy (see the module docstring)."""
    policy = ctx.target.precision(ctx.option("precision"))
    overrides = _overrides(ctx)
    ctx.notes.append(f"precision policy: {describe(policy)}")
    for key, chosen in overrides.items():
        ctx.notes.append(f"precision override: {key} -> {describe(chosen)}")
    if policy.compute is None and not any(p.operands for p in (policy, *overrides.values())):
        return graph
    if policy.compute is not None:
        converter = _Converter(graph, ctx, policy)
        nodes: list[Node] = []
        for node in graph.nodes:
            nodes.extend(converter.convert(node) if _wants(node, graph, policy) else [node])
        graph.nodes = nodes
    narrower = OperandNarrower(graph, ctx)
    nodes = []
    for node in graph.nodes:
        chosen = _policy_for(node, policy, overrides)
        if chosen.operands is not None and node.qualified_op in (chosen.ops or ()):
            nodes.extend(narrower.narrow(node, chosen.operands))
        else:
            nodes.append(node)
    graph.nodes = nodes
    graph._node_names = {n.name for n in graph.nodes}
    apply_rules(graph, [("cast_pair", _cast_pair)], ctx.record.rewrites)
    ctx.count("dead_code", dead_code(graph))
    prune(graph, ctx.book.recipes)
    return graph


def describe(policy: PrecisionPolicy) -> str:
    """A policy as the CompileReport shows it: name, what it narrows, features it uses."""
    if policy.operands is None:
        text = policy.name if policy.compute is None or policy.name == policy.compute.value \
            else f"{policy.name} (compute {policy.compute.value})"
        return text
    acc = "float32" if policy.operands is DType.BFLOAT16 else "int32"
    ops = ", ".join(sorted(policy.ops or ()))
    used = f"; uses {', '.join(policy.uses)}" if policy.uses else "; host emulation"
    return f"{policy.name} ({policy.operands.value} operands, {acc} accumulation on {ops}{used})"


def _overrides(ctx: PassContext) -> dict[str, PrecisionPolicy]:
    """``precision_overrides`` ({node name or op type: precision name}) resolved to policies."""
    given = ctx.option("precision_overrides") or {}
    if not isinstance(given, dict):
        raise CompileError("precision_overrides must map node names or op types to precision "
                           f"names (e.g. {{'Conv': 'fp32'}}), not {type(given).__name__}")
    return {str(k): ctx.target.precision(str(v)) for k, v in sorted(given.items())}


# Fused ops answer to the op type they were fused from, so {"Conv": "fp32"} covers FusedConv.
_BASE_OP = {"nerve.FusedConv": "Conv", "nerve.FusedMatMul": "MatMul"}


def _policy_for(
    node: Node, policy: PrecisionPolicy, overrides: dict[str, PrecisionPolicy]
) -> PrecisionPolicy:
    for key in (node.name, node.qualified_op, node.op_type, _BASE_OP.get(node.qualified_op)):
        if key and key in overrides:
            return overrides[key]
    if node.qualified_op == "nerve.FusedMatMul" and node.attr("gemm", 0) and "Gemm" in overrides:
        return overrides["Gemm"]
    return policy


def _wants(node: Node, graph: Graph, policy: PrecisionPolicy) -> bool:
    if node.op_type in _KEEP and not node.domain:
        return False
    if policy.ops is not None and node.qualified_op not in policy.ops:
        return False
    return any(_computes_in(graph.types[i].dtype, policy.compute) for i in node.inputs if i)


def _computes_in(dtype: DType, compute: DType | None) -> bool:
    """Whether a value of ``dtype`` is converted to the ``compute`` dtype. Low-precision storage
    types (float8, float4) are not: they are only cast and moved, never computed in."""
    return dtype.is_float and not dtype.is_low_precision and dtype != compute


class _Converter:
    def __init__(self, graph: Graph, ctx: PassContext, policy: PrecisionPolicy) -> None:
        assert policy.compute is not None
        self.graph, self.ctx, self.dtype = graph, ctx, policy.compute
        self.casts: dict[str, str] = {}  # value -> its copy in the compute dtype

    def convert(self, node: Node) -> list[Node]:
        pre: list[Node] = []
        inputs = [self._input(i, pre) for i in node.inputs]
        trial = Node(node.op_type, inputs, list(node.outputs), dict(node.attrs), node.name,
                     node.domain)
        try:
            types = infer_node(trial, self.graph.types, self.graph.constants)
        except ShapeError:
            return [node]  # the op does not take this dtype: it keeps the model's
        if any(t is None for t in types):
            return [node]
        post: list[Node] = []
        outputs = []
        for out, t in zip(node.outputs, types):
            if not out or t is None or t == self.graph.types[out]:
                outputs.append(out)
                continue
            low = self.graph.unique_value_name(f"{out}@{self.dtype.value}")
            self.graph.types[low] = t
            outputs.append(low)
            to = self.graph.types[out].dtype
            post.append(Node("Cast", [low], [out], {"to": to.onnx}, f"{node.name}_cast_out"))
            self.ctx.count("cast_inserted")
        trial.outputs = outputs
        for n in (*pre, *post):
            n.name = self.graph.unique_node_name(n.name)
            self.graph._node_names.add(n.name)
        return [*pre, trial, *post]

    def _input(self, name: str, pre: list[Node]) -> str:
        if not name:
            return name
        t = self.graph.types[name]
        if not _computes_in(t.dtype, self.dtype):
            return name
        if name in self.casts:
            return self.casts[name]
        low_type = TensorType(self.dtype, t.shape)
        if name in self.graph.params:
            low = self.ctx.book.derive([name], step("cast", to=self.dtype.value), low_type)
            self.ctx.count("weight_cast")
        elif name in self.graph.constants:
            low = self.graph.unique_value_name(f"{name}@{self.dtype.value}")
            self.graph.add_constant(low, _cast_value(self.graph.constants[name], self.dtype),
                                    self.dtype)
            self.ctx.count("constant_cast")
        else:
            low = self.graph.unique_value_name(f"{name}@{self.dtype.value}")
            self.graph.types[low] = low_type
            pre.append(Node("Cast", [name], [low], {"to": self.dtype.onnx}, f"{name}_cast"))
            self.ctx.count("cast_inserted")
        self.casts[name] = low
        return low


def _cast_value(value: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype is DType.BFLOAT16:
        return float32_to_bfloat16(value.astype(np.float32))
    return value.astype(dtype.numpy)


def _cast_pair(rw: Rewriter, node: Node) -> bool:
    """Cast(Cast(x)) that gives x back exactly is x."""
    if node.op_type != "Cast" or node.domain:
        return False
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op_type != "Cast" or inner.domain:
        return False
    x = inner.inputs[0]
    narrow, wide = rw.type(x).dtype, rw.type(inner.outputs[0]).dtype
    if rw.type(node.outputs[0]).dtype != narrow or (narrow, wide) not in EXACT_ROUND_TRIPS:
        return False
    return rw.bypass(node, x)


__all__ = ["EXACT_ROUND_TRIPS", "describe", "precision"]

"""Pass 1, normalize: one canonical graph for the later passes to pattern-match.

* **constant folding** of every node whose inputs are all structural constants (never a
  Param: weights stay data, so two models differing in weights keep one structure), through
  the evaluator the caller passes (the host engine's kernels) or, without one, the IR's own
  shape-math folder; results larger than ``fold_max_elements`` stay nodes;
* **no-op removal**: Identity, inference Dropout, Cast to the same type, Reshape / Flatten /
  Squeeze / Unsqueeze / Expand to the same shape, Transpose by the identity permutation,
  ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``;
* **canonical forms**: ``x - c`` becomes ``x + (-c)`` and ``x / c`` becomes ``x * (1/c)`` for
  float constants (and for weights, through a ``negate`` / ``reciprocal`` bake recipe), so
  fusion patterns need one form each;
* **fixes**: with ``fix`` on, the repairs the target's restriction catalog offers (a
  decomposition such as Gelu into its tanh form, or sending a node to the host);
* **dead-code elimination** and pruning of unused values.

>>> import numpy as np
>>> from nerve.compiler.context import PassContext
>>> from nerve.compiler.targets import get_target
>>> from nerve.ir import DType, Graph, Node, TensorType
>>> t = TensorType(DType.FLOAT32, (2,))
>>> g = Graph("g"); g.add_input("x", t)
>>> _ = g.add_node(Node("Identity", ["x"], ["a"]), {"a": t})
>>> _ = g.add_node(Node("Relu", ["a"], ["y"]), {"y": t})
>>> g.set_outputs(["y"])
>>> ctx = PassContext.new(g, get_target("host"))
>>> [n.op_type for n in normalize(g, ctx).nodes], ctx.record.rewrites
(['Relu'], {'identity': 1})
"""

from __future__ import annotations

import numpy as np

from nerve.compiler.bake import step
from nerve.compiler.context import PassContext
from nerve.compiler.passes.rewrite import Rewriter, apply_rules, dead_code, prune
from nerve.errors import NerveError
from nerve.ir import Graph, Node, fold_shape_op

# Ops whose result is not a function of their inputs: never folded.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
     "Multinomial"}
)

_SAME_SHAPE_NOOPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"})


def normalize(graph: Graph, ctx: PassContext) -> Graph:
    """Fold, simplify and canonicalise ``graph`` in place (see the module docstring)."""
    if ctx.option("fold_constants"):
        ctx.count("constant_fold", fold_constants(graph, ctx))
    apply_rules(graph, RULES, ctx.record.rewrites, ctx=ctx)
    if ctx.option("fix"):
        from nerve.compiler.restrictions import fixers

        for code, fixer in fixers(ctx.target):
            ctx.count(code, fixer(graph, ctx))
        apply_rules(graph, RULES, ctx.record.rewrites, ctx=ctx)
    ctx.count("dead_code", dead_code(graph))
    prune(graph, ctx.book.recipes)
    return graph


# ---- constant folding ---------------------------------------------------------------------


def fold_constants(graph: Graph, ctx: PassContext) -> int:
    """Replace every node computable from constants alone by its result; returns the count."""
    cap = int(ctx.option("fold_max_elements"))
    kept: list[Node] = []
    folded = 0
    for node in graph.nodes:
        values = _fold(node, graph, ctx) if _foldable(node, graph) else None
        if values is None or any(v.size > cap for v in values):
            kept.append(node)
            continue
        for out, value in zip(node.outputs, values):
            if out:
                graph.add_constant(out, value, graph.types[out].dtype)
        folded += 1
    graph.nodes = kept
    return folded


def _foldable(node: Node, graph: Graph) -> bool:
    inputs = [i for i in node.inputs if i]
    return (
        bool(inputs)
        and node.op_type not in NONDETERMINISTIC
        and all(i in graph.constants for i in inputs)
        and any(node.outputs)
    )


def _fold(node: Node, graph: Graph, ctx: PassContext) -> list[np.ndarray] | None:
    values = fold_shape_op(node, graph.types, graph.constants)
    if values is None and ctx.evaluate is not None:
        args = [graph.constants[i] if i else None for i in node.inputs]
        types = [graph.types[i] if i else None for i in node.inputs]
        try:
            values = ctx.evaluate(node, *args, input_types=types)
        except (NerveError, ArithmeticError, ValueError, TypeError, IndexError):
            return None  # left to run time, where the kernel raises a proper error
    if values is None or len(values) < len([o for o in node.outputs if o]):
        return None
    for out, value in zip(node.outputs, values):
        if not out:
            continue
        want = graph.types[out]
        if value.shape != want.shape or value.dtype != want.dtype.numpy:
            return None  # a kernel disagreeing with the IR: do not bake its answer in
    return [np.asarray(v) for v in values]


# ---- no-ops ---------------------------------------------------------------------------------


def _identity(rw: Rewriter, node: Node) -> bool:
    return node.op_type == "Identity" and not node.domain and rw.bypass(node, node.inputs[0])


def _dropout(rw: Rewriter, node: Node) -> bool:
    if node.op_type != "Dropout" or node.domain:
        return False
    training = node.inputs[2] if len(node.inputs) > 2 else ""
    mode = rw.const(training)
    if training and (mode is None or bool(mode.any())):
        return False  # training mode (or unknown until run time): not a no-op
    mask = node.outputs[1] if len(node.outputs) > 1 else ""
    if mask and (rw.consumers(mask) or rw.is_output(mask)):
        return False
    return rw.bypass(node, node.inputs[0])


def _same_type_noop(rw: Rewriter, node: Node) -> bool:
    if node.domain or not node.outputs or not node.inputs:
        return False
    same = rw.type(node.inputs[0]) == rw.type(node.outputs[0])
    if node.op_type == "Cast" or node.op_type in _SAME_SHAPE_NOOPS:
        return same and rw.bypass(node, node.inputs[0])
    if node.op_type == "Transpose":
        perm = node.attr("perm")
        rank = rw.type(node.inputs[0]).rank
        order = list(range(rank))
        identity = (perm is None and rank <= 1) or (perm is not None and list(perm) == order)
        return identity and rw.bypass(node, node.inputs[0])
    return False


_NEUTRAL = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0}


def _neutral_arith(rw: Rewriter, node: Node) -> bool:
    neutral = _NEUTRAL.get(node.op_type)
    if neutral is None or node.domain:
        return False
    x, c = node.inputs
    value = rw.const(c)
    if value is None and node.op_type in ("Add", "Mul"):
        x, c = c, x
        value = rw.const(c)
    if value is None or value.dtype == object or not np.all(value == neutral):
        return False
    if rw.type(x) != rw.type(node.outputs[0]):
        return False  # the constant broadcasts x to a larger shape: not a no-op
    return rw.bypass(node, x)


# ---- canonical forms ----------------------------------------------------------------------


def _const_to_add_mul(rw: Rewriter, node: Node) -> bool:
    """``x - c`` -> ``x + (-c)`` and ``x / c`` -> ``x * (1/c)`` for a float constant or weight.

    A constant is negated or inverted here (it is structure); a weight gets a new slot whose
    bake recipe negates or inverts it (its value is data, never read by the compiler).
    """
    if node.op_type not in ("Sub", "Div") or node.domain:
        return False
    x, c = node.inputs
    if x in rw.graph.constants or not rw.type(c).dtype.is_float:
        return False
    value = rw.const(c)
    op = "Mul" if node.op_type == "Div" else "Add"
    if value is not None:
        if node.op_type == "Div":
            if not np.all(value != 0):
                return False
            new_value = (1.0 / value.astype(np.float64)).astype(value.dtype)
        else:
            new_value = -value
        operand = rw.constant(f"{c}_{op.lower()}", new_value)
    elif rw.is_weight(c):
        transform = step("reciprocal" if node.op_type == "Div" else "negate")
        operand = rw.ctx.book.derive([c], transform, rw.type(c))
    else:
        return False
    rw.replace([node], [rw.node(op, [x, operand], node.outputs, name=node.name)])
    return True


RULES = [
    ("identity", _identity),
    ("dropout", _dropout),
    ("same_type_noop", _same_type_noop),
    ("neutral_arith", _neutral_arith),
    ("canonical_add_mul", _const_to_add_mul),
]

__all__ = ["RULES", "fold_constants", "normalize"]

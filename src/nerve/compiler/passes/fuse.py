"""Pass 2, fuse: fewer, bigger nodes — and weight transforms as bake recipes.

In order (each group runs to a fixed point before the next):

1. ``bn_fold`` — BatchNormalization after a Conv folds into the conv's weight and bias. The
   folded weights are new slots computed by bake recipes (``bn_fold_weight``,
   ``bn_fold_bias``), never new data hidden in the graph.
2. Patterns (:mod:`.patterns`): scaled-dot-product ``attention``, ``layer_norm``,
   ``rms_norm``, ``gelu`` (erf and tanh forms into ONNX Gelu), ``norm_affine``.
3. ``conv_bias`` / ``matmul_bias`` — a per-channel constant added after a Conv becomes its
   bias; a bias added after a MatMul makes a FusedMatMul.
4. ``epilogue`` — elementwise ops after a Conv/MatMul/Gemm (activation, residual add) join it
   as its epilogue: FusedConv / FusedMatMul.
5. ``elementwise_chain`` — runs of elementwise ops become one FusedElementwise.

A target lists the fusions its engine can run (``Target.fusions``); ``fuse=False`` in the
options turns the pass off (the unfused graph is the reference in tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nerve.compiler.bake import step
from nerve.compiler.context import PassContext
from nerve.compiler.passes import patterns
from nerve.compiler.passes.rewrite import Rewriter, Rule, apply_rules, prune
from nerve.ir import NERVE_DOMAIN, DType, Graph, Node, TensorType
from nerve.ir.fused_ops import CONV_ATTRS, Program

UNARY = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sign", "Floor", "Ceil", "Round", "Erf",
    "Gelu", "Softplus", "Softsign", "Mish", "Sin", "Cos", "Not",
})
BINARY = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor",
})
ELEMENTWISE = UNARY | BINARY | {"Where", "Clip", "Cast"}
# Ops a Conv/MatMul epilogue may hold: they keep the main result's dtype.
EPILOGUE = (UNARY - {"Not"}) | {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Clip"}
MAX_PROGRAM = 64


def fuse(graph: Graph, ctx: PassContext) -> Graph:
    """Apply the fusion groups in order (see the module docstring)."""
    if not ctx.option("fuse"):
        return graph
    groups: list[list[tuple[str, Rule]]] = [
        [("bn_fold", _bn_fold)],
        patterns.rules(),
        [("conv_bias", _conv_bias), ("matmul_bias", _matmul_bias)],
        [("epilogue", _epilogue)],
        [("elementwise_chain", _elementwise_chain)],
    ]
    for group in groups:
        allowed = [(name, _guard(rule)) for name, rule in group
                   if ctx.target.allows_fusion(name)]
        if allowed:
            apply_rules(graph, allowed, ctx.record.rewrites, ctx=ctx)
    prune(graph, ctx.book.recipes)
    return graph


def _guard(rule: Rule) -> Rule:
    """Skip anchors a fix pinned to an engine."""

    def guarded(rw: Rewriter, node: Node) -> bool:
        return not rw.ctx.placed(node) and rule(rw, node)

    return guarded


def _ctx(rw: Rewriter) -> PassContext:
    return rw.ctx


def _is(node: Node | None, *ops: str) -> bool:
    return node is not None and node.domain == "" and node.op_type in ops


def _free(rw: Rewriter, node: Node | None) -> bool:
    """A node a rule may absorb: present and not pinned by a fix."""
    return node is not None and not _ctx(rw).placed(node)


# ---- 1. BatchNormalization into Conv ------------------------------------------------------


def _bn_fold(rw: Rewriter, bn: Node) -> bool:
    if not _is(bn, "BatchNormalization") or bn.attr("training_mode", 0):
        return False
    if any(bn.outputs[1:]):
        return False
    conv = rw.producer(bn.inputs[0])
    if not _is(conv, "Conv") or not _free(rw, conv) or not rw.private(bn.inputs[0], bn):
        return False
    assert conv is not None
    params = bn.inputs[1:5]
    if not rw.is_static(conv.inputs[1]) or not all(rw.is_static(p) for p in params):
        return False
    has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2])
    if has_bias and not rw.is_static(conv.inputs[2]):
        return False
    scale, shift, mean, var = params
    eps = float(bn.attr("epsilon", 1e-5))
    book = _ctx(rw).book
    w_type = rw.type(conv.inputs[1])
    channels = w_type.shape[0]
    weight = book.derive(
        [conv.inputs[1], scale, var], step("bn_fold_weight", epsilon=eps), w_type,
        base=conv.inputs[1],
    )
    bias_type = TensorType(rw.type(shift).dtype, (channels,))
    bias = book.derive(
        ([conv.inputs[2]] if has_bias else []) + [scale, shift, mean, var],
        step("bn_fold_bias", epsilon=eps, has_bias=has_bias), bias_type, base=f"{bn.name}.bias",
    )
    if _ctx(rw).target.layout.conv_bias:
        new = [rw.node("Conv", [conv.inputs[0], weight, bias], bn.outputs[:1], conv.attrs,
                       name=conv.name)]
    else:
        rank = rw.type(bn.outputs[0]).rank
        shape = (channels,) + (1,) * (rank - 2)
        bias_nd = book.derive([bias], step("reshape", shape=shape),
                              TensorType(bias_type.dtype, shape))
        conv_out = rw.fresh(f"{conv.outputs[0]}_unbiased", rw.type(bn.outputs[0]))
        new = [
            rw.node("Conv", [conv.inputs[0], weight], [conv_out], conv.attrs, name=conv.name),
            rw.node("Add", [conv_out, bias_nd], bn.outputs[:1], name=f"{bn.name}_bias"),
        ]
    rw.replace([conv, bn], new)
    return True


# ---- 3. biases ------------------------------------------------------------------------------


def _split_add(rw: Rewriter, add: Node, *producers: str) -> tuple[Node, str] | None:
    """(producer, other input) when one input of ``add`` comes privately from ``producers``."""
    if not _is(add, "Add"):
        return None
    for i in (0, 1):
        p = rw.producer(add.inputs[i])
        if _is(p, *producers) and _free(rw, p) and rw.private(add.inputs[i], add):
            assert p is not None
            if rw.type(add.outputs[0]) == rw.type(add.inputs[i]):
                return p, add.inputs[1 - i]
    return None


def _conv_bias(rw: Rewriter, add: Node) -> bool:
    if not _ctx(rw).target.layout.conv_bias:
        return False
    found = _split_add(rw, add, "Conv")
    if found is None:
        return False
    conv, b = found
    out = rw.type(add.outputs[0])
    channels = out.shape[1] if out.rank > 1 else -1
    b_type = rw.type(b)
    padded = (1,) * (out.rank - b_type.rank) + b_type.shape
    per_channel = len(padded) == out.rank and padded[1] == channels and all(
        d == 1 for i, d in enumerate(padded) if i != 1
    )
    if not rw.is_static(b) or not per_channel or b_type.dtype != out.dtype:
        return False
    book = _ctx(rw).book
    bias_type = TensorType(out.dtype, (channels,))
    has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2])
    if has_bias:
        if not rw.is_static(conv.inputs[2]):
            return False
        bias = book.derive([conv.inputs[2], b], step("add"), bias_type, base=conv.inputs[2])
    elif b_type.shape == (channels,):
        bias = b
    else:
        bias = book.derive([b], step("reshape", shape=(channels,)), bias_type)
    node = rw.node("Conv", [conv.inputs[0], conv.inputs[1], bias], add.outputs, conv.attrs,
                   name=conv.name)
    rw.replace([conv, add], [node])
    return True


def _matmul_bias(rw: Rewriter, add: Node) -> bool:
    found = _split_add(rw, add, "MatMul")
    if found is None:
        return False
    mm, b = found
    out = rw.type(add.outputs[0])
    b_type = rw.type(b)
    row = b_type.rank >= 1 and b_type.shape[-1] == out.shape[-1] and all(
        d == 1 for d in b_type.shape[:-1]
    )
    if not rw.is_static(b) or not row or b_type.dtype != out.dtype:
        return False
    node = rw.node("FusedMatMul", [mm.inputs[0], mm.inputs[1], b], add.outputs,
                   {"gemm": 0, "epilogue": ()}, name=mm.name, domain=NERVE_DOMAIN)
    rw.replace([mm, add], [node])
    return True


# ---- programs: elementwise steps over registers -------------------------------------------

MAIN = "\0main"


class ProgramBuilder:
    """Elementwise steps over named values, encoded into registers at the end.

    ``inputs`` name the first registers; a step's operands name inputs or earlier results
    (``self.result``). :meth:`build` returns (input names, register program).
    """

    def __init__(self, inputs: Sequence[str] = (), program: Program = ()) -> None:
        self.inputs: list[str] = list(inputs)
        self.steps: list[tuple[str, list[str], tuple]] = []
        names = list(self.inputs)
        for op, regs, attrs in program:
            self.steps.append((op, [names[r] for r in regs], attrs))
            names.append(self._token(len(self.steps) - 1))

    @staticmethod
    def _token(k: int) -> str:
        return f"\0step{k}"

    @property
    def result(self) -> str:
        return self._token(len(self.steps) - 1) if self.steps else self.inputs[0]

    def add(self, op: str, operands: Sequence[str], attrs: dict) -> str:
        for name in operands:
            if not name.startswith("\0step") and name not in self.inputs:
                self.inputs.append(name)
        self.steps.append((op, list(operands), _attr_tuple(attrs)))
        return self.result

    def inline(self, other: ProgramBuilder, rename: dict[str, str]) -> str:
        """Append ``other``'s steps, reading ``rename[x]`` wherever ``other`` reads ``x``."""
        local: dict[str, str] = dict(rename)
        for k, (op, operands, attrs) in enumerate(other.steps):
            ops = [local.get(o, o) for o in operands]
            local[other._token(k)] = self.add(op, ops, dict(attrs))
        return self.result

    def build(self) -> tuple[list[str], Program]:
        index = {name: i for i, name in enumerate(self.inputs)}
        program = []
        for k, (op, operands, attrs) in enumerate(self.steps):
            program.append((op, tuple(index[o] for o in operands), attrs))
            index[self._token(k)] = len(self.inputs) + k
        return list(self.inputs), tuple(program)


def _attr_tuple(attrs: dict) -> tuple:
    def freeze(v: object) -> object:
        if isinstance(v, list):
            return tuple(v)
        if isinstance(v, np.ndarray):
            return tuple(v.tolist())
        if isinstance(v, bytes):
            return v.decode()
        return v

    return tuple(sorted((k, freeze(v)) for k, v in attrs.items()))


def _as_builder(node: Node) -> ProgramBuilder:
    """An elementwise node (ONNX or FusedElementwise) as a program over its inputs."""
    if node.domain == NERVE_DOMAIN:
        return ProgramBuilder(node.inputs, node.attr("program", ()))
    b = ProgramBuilder()
    b.add(node.op_type, node.inputs, node.attrs)
    return b


def _elementwise(node: Node | None) -> bool:
    if node is None:
        return False
    if node.domain == NERVE_DOMAIN:
        return node.op_type == "FusedElementwise"
    return node.domain == "" and node.op_type in ELEMENTWISE and len(node.outputs) == 1 and all(
        node.inputs
    )


def _no_bfloat16(rw: Rewriter, *nodes: Node) -> bool:
    # bfloat16 travels as uint16 bits: the host's fused programs only see numpy dtypes.
    return all(
        rw.type(n).dtype is not DType.BFLOAT16
        for node in nodes for n in (*node.inputs, *node.outputs) if n
    )


# ---- 4. epilogues -----------------------------------------------------------------------


def _epilogue(rw: Rewriter, op: Node) -> bool:
    if op.domain or op.op_type not in EPILOGUE or len(op.outputs) != 1 or not all(op.inputs):
        return False
    for name in dict.fromkeys(op.inputs):
        main = rw.producer(name)
        if not _mainop(main) or not _free(rw, main) or not rw.private(name, op):
            continue
        assert main is not None
        if rw.type(op.outputs[0]) != rw.type(name) or not _no_bfloat16(rw, op, main):
            continue
        fused = _as_fused(main)
        builder = ProgramBuilder([MAIN, *fused.inputs[3:]], fused.attr("epilogue", ()))
        operands = [builder.result if other == name else other for other in op.inputs]
        builder.add(op.op_type, operands, op.attrs)
        extra, program = builder.build()
        if len(program) > MAX_PROGRAM:
            continue
        attrs = {**fused.attrs, "epilogue": program}
        node = rw.node(fused.op_type, [*fused.inputs[:3], *extra[1:]], op.outputs, attrs,
                       name=main.name, domain=NERVE_DOMAIN)
        rw.replace([main, op], [node])
        return True
    return False


def _mainop(node: Node | None) -> bool:
    if node is None:
        return False
    if node.domain == NERVE_DOMAIN:
        return node.op_type in ("FusedConv", "FusedMatMul")
    if node.op_type == "Gemm":
        return not node.attr("transA", 0)
    return node.domain == "" and node.op_type in ("Conv", "MatMul")


def _as_fused(node: Node) -> Node:
    """``node`` as a FusedConv / FusedMatMul with an empty epilogue (inputs padded to 3)."""
    if node.domain == NERVE_DOMAIN:
        return node
    inputs = [*node.inputs, "", ""][:3]
    if node.op_type == "Conv":
        attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
        return Node("FusedConv", inputs, node.outputs, {**attrs, "epilogue": ()}, node.name,
                    NERVE_DOMAIN)
    if node.op_type == "Gemm":
        attrs = {"gemm": 1, "transB": int(node.attr("transB", 0)),
                 "alpha": float(node.attr("alpha", 1.0)), "beta": float(node.attr("beta", 1.0))}
        return Node("FusedMatMul", inputs, node.outputs, {**attrs, "epilogue": ()}, node.name,
                    NERVE_DOMAIN)
    return Node("FusedMatMul", inputs, node.outputs, {"gemm": 0, "epilogue": ()}, node.name,
                NERVE_DOMAIN)


# ---- 5. elementwise chains ------------------------------------------------------------------


def _elementwise_chain(rw: Rewriter, node: Node) -> bool:
    if not _elementwise(node):
        return False
    for name in dict.fromkeys(node.inputs):
        prev = rw.producer(name)
        if not _elementwise(prev) or not _free(rw, prev) or not rw.private(name, node):
            continue
        assert prev is not None
        if not _no_bfloat16(rw, prev, node):
            continue
        builder = _as_builder(prev)
        builder.inline(_as_builder(node), {name: builder.result})
        inputs, program = builder.build()
        if len(program) > MAX_PROGRAM:
            continue
        fused = rw.node("FusedElementwise", inputs, node.outputs, {"program": program},
                        name=prev.name, domain=NERVE_DOMAIN)
        rw.replace([prev, node], [fused])
        return True
    return False


__all__ = ["ELEMENTWISE", "EPILOGUE", "ProgramBuilder", "fuse"]

"""Pass 4, layout: a layout for every tensor, transposes removed, weights pre-packed.

* ``transpose_merge`` — a Transpose of a Transpose is one Transpose (and none when the two
  cancel: ``transpose_cancel``);
* ``weight_transpose`` — a Transpose of a weight becomes a weight slot stored transposed (a
  ``transpose`` bake-recipe step), so no run transposes it again;
* ``gemm_pretranspose`` — ``Gemm(transB=1)`` over a weight reads a pre-transposed slot with
  ``transB=0`` (the weight packed in the (K, N) order the GEMM kernels stream);
* every tensor gets a layout name in ``PassContext.layouts``: feature maps the target's
  activation layout (``NCHW``; ``1C1S`` — the ANE's ``[1, C, 1, S]``), conv weights ``OIHW``,
  GEMM weights ``KN``, everything else ``row-major``. On a ``1C1S`` target each graph input or
  output not already shaped ``[1, C, 1, S]`` needs a transpose at the boundary, which the
  report notes.
"""

from __future__ import annotations

from nerve.compiler.bake import step
from nerve.compiler.context import PassContext
from nerve.compiler.passes.normalize import _same_type_noop
from nerve.compiler.passes.rewrite import Rewriter, Rule, apply_rules, prune
from nerve.ir import NERVE_DOMAIN, Graph, Node, TensorType


def layout(graph: Graph, ctx: PassContext) -> Graph:
    """Simplify transposes, pre-transpose weights, and name every tensor's layout."""
    rules: list[tuple[str, Rule]] = [
        ("transpose_merge", _transpose_merge),
        ("transpose_cancel", _same_type_noop),
    ]
    if ctx.target.layout.pack_transposed_weights:
        rules += [("weight_transpose", _weight_transpose), ("gemm_pretranspose", _gemm_pretranspose)]
    apply_rules(graph, rules, ctx.record.rewrites, ctx=ctx)
    prune(graph, ctx.book.recipes)
    ctx.layouts = assign_layouts(graph, ctx.target.layout.activation)
    if ctx.target.layout.activation == "1C1S":
        boundary = [v.name for v in (*graph.inputs, *graph.outputs) if not _is_1c1s(v.type)]
        if boundary:
            ctx.notes.append(
                f"{len(boundary)} graph inputs/outputs are not [1, C, 1, S] and need a "
                f"host-side layout change per call: {', '.join(boundary[:5])}"
            )
    return graph


def _perm(node: Node, rank: int) -> list[int]:
    perm = node.attr("perm")
    return list(perm) if perm is not None else list(range(rank))[::-1]


def _transpose_merge(rw: Rewriter, node: Node) -> bool:
    if node.op_type != "Transpose" or node.domain:
        return False
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op_type != "Transpose" or inner.domain:
        return False
    if not rw.private(node.inputs[0], node) or rw.ctx.placed(inner) or rw.ctx.placed(node):
        return False
    rank = rw.type(inner.inputs[0]).rank
    first, second = _perm(inner, rank), _perm(node, rank)
    composed = [first[i] for i in second]
    merged = rw.node("Transpose", [inner.inputs[0]], node.outputs, {"perm": tuple(composed)},
                     name=inner.name)
    rw.replace([inner, node], [merged])
    return True


def _weight_transpose(rw: Rewriter, node: Node) -> bool:
    if node.op_type != "Transpose" or node.domain or not rw.is_weight(node.inputs[0]):
        return False
    out = node.outputs[0]
    if rw.is_output(out):
        return False
    perm = _perm(node, rw.type(node.inputs[0]).rank)
    slot = rw.ctx.book.derive([node.inputs[0]], step("transpose", perm=tuple(perm)), rw.type(out))
    rw.rename_uses(out, slot)
    rw.remove(node)
    return True


def _gemm_pretranspose(rw: Rewriter, node: Node) -> bool:
    gemm = node.domain == "" and node.op_type == "Gemm"
    fused = node.domain == NERVE_DOMAIN and node.op_type == "FusedMatMul" and node.attr("gemm", 0)
    if not (gemm or fused) or not node.attr("transB", 0) or not rw.is_weight(node.inputs[1]):
        return False
    b = rw.type(node.inputs[1])
    packed = TensorType(b.dtype, (b.shape[1], b.shape[0]))
    slot = rw.ctx.book.derive([node.inputs[1]], step("transpose", perm=(1, 0)), packed)
    inputs = [node.inputs[0], slot, *node.inputs[2:]]
    new = rw.node(node.op_type, inputs, node.outputs, {**node.attrs, "transB": 0},
                  name=node.name, domain=node.domain)
    rw.replace([node], [new])
    return True


def _is_1c1s(t: TensorType) -> bool:
    return t.rank == 4 and t.shape[0] == 1 and t.shape[2] == 1


_CONV = {("", "Conv"), (NERVE_DOMAIN, "FusedConv")}
_GEMM = {("", "MatMul"), ("", "Gemm"), (NERVE_DOMAIN, "FusedMatMul")}


def assign_layouts(graph: Graph, activation: str) -> dict[str, str]:
    """A layout name for every tensor of ``graph`` (see the module docstring)."""
    layouts: dict[str, str] = {}
    for node in graph.nodes:
        key = (node.domain, node.op_type)
        if key in _CONV and len(node.inputs) > 1:
            layouts[node.inputs[1]] = "OIHW"
        elif key in _GEMM and len(node.inputs) > 1 and node.inputs[1] in graph.params:
            layouts[node.inputs[1]] = "NK" if node.attr("transB", 0) else "KN"
    for name, t in graph.types.items():
        if name in layouts:
            continue
        is_weight = name in graph.params or name in graph.constants
        if not is_weight and ((activation == "1C1S" and t.rank <= 4) or t.rank == 4):
            layouts[name] = activation
        else:
            layouts[name] = "row-major"
    return layouts


__all__ = ["assign_layouts", "layout"]

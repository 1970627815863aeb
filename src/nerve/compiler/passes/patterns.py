"""Fusion patterns over several ops: attention, LayerNorm, RMSNorm, Gelu.

Each matcher anchors on the pattern's last node and walks up through producers, requiring
every value inside the pattern to be private to it (read by nothing else). They see the graph
after normalize, so a division by a constant already is a multiplication by its reciprocal.

* ``attention``: ``MatMul(Softmax(MatMul(Q, Kt) [* scale] [+ mask], axis=-1), V)``
  -> ``nerve.Attention(Q, Kt, V, mask; scale)`` (a scale held in a weight becomes an input).
* ``layer_norm``: ``d = x - ReduceMean(x)``; ``d / Sqrt(ReduceMean(d^2) + eps)``
  (or ``d * Reciprocal(...)``) -> ``nerve.LayerNorm(x; axis, epsilon)``.
* ``rms_norm``: ``x / Sqrt(ReduceMean(x^2) + eps)``, ``x * Reciprocal(Sqrt(...))`` or
  ``x * Pow(..., -0.5)`` -> ``nerve.RMSNorm(x; axis, epsilon)``.
* ``norm_affine``: a following ``* gamma`` / ``+ beta`` joins the norm as scale / bias.
* ``gelu``: ``0.5 * x * (1 + Erf(x * 0.7071))`` -> ``Gelu(x)`` and
  ``0.5 * x * (1 + Tanh(0.7979 * (x + 0.044715 * x^3)))`` -> ``Gelu(x, approximate="tanh")``.
"""

from __future__ import annotations

import math

from nerve.compiler.passes.rewrite import Rewriter, Rule
from nerve.ir import NERVE_DOMAIN, Node


def rules() -> list[tuple[str, Rule]]:
    return [
        ("attention", _attention),
        ("layer_norm", _layer_norm),
        ("rms_norm", _rms_norm),
        ("gelu", _gelu),
        ("norm_affine", _norm_affine),
    ]


def _op(rw: Rewriter, name: str, *ops: str) -> Node | None:
    """The producer of ``name`` when it is one of the ONNX ``ops`` and not pinned by a fix."""
    node = rw.producer(name)
    if node is None or node.domain or node.op_type not in ops or rw.ctx.placed(node):
        return None
    return node


def _close(value: float | None, target: float, rel: float = 1e-4) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=rel)


# ---- attention ------------------------------------------------------------------------------


def _attention(rw: Rewriter, out_mm: Node) -> bool:
    if out_mm.domain or out_mm.op_type != "MatMul":
        return False
    probs, v = out_mm.inputs
    softmax = _op(rw, probs, "Softmax")
    if softmax is None or not rw.private(probs, out_mm):
        return False
    rank = rw.type(probs).rank
    if int(softmax.attr("axis", -1)) % rank != rank - 1:
        return False
    nodes, mask, scale = [softmax, out_mm], "", None
    scores = softmax.inputs[0]
    add = _op(rw, scores, "Add")
    if add is not None and rw.private(scores, softmax):
        for i in (0, 1):
            inner = rw.producer(add.inputs[i])
            if inner is not None and inner.op_type in ("Mul", "MatMul") and not inner.domain \
                    and rw.type(add.inputs[i]) == rw.type(scores):
                nodes.append(add)
                mask, scores = add.inputs[1 - i], add.inputs[i]
                break
    parent = nodes[-1]
    scale_input = ""
    mul = _op(rw, scores, "Mul")
    if mul is not None and rw.private(scores, parent):
        for i in (0, 1):
            other = mul.inputs[1 - i]
            if rw.type(other).numel != 1 or _op(rw, mul.inputs[i], "MatMul") is None:
                continue
            value = rw.scalar(other)
            if value is None and not rw.is_weight(other):
                continue
            nodes.append(mul)
            scores = mul.inputs[i]
            if value is not None:
                scale = value
            else:
                scale_input = other  # a weight: its value is data, read at run time
            break
    qk = _op(rw, scores, "MatMul")
    if qk is None or not rw.private(scores, nodes[-1]):
        return False
    attrs = {"scale": scale} if scale is not None else {}
    inputs = [qk.inputs[0], qk.inputs[1], v, mask] + ([scale_input] if scale_input else [])
    node = rw.node("Attention", inputs, out_mm.outputs, attrs, name=qk.name,
                   domain=NERVE_DOMAIN)
    rw.replace([qk, *nodes], [node])
    return True


# ---- normalisations ---------------------------------------------------------------------


def _norm_denominator(rw: Rewriter, node: Node) -> tuple[str, str, list[Node]] | None:
    """For ``num / Sqrt(v + eps)``-like ``node``: (numerator, Sqrt's input, nodes)."""
    if node.domain:
        return None
    if node.op_type == "Div":
        num, den = node.inputs
        sqrt = _op(rw, den, "Sqrt")
        if sqrt is not None and rw.private(den, node):
            return num, sqrt.inputs[0], [sqrt]
        return None
    if node.op_type != "Mul":
        return None
    for i in (0, 1):
        num, den = node.inputs[1 - i], node.inputs[i]
        if not rw.private(den, node):
            continue
        recip = _op(rw, den, "Reciprocal")
        if recip is not None:
            sqrt = _op(rw, recip.inputs[0], "Sqrt")
            if sqrt is not None and rw.private(recip.inputs[0], recip):
                return num, sqrt.inputs[0], [sqrt, recip]
        power = _op(rw, den, "Pow")
        if power is not None and _close(rw.scalar(power.inputs[1]), -0.5):
            return num, power.inputs[0], [power]
    return None


def _trailing_axis(rw: Rewriter, mean: Node) -> int | None:
    """The first axis of a keepdims ReduceMean over trailing axes, else None."""
    if not mean.attr("keepdims", 1) or len(mean.inputs) < 2:
        return None
    axes = rw.const(mean.inputs[1])
    rank = rw.type(mean.inputs[0]).rank
    if axes is None or axes.size == 0:
        return None
    got = sorted(int(a) % rank for a in axes.reshape(-1))
    if got != list(range(got[0], rank)):
        return None
    return got[0] - rank


def _mean_of_square(rw: Rewriter, var: str, eps_add: Node) -> tuple[str, int, list[Node]] | None:
    """For ``var = ReduceMean(t^2)``: (t, axis, nodes)."""
    mean = _op(rw, var, "ReduceMean")
    if mean is None or not rw.private(var, eps_add):
        return None
    axis = _trailing_axis(rw, mean)
    sq_name = mean.inputs[0]
    square = _op(rw, sq_name, "Pow", "Mul")
    if axis is None or square is None or not rw.private(sq_name, mean):
        return None
    if square.op_type == "Pow":
        if rw.scalar(square.inputs[1]) != 2.0:
            return None
        base = square.inputs[0]
    elif square.inputs[0] == square.inputs[1]:
        base = square.inputs[0]
    else:
        return None
    return base, axis, [mean, square]


def _norm_core(rw: Rewriter, node: Node) -> tuple[str, float, int, list[Node]] | None:
    """(normalised tensor, epsilon, axis, nodes) of ``t / sqrt(mean(t^2) + eps)``."""
    found = _norm_denominator(rw, node)
    if found is None:
        return None
    num, den_in, den_nodes = found
    add = _op(rw, den_in, "Add")
    if add is None or not rw.private(den_in, den_nodes[0]):
        return None
    for i in (0, 1):
        eps = rw.scalar(add.inputs[1 - i])
        sq = _mean_of_square(rw, add.inputs[i], add) if eps is not None else None
        if sq is not None and sq[0] == num:
            assert eps is not None
            return num, eps, sq[1], [*sq[2], add, *den_nodes]
    return None


def _layer_norm(rw: Rewriter, node: Node) -> bool:
    core = _norm_core(rw, node)
    if core is None:
        return False
    d, eps, axis, nodes = core
    sub = _op(rw, d, "Sub")
    if sub is None:
        return False
    x, m = sub.inputs
    mean = _op(rw, m, "ReduceMean")
    if mean is None or mean.inputs[0] != x or not rw.private(m, sub):
        return False
    if _trailing_axis(rw, mean) != axis:
        return False
    square = nodes[1]
    if not rw.private(d, square, node):
        return False
    new = rw.node("LayerNorm", [x, "", ""], node.outputs, {"axis": axis, "epsilon": eps},
                  name=f"{mean.name}_layernorm", domain=NERVE_DOMAIN)
    rw.replace([mean, sub, *nodes, node], [new])
    return True


def _rms_norm(rw: Rewriter, node: Node) -> bool:
    core = _norm_core(rw, node)
    if core is None:
        return False
    x, eps, axis, nodes = core
    new = rw.node("RMSNorm", [x, ""], node.outputs, {"axis": axis, "epsilon": eps},
                  name=f"{nodes[0].name}_rmsnorm", domain=NERVE_DOMAIN)
    rw.replace([*nodes, node], [new])
    return True


def _norm_affine(rw: Rewriter, node: Node) -> bool:
    if node.domain or node.op_type not in ("Mul", "Add"):
        return False
    for i in (0, 1):
        norm = rw.producer(node.inputs[i])
        other = node.inputs[1 - i]
        if norm is None or norm.domain != NERVE_DOMAIN or rw.ctx.placed(norm):
            continue
        if norm.op_type not in ("LayerNorm", "RMSNorm") or not rw.private(node.inputs[i], node):
            continue
        if not rw.is_static(other) or rw.type(node.outputs[0]) != rw.type(node.inputs[i]):
            continue
        inputs = [*norm.inputs, "", ""][:3 if norm.op_type == "LayerNorm" else 2]
        if node.op_type == "Mul" and not inputs[1] and (len(inputs) < 3 or not inputs[2]):
            inputs[1] = other
        elif node.op_type == "Add" and norm.op_type == "LayerNorm" and not inputs[2]:
            inputs[2] = other
        else:
            continue
        new = rw.node(norm.op_type, inputs, node.outputs, norm.attrs, name=norm.name,
                      domain=NERVE_DOMAIN)
        rw.replace([norm, node], [new])
        return True
    return False


# ---- Gelu -------------------------------------------------------------------------------------


def _product(rw: Rewriter, node: Node) -> tuple[list[str], list[Node]]:
    """The factors of the tree of Muls rooted at ``node`` (inner Muls must be private)."""
    leaves: list[str] = []
    nodes = [node]
    stack = [(name, node) for name in node.inputs]
    while stack:
        name, reader = stack.pop()
        inner = _op(rw, name, "Mul")
        if inner is not None and rw.private(name, reader):
            nodes.append(inner)
            stack.extend((n, inner) for n in inner.inputs)
        else:
            leaves.append(name)
    return leaves, nodes


def _one_plus(rw: Rewriter, name: str, reader: Node, op: str) -> tuple[Node, Node] | None:
    """For ``name = 1 + op(u)``: (the Add, the op node)."""
    add = _op(rw, name, "Add")
    if add is None or not rw.private(name, reader):
        return None
    for i in (0, 1):
        if rw.scalar(add.inputs[1 - i]) == 1.0:
            inner = _op(rw, add.inputs[i], op)
            if inner is not None and rw.private(add.inputs[i], add):
                return add, inner
    return None


def _take(leaves: list[str], rw: Rewriter, value: float) -> bool:
    """Remove the constant factor ``value`` from ``leaves``; whether it was there."""
    for leaf in leaves:
        if _close(rw.scalar(leaf), value):
            leaves.remove(leaf)
            return True
    return False


def _gelu(rw: Rewriter, node: Node) -> bool:
    if node.domain or node.op_type != "Mul":
        return False
    leaves, muls = _product(rw, node)
    if len(leaves) != 3 or not _take(leaves, rw, 0.5):
        return False
    for t, x in (leaves, leaves[::-1]):
        reader = next(m for m in muls if t in m.inputs)
        for op, inner_match in (("Erf", _erf_arg), ("Tanh", _tanh_arg)):
            found = _one_plus(rw, t, reader, op)
            if found is None:
                continue
            add, fn = found
            inner = inner_match(rw, fn, x)
            if inner is None:
                continue
            approximate = "none" if op == "Erf" else "tanh"
            new = rw.node("Gelu", [x], node.outputs, {"approximate": approximate},
                          name=f"{fn.name}_gelu")
            rw.replace([*muls, add, fn, *inner], [new])
            return True
    return False


def _erf_arg(rw: Rewriter, erf: Node, x: str) -> list[Node] | None:
    arg = erf.inputs[0]
    mul = _op(rw, arg, "Mul")
    if mul is None or not rw.private(arg, erf):
        return None
    leaves, nodes = _product(rw, mul)
    if len(leaves) != 2 or leaves.count(x) != 1:
        return None
    leaves.remove(x)
    return nodes if _close(rw.scalar(leaves[0]), 1 / math.sqrt(2)) else None


def _tanh_arg(rw: Rewriter, tanh: Node, x: str) -> list[Node] | None:
    arg = tanh.inputs[0]
    mul = _op(rw, arg, "Mul")
    if mul is None or not rw.private(arg, tanh):
        return None
    leaves, nodes = _product(rw, mul)
    if len(leaves) != 2 or not _take(leaves, rw, math.sqrt(2 / math.pi)):
        return None
    inner = _op(rw, leaves[0], "Add")
    if inner is None or x not in inner.inputs or not rw.private(leaves[0], *nodes):
        return None
    cube_term = inner.inputs[1] if inner.inputs[0] == x else inner.inputs[0]
    term = _op(rw, cube_term, "Mul")
    if term is None or not rw.private(cube_term, inner):
        return None
    factors, term_nodes = _product(rw, term)
    if not _take(factors, rw, 0.044715):
        return None
    extra: list[Node] = []
    if len(factors) == 1:
        power = _op(rw, factors[0], "Pow")
        if power is None or power.inputs[0] != x or rw.scalar(power.inputs[1]) != 3.0:
            return None
        if not rw.private(factors[0], *term_nodes):
            return None
        extra = [power]
    elif factors != [x, x, x]:
        return None
    return [*nodes, inner, *term_nodes, *extra]


__all__ = ["rules"]

"""Elementwise ops as C expressions, and fused chains of them as one loop.

Each elementwise op is a small emitter: operand expressions in, one C expression out. A
*chain* is a run of such ops where each result feeds only the next op; the generator turns it
into one loop over the output (or into a GEMM/convolution *epilogue* that runs on each output
block while it is still in cache), so intermediate tensors are never written to memory.

>>> from nerve.ir import DType, Node
>>> expression(Node("LeakyRelu", ["x"], ["y"], {"alpha": 0.1}), ["v0"], [None])
'(v0 < 0.0f ? 0.10000000149011612f * v0 : v0)'
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nerve.ir import DType, Node

Emit = Callable[[Node, list[str], list["float | None"]], str]


def lit(value: float) -> str:
    """A float32 C literal that round-trips exactly."""
    v = float(np.float32(value))
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f"


def _attr(node: Node, name: str, default: float) -> str:
    return lit(float(node.attr(name, default)))


def _pow(node: Node, a: list[str], c: list[float | None]) -> str:
    e = c[1]
    special = {1.0: a[0], 2.0: f"({a[0]} * {a[0]})", 3.0: f"({a[0]} * {a[0]} * {a[0]})",
               0.5: f"sqrtf({a[0]})", -1.0: f"(1.0f / {a[0]})"}  # fmt: skip
    if e is not None and e in special:
        return special[e]
    return f"powf({a[0]}, {a[1]})"


def _clip(node: Node, a: list[str], c: list[float | None]) -> str:
    expr = a[0]
    if len(a) > 1 and a[1]:
        expr = f"nk_maxf({expr}, {a[1]})"
    if len(a) > 2 and a[2]:
        expr = f"nk_minf({expr}, {a[2]})"
    return expr


def _gelu(node: Node, a: list[str], c: list[float | None]) -> str:
    x = a[0]
    if node.attr("approximate", "none") == "tanh":
        inner = f"0.7978845608028654f * ({x} + 0.044715f * {x} * {x} * {x})"
        return f"(0.5f * {x} * (1.0f + nk_tanhf({inner})))"
    return f"(0.5f * {x} * (1.0f + nk_erff({x} * 0.70710678118654752f)))"


def _hard_sigmoid(x: str, alpha: str, beta: str) -> str:
    return f"nk_maxf(nk_minf({alpha} * {x} + {beta}, 1.0f), 0.0f)"


def _variadic(fn: str) -> Emit:
    def emit(node: Node, a: list[str], c: list[float | None]) -> str:
        expr = a[0]
        for x in a[1:]:
            expr = f"{fn}({expr}, {x})"
        return expr

    return emit


def _batchnorm(node: Node, a: list[str], c: list[float | None]) -> str:
    x, scale, bias, mean, var = a
    eps = _attr(node, "epsilon", 1e-5)
    return f"(({x} - {mean}) * ({scale} / sqrtf({var} + {eps})) + {bias})"


def _softplus(x: str) -> str:
    return f"({x} > 20.0f ? {x} : log1pf(nk_expf({x})))"


EMITTERS: dict[str, Emit] = {
    "Add": lambda n, a, c: f"({a[0]} + {a[1]})",
    "Sub": lambda n, a, c: f"({a[0]} - {a[1]})",
    "Mul": lambda n, a, c: f"({a[0]} * {a[1]})",
    "Div": lambda n, a, c: f"({a[0]} / {a[1]})",
    "Pow": _pow,
    "PRelu": lambda n, a, c: f"({a[0]} < 0.0f ? {a[1]} * {a[0]} : {a[0]})",
    "Max": _variadic("nk_maxf"),
    "Min": _variadic("nk_minf"),
    "Sum": lambda n, a, c: "(" + " + ".join(a) + ")",
    "Mean": lambda n, a, c: "((" + " + ".join(a) + f") / {lit(len(a))})",
    "Clip": _clip,
    "Where": lambda n, a, c: f"({a[0]} ? {a[1]} : {a[2]})",
    "Cast": lambda n, a, c: f"((float)({a[0]}))",
    "BatchNormalization": _batchnorm,
    "Relu": lambda n, a, c: f"({a[0]} < 0.0f ? 0.0f : {a[0]})",
    "Sigmoid": lambda n, a, c: f"nk_sigmoidf({a[0]})",
    "Tanh": lambda n, a, c: f"nk_tanhf({a[0]})",
    "Exp": lambda n, a, c: f"nk_expf({a[0]})",
    "Log": lambda n, a, c: f"logf({a[0]})",
    "Sqrt": lambda n, a, c: f"sqrtf({a[0]})",
    "Neg": lambda n, a, c: f"(-{a[0]})",
    "Abs": lambda n, a, c: f"fabsf({a[0]})",
    "Reciprocal": lambda n, a, c: f"(1.0f / {a[0]})",
    "Erf": lambda n, a, c: f"nk_erff({a[0]})",
    "Floor": lambda n, a, c: f"floorf({a[0]})",
    "Ceil": lambda n, a, c: f"ceilf({a[0]})",
    "Round": lambda n, a, c: f"rintf({a[0]})",
    "Sign": lambda n, a, c: f"({a[0]} > 0.0f ? 1.0f : ({a[0]} < 0.0f ? -1.0f : {a[0]}))",
    "Sin": lambda n, a, c: f"sinf({a[0]})",
    "Cos": lambda n, a, c: f"cosf({a[0]})",
    "Softplus": lambda n, a, c: _softplus(a[0]),
    "Softsign": lambda n, a, c: f"({a[0]} / (1.0f + fabsf({a[0]})))",
    "LeakyRelu": lambda n, a, c: f"({a[0]} < 0.0f ? {_attr(n, 'alpha', 0.01)} * {a[0]} : {a[0]})",
    "Elu": lambda n, a, c: f"({a[0]} < 0.0f ? {_attr(n, 'alpha', 1.0)} * expm1f({a[0]}) : {a[0]})",
    "Celu": lambda n, a, c: (
        f"({a[0]} < 0.0f ? {_attr(n, 'alpha', 1.0)} * expm1f({a[0]} / {_attr(n, 'alpha', 1.0)})"
        f" : {a[0]})"
    ),
    "Selu": lambda n, a, c: (
        f"({a[0]} > 0.0f ? {_attr(n, 'gamma', 1.0507)} * {a[0]} : "
        f"{_attr(n, 'gamma', 1.0507)} * {_attr(n, 'alpha', 1.67326)} * expm1f({a[0]}))"
    ),
    "HardSigmoid": lambda n, a, c: _hard_sigmoid(
        a[0], _attr(n, "alpha", 0.2), _attr(n, "beta", 0.5)
    ),
    "HardSwish": lambda n, a, c: f"({a[0]} * {_hard_sigmoid(a[0], lit(1 / 6), '0.5f')})",
    "ThresholdedRelu": lambda n, a, c: f"({a[0]} > {_attr(n, 'alpha', 1.0)} ? {a[0]} : 0.0f)",
    "Mish": lambda n, a, c: f"({a[0]} * nk_tanhf({_softplus(a[0])}))",
    "Gelu": _gelu,
    "Swish": lambda n, a, c: f"({a[0]} * nk_sigmoidf({_attr(n, 'alpha', 1.0)} * {a[0]}))",
    "Shrink": lambda n, a, c: (
        f"({a[0]} < -{_attr(n, 'lambd', 0.5)} ? {a[0]} + {_attr(n, 'bias', 0.0)} : "
        f"({a[0]} > {_attr(n, 'lambd', 0.5)} ? {a[0]} - {_attr(n, 'bias', 0.0)} : 0.0f))"
    ),
}


def expression(node: Node, args: list[str], consts: list[float | None]) -> str:
    """The C expression of ``node`` applied to operand expressions ``args``."""
    return EMITTERS[node.op_type](node, args, consts)


# ---- chains ---------------------------------------------------------------------------------


# C element types of the tensors a chain may read (bool is one byte in numpy).
CTYPES = {
    DType.FLOAT32: "float", DType.FLOAT64: "double", DType.INT8: "int8_t",
    DType.INT16: "int16_t", DType.INT32: "int32_t", DType.INT64: "int64_t",
    DType.UINT8: "uint8_t", DType.UINT16: "uint16_t", DType.UINT32: "uint32_t",
    DType.UINT64: "uint64_t", DType.BOOL: "uint8_t",
}  # fmt: skip


@dataclass(frozen=True)
class Operand:
    """A tensor a chain reads, broadcast to the chain's shape through ``strides``.

    Floats are read as they are, bools as 0/1 (for Where), other numbers converted to float
    (for Cast)."""

    name: str
    ctype: str
    strides: tuple[int, ...]  # per output dimension, in elements (0 = broadcast)
    is_bool: bool = False


# An argument of a chain op: ("operand", i), ("value", j) = result of op j, ("acc", 0) = the
# GEMM result an epilogue starts from, ("literal", x), or ("none", 0) for an omitted input.
Arg = tuple[str, "int | float"]


@dataclass
class ChainOp:
    node: Node
    args: list[Arg]


@dataclass
class Chain:
    """Fused elementwise ops producing ``out`` of ``shape``."""

    shape: tuple[int, ...]
    out: str = ""
    ops: list[ChainOp] = field(default_factory=list)
    operands: list[Operand] = field(default_factory=list)

    def operand(self, name: str, dtype: DType, strides: tuple[int, ...]) -> int:
        new = Operand(name, CTYPES[dtype], strides, dtype is DType.BOOL)
        for i, op in enumerate(self.operands):
            if op == new:
                return i
        self.operands.append(new)
        return len(self.operands) - 1


def _load(chain: Chain, i: int, expr: str) -> str:
    """The statement reading operand ``i`` into ``x<i>`` (bools as 0/1, numbers as float)."""
    operand = chain.operands[i]
    if operand.is_bool:
        return f"const int x{i} = {expr} != 0;"
    if operand.ctype == "float":
        return f"const float x{i} = {expr};"
    return f"const float x{i} = (float){expr};"



def _inner_loop(chain: Chain, hoisted: frozenset[int], index: str, out: str) -> list[str]:
    """The innermost loop of a chain kernel over ``index`` (``{index}0 .. {index}1``): loads of
    operands that do not move along it hoisted out, the chain's body, the store to ``py``;
    then the closing braces of the loop, the outer loop and the function."""
    lines = [f"        {_load(chain, i, f'p{i}[0]')}" for i in sorted(hoisted)]
    lines.append(f"        for (int64_t {index} = {index}0; {index} < {index}1; {index}++) {{")
    body = _body(chain, lambda i: f"p{i}[{index}]", out, hoisted)
    lines.extend("            " + s for s in body)
    lines.append(f"            py[{index}] = v{len(chain.ops) - 1};")
    lines += ["        }", "    }", "}"]
    return lines

def _body(
    chain: Chain, load: Callable[[int], str], acc: str, hoisted: frozenset[int] = frozenset()
) -> list[str]:
    """Statements computing the chain for one element; the result is in ``v<last>``.

    Operands in ``hoisted`` (broadcast along the loop) were read into ``x<i>`` before it:
    loop-invariant loads inside the loop would stop gcc from vectorising it.
    """
    lines: list[str] = []
    loaded: dict[int, str] = {i: f"x{i}" for i in hoisted}
    for j, op in enumerate(chain.ops):
        args: list[str] = []
        consts: list[float | None] = []
        for kind, value in op.args:
            if kind == "operand":
                i = int(value)
                if i not in loaded:
                    lines.append(_load(chain, i, load(i)))
                    loaded[i] = f"x{i}"
                args.append(loaded[i])
                consts.append(None)
            elif kind == "value":
                args.append(f"v{int(value)}")
                consts.append(None)
            elif kind == "acc":
                args.append(acc)
                consts.append(None)
            elif kind == "literal":
                args.append(lit(float(value)))
                consts.append(float(np.float32(value)))
            else:
                args.append("")
                consts.append(None)
        lines.append(f"const float v{j} = {expression(op.node, args, consts)};")
    return lines


def loop_function(chain: Chain, name: str) -> str:
    """A C function ``name(nt, operands..., y)`` computing the chain over its whole shape."""
    from nerve.engines.native.shapes import collapse, contiguous_strides

    out_strides = contiguous_strides(chain.shape)
    dims, sets = collapse(chain.shape, [out_strides, *(o.strides for o in chain.operands)])
    if not dims:
        dims, sets = (1,), [(1,) for _ in sets]
    inner = dims[-1]
    row_dims = dims[:-1]
    rows = math.prod(row_dims)
    total = rows * inner
    block = inner if rows >= 16 or inner <= 8192 else 4096
    nblk = -(-inner // block)
    operands = [f"const {op.ctype} *restrict a{i}" for i, op in enumerate(chain.operands)]
    plain = [f"const {op.ctype} *a{i}" for i, op in enumerate(chain.operands)]
    names = [f"a{i}" for i in range(len(chain.operands))]
    units = rows * nblk
    grain = max(1, 16384 // max(block, 1))
    lines = [
        f"static void {name}_rows(int64_t u0, int64_t u1, {', '.join([*operands, 'float *restrict y'])}) {{"
    ]
    lines.append("    for (int64_t u = u0; u < u1; u++) {")
    lines.append(f"        const int64_t r = u / {nblk}LL, j0 = (u % {nblk}LL) * {block}LL;")
    lines.append(
        f"        const int64_t j1 = j0 + {block}LL < {inner}LL ? j0 + {block}LL : {inner}LL;"
    )
    # Row base offsets: decompose r over the row dimensions once per row.
    offsets = _row_offsets(row_dims, sets)
    lines.extend("        " + s for s in offsets.prelude)
    for i in range(len(chain.operands)):
        lines.append(
            f"        const {chain.operands[i].ctype} *restrict p{i} = a{i} + {offsets.exprs[i + 1]};"
        )
    lines.append(f"        float *restrict py = y + {offsets.exprs[0]};")
    inner_strides = [s[-1] for s in sets]
    hoisted = frozenset(i for i in range(len(chain.operands)) if not inner_strides[i + 1])
    lines += _inner_loop(chain, hoisted, "j", "")
    # The parallel loop's context and task (nk_parallel_for calls the task on unit ranges).
    fields = "".join(f" {p};" for p in [*plain, "float *y"])
    lines.append(f"typedef struct {{{fields} }} {name}_ctx;")
    lines.append(f"static void {name}_task(void *c, int64_t u0, int64_t u1) {{")
    lines.append(f"    const {name}_ctx *k = (const {name}_ctx *)c;")
    args = ", ".join([*(f"k->{n}" for n in names), "k->y"])
    lines.append(f"    {name}_rows(u0, u1, {args});")
    lines.append("}")
    lines.append(f"static void {name}(int nt, {', '.join([*plain, 'float *y'])}) {{")
    lines.append(f"    {name}_ctx k = {{{', '.join([*names, 'y'])}}};")
    lines.append(
        f"    nk_parallel_for({total}LL >= 32768LL ? nt : 1, {units}LL, {grain}LL, "
        f"{name}_task, &k);"
    )
    lines.append("}")
    return "\n".join(lines)


@dataclass
class _Offsets:
    prelude: list[str]
    exprs: list[str]


def _row_offsets(row_dims: Sequence[int], sets: list[tuple[int, ...]]) -> _Offsets:
    """C expressions of each stride set's offset for row ``r`` (row-major over row_dims)."""
    prelude: list[str] = []
    if not row_dims:
        return _Offsets(prelude, ["0" for _ in sets])
    if len(row_dims) == 1:
        return _Offsets(prelude, [f"r * {s[0]}LL" if s[0] else "0" for s in sets])
    rem = "r"
    for k in range(len(row_dims) - 1, -1, -1):
        prelude.append(f"const int64_t i{k} = {rem} % {row_dims[k]}LL;")
        rem = f"({rem} / {row_dims[k]}LL)"
    exprs = []
    for s in sets:
        terms = [f"i{k} * {s[k]}LL" for k in range(len(row_dims)) if s[k]]
        exprs.append(" + ".join(terms) if terms else "0")
    return _Offsets(prelude, exprs)


def epilogue_function(
    chain: Chain, name: str, groups: tuple[list[int], list[int], list[int]]
) -> str | None:
    """An ``nk_epilogue`` applying the chain in place to blocks of a GEMM-like output.

    ``groups`` splits the output dimensions into the kernel's batch (b), row (m) and column (n)
    dimensions. Returns None when an operand cannot be addressed from (b, m, n), e.g. when it
    broadcasts differently across dimensions that the kernel merges.
    """
    shape = chain.shape
    bd, md, nd = groups
    m_size = math.prod(shape[i] for i in md)
    n_size = math.prod(shape[i] for i in nd)
    plans = []
    for op in chain.operands:
        m_stride = _group_stride(shape, op.strides, md)
        n_stride = _group_stride(shape, op.strides, nd)
        if m_stride is None or n_stride is None or n_stride not in (0, 1):
            return None
        plans.append((m_stride, n_stride))
    lines = [
        f"static void {name}(const void *const *args, int nt, int64_t b, int64_t m0, "
        "int64_t m1, int64_t n0, int64_t n1) {",
        "    (void)nt;",
        "    float *restrict y = (float *)args[0];",
    ]
    for i, op in enumerate(chain.operands):
        lines.append(f"    const {op.ctype} *restrict a{i} = (const {op.ctype} *)args[{i + 1}];")
    # Batch offsets: decompose b over the batch dimensions.
    rem = "b"
    bterms: list[list[str]] = [[] for _ in chain.operands]
    for k in reversed(bd):
        lines.append(f"    const int64_t b{k} = ({rem}) % {shape[k]}LL;")
        rem = f"({rem}) / {shape[k]}LL"
        for i, op in enumerate(chain.operands):
            if op.strides[k]:
                bterms[i].append(f"b{k} * {op.strides[k]}LL")
    for i in range(len(chain.operands)):
        lines.append(f"    const int64_t o{i} = {' + '.join(bterms[i]) or '0'};")
    lines.append("    for (int64_t m = m0; m < m1; m++) {")
    lines.append(f"        float *restrict py = y + (b * {m_size}LL + m) * {n_size}LL;")
    for i, (ms, _) in enumerate(plans):
        ctype = chain.operands[i].ctype
        lines.append(
            f"        const {ctype} *restrict p{i} = a{i} + o{i}"
            + (f" + m * {ms}LL;" if ms else ";")
        )
    hoisted = frozenset(i for i in range(len(chain.operands)) if not plans[i][1])
    lines += _inner_loop(chain, hoisted, "n", "py[n]")
    return "\n".join(lines)


def _group_stride(shape: tuple[int, ...], strides: tuple[int, ...], dims: list[int]) -> int | None:
    """The single stride that walks ``dims`` (merged row-major) for this operand, or None."""
    live = [d for d in dims if shape[d] != 1]
    if not live:
        return 0
    for a, b in itertools.pairwise(live):
        if strides[a] != strides[b] * shape[b]:
            return None
    return strides[live[-1]]

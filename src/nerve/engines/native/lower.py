"""Lower a segment's nodes to steps: fuse elementwise chains, alias views, pick kernels.

Fusion rules (all local, all safe):

* an elementwise node extends the chain whose last result it consumes when that result has no
  other reader and is not needed after the segment, the shapes agree, and every other input
  is computed before the chain runs;
* a chain may start right after a MatMul/Gemm/Conv, becoming that kernel's *epilogue*, when
  each of its operands can be addressed from the kernel's (batch, row, column) blocks;
* view ops (Reshape, Flatten, Squeeze, Unsqueeze, Identity) alias their input.
"""

from __future__ import annotations

import math
from collections import ChainMap
from collections.abc import Callable, Mapping

import numpy as np

from nerve.engines.native.buffers import root_of
from nerve.engines.native.claims import ELEMENTWISE_OPS, POOL_OPS, REDUCE_OPS, VIEW_OPS
from nerve.engines.native.elementwise import Chain, ChainOp, _group_stride
from nerve.engines.native.packing import PackSpec, conv_packed_size
from nerve.engines.native.shapes import (
    broadcast_strides,
    collapse,
    contiguous_strides,
    normalize_axis,
    reduce_layout,
    spatial2,
    window,
)
from nerve.engines.native.steps import CallStep, ChainStep, ConvStep, GemmStep, Step, _WithEpilogue
from nerve.errors import CompileError
from nerve.ir import NERVE_DOMAIN, DType, Graph, Node, TensorType
from nerve.ir.fused_ops import step_node

REDUCE_KINDS = {
    "ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3, "ReduceProd": 4,
    "ReduceSumSquare": 5, "ReduceL1": 6, "ReduceL2": 7, "ReduceLogSum": 8, "ReduceLogSumExp": 9,
}  # fmt: skip


# A chain program: registers (tensor names, or ready-made arguments) and steps over them.
Register = str | tuple[str, int | float]
Program = tuple[list[Register], list[tuple[Node, list[int | None]]]]
MAIN = "\0main"  # the register holding a GEMM-like step's own result


class Lowering:
    """The steps of one segment, built node by node."""

    def __init__(self, graph: Graph, nodes: list[Node], keep: set[str]) -> None:
        self.graph = graph
        self.keep = keep
        self.extra_types: dict[str, TensorType] = {}  # tensors the lowering itself introduces
        self.types: Mapping[str, TensorType] = ChainMap(self.extra_types, graph.types)
        self.steps: list[Step] = []
        self.alias: dict[str, str] = {}
        # Weight slots the lowering introduces in a kernel's packed layout (see packing.py).
        self.packed: dict[str, PackSpec] = {}
        self.produced_at: dict[str, int] = {}  # tensor -> index of the step computing it
        self.uses: dict[str, int] = {}
        for node in nodes:
            for name in node.inputs:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
        # Chains that may still grow, by the tensor holding their latest result.
        self.open: dict[str, _WithEpilogue | ChainStep] = {}
        for node in nodes:
            self._lower(node)

    # ---- bookkeeping ------------------------------------------------------------------------
    def add(self, step: Step) -> Step:
        self.steps.append(step)
        for name in step.writes():
            self.produced_at[name] = len(self.steps) - 1
        if isinstance(step, (_WithEpilogue, ChainStep)):
            self.open[step.chain.out] = step
        return step

    def type(self, name: str) -> TensorType:
        return self.types[name]

    def fresh(self, base: str, type_: TensorType) -> str:
        """A new tensor name for an intermediate the lowering introduces."""
        name, i = f"{base}.native", 0
        while name in self.types:
            i += 1
            name = f"{base}.native{i}"
        self.extra_types[name] = type_
        return name

    def packed_weight(self, source: str, spec: PackSpec, size: int) -> str | None:
        """The packed slot of weight ``source`` (None when it is not a weight)."""
        if source not in self.graph.params:
            return None
        name = f"{source}.packed.{spec.kind}{spec.groups}"
        if name not in self.packed:
            self.packed[name] = spec
            self.extra_types[name] = TensorType(DType.FLOAT32, (size,))
        return name

    def _ready_before(self, name: str, index: int) -> bool:
        root = root_of(self.alias, name)
        at = self.produced_at.get(root, self.produced_at.get(name))
        return at is None or at < index

    # ---- dispatch ---------------------------------------------------------------------------
    def _lower(self, node: Node) -> None:
        op = node.qualified_op
        if op in VIEW_OPS:
            self.alias[node.outputs[0]] = node.inputs[0]
            return
        if op in ELEMENTWISE_OPS or op == "nerve.FusedElementwise":
            self._elementwise(node)
            return
        builder = _BUILDERS.get(op)
        if builder is None:
            raise CompileError(f"native engine: no lowering for {op} (node {node.name!r})")
        result = builder(self, node)
        for step in result if isinstance(result, list) else [result]:
            self.add(step)

    # ---- elementwise chains -------------------------------------------------------------------
    def _program(self, node: Node) -> Program:
        """``node`` as registers (its inputs) and steps over them."""
        if node.domain == NERVE_DOMAIN:
            registers: list[Register] = [n for n in node.inputs if n]
            steps: list[tuple[Node, list[int | None]]] = [
                (step_node(s), [int(r) for r in s[1]]) for s in node.attr("program", ())
            ]
            return registers, steps
        return list(node.inputs), [(node, list(range(len(node.inputs))))]

    def _operand_shape(self, node: Node, index: int, name: str) -> tuple[int, ...]:
        shape = self.type(name).shape
        if node.op_type == "BatchNormalization" and not node.domain and index > 0:
            rank = self.type(node.inputs[0]).rank
            shape = (*shape, *([1] * (rank - 2)))
        return shape

    def _elementwise(self, node: Node) -> None:
        out = node.outputs[0]
        shape = self.type(out).shape
        for name in node.inputs:
            step = self.open.get(name)
            if step is None or self.uses.get(name, 0) != 1 or name in self.keep:
                continue
            if step.chain.shape != shape:
                continue
            index = self.steps.index(step)
            others = [n for n in node.inputs if n and n != name]
            if not all(self._ready_before(n, index) for n in others):
                continue
            if self.extend(step, node, name):
                del self.open[name]
                self.open[out] = step
                self.produced_at[out] = index
                return
        step = ChainStep([], Chain(shape, out))
        if not self.extend(step, node, None):
            raise CompileError(f"native engine: cannot fuse node {node.name!r}")
        self.add(step)

    def extend(
        self,
        step: _WithEpilogue | ChainStep,
        node: Node,
        tail: str | None,
        program: Program | None = None,
        out: str | None = None,
    ) -> bool:
        """Append ``node`` (or ``program``, computed for ``node``) to ``step``'s chain.

        ``tail`` names the input holding the chain's latest result. A register may also be a
        ready-made argument (a literal). Returns False, changing nothing, when an operand
        cannot be addressed from the step's output blocks.
        """
        chain = step.chain
        trial = Chain(chain.shape, chain.out, list(chain.ops), list(chain.operands))
        registers, steps = program if program is not None else self._program(node)
        args: list[tuple[str, int | float]] = []
        for i, name in enumerate(registers):
            if isinstance(name, tuple):
                args.append(name)
            elif not name:
                args.append(("none", 0))
            elif name == tail:
                args.append(("value", len(trial.ops) - 1) if trial.ops else ("acc", 0))
            elif self._is_literal(name):
                args.append(("literal", float(self.graph.constants[name].reshape(-1)[0])))
            else:
                strides = broadcast_strides(self._operand_shape(node, i, name), chain.shape)
                if isinstance(step, _WithEpilogue) and not _addressable(
                    chain.shape, strides, step.groups
                ):
                    return False
                args.append(("operand", trial.operand(name, self.type(name).dtype, strides)))
        for op_node, refs in steps:
            trial.ops.append(
                ChainOp(op_node, [args[r] if r is not None else ("none", 0) for r in refs])
            )
            args.append(("value", len(trial.ops) - 1))
        chain.ops, chain.operands = trial.ops, trial.operands
        chain.out = out or node.outputs[0]
        if node not in step.nodes:
            step.nodes.append(node)
        return True

    def _is_literal(self, name: str) -> bool:
        value = self.graph.constants.get(name)
        return value is not None and value.size == 1 and value.dtype.kind in "fb"


def _addressable(
    shape: tuple[int, ...], strides: tuple[int, ...], groups: tuple[list[int], list[int], list[int]]
) -> bool:
    _, md, nd = groups
    m = _group_stride(shape, strides, md)
    n = _group_stride(shape, strides, nd)
    return m is not None and n is not None and n in (0, 1)


# ---- GEMM-like ------------------------------------------------------------------------------


def _matmul_step(lw: Lowering, node: Node, a: str, b: str, out: str) -> GemmStep:
    """MatMul(a, b) -> out with numpy batching (an empty epilogue)."""
    ash, bsh = lw.type(a).shape, lw.type(b).shape
    a1, b1 = len(ash) == 1, len(bsh) == 1
    m, k = (1, ash[0]) if a1 else ash[-2:]
    n = 1 if b1 else bsh[-1]
    abatch = () if a1 else ash[:-2]
    bbatch = () if b1 else bsh[:-2]
    obatch = tuple(np.broadcast_shapes(abatch, bbatch))
    nb = math.prod(obatch)
    nbd = len(obatch)
    bd = list(range(nbd))
    md = [] if a1 else [nbd]
    nd = [] if b1 else [nbd + (0 if a1 else 1)]
    step = GemmStep([node], Chain(lw.type(out).shape, out), a=a, b=b, m=m, n=n, k=k)
    if math.prod(bbatch) == 1 and nb > 1 and not a1 and math.prod(abatch) == nb:
        # B is one matrix: fold A's batch into its rows (one big GEMM).
        step.m, step.batch = nb * m, 1
        step.groups = ([], bd + md, nd)
    else:
        step.batch = nb
        step.groups = (bd, md, nd)
        step.aoff = _batch_offsets(abatch, obatch, m * k)
        step.boff = _batch_offsets(bbatch, obatch, k * n)
    return step


def _batch_offsets(batch: tuple[int, ...], out: tuple[int, ...], size: int) -> list[int] | None:
    if math.prod(out) <= 1:
        return None
    strides = np.asarray(broadcast_strides(batch, out), np.int64) * size
    if not strides.any():
        return None
    index = np.indices(out).reshape(len(out), -1).T
    return [int(v) for v in index @ strides]


def _gemm_step(lw: Lowering, node: Node, trans_b: bool) -> GemmStep:
    """Gemm(A, B) without its C term (transA comes from the node when it has one)."""
    a, b = node.inputs[:2]
    out = node.outputs[0]
    ta = bool(node.attr("transA", 0))
    ash = lw.type(a).shape
    m, n = lw.type(out).shape
    k = ash[0] if ta else ash[1]
    step = GemmStep(
        [node], Chain((m, n), out), a=a, b=b, ta=ta, tb=trans_b, m=m, n=n, k=k,
        alpha=float(node.attr("alpha", 1.0)),
    )  # fmt: skip
    step.groups = ([], [0], [1])
    return step


def _bias_program(c: str, beta: float) -> Program:
    """``main + beta * c`` as a chain program."""
    add = Node("Add", ["", ""], ["out"], name="bias")
    if beta == 1.0:
        return [MAIN, c], [(add, [0, 1])]
    mul = Node("Mul", ["", ""], ["out"], name="beta")
    return [MAIN, c, ("literal", beta)], [(mul, [1, 2]), (add, [0, 3])]


def _epilogue_program(node: Node) -> Program:
    """A FusedConv/FusedMatMul epilogue: registers [main, *extra inputs]."""
    steps = [(step_node(s), [int(r) for r in s[1]]) for s in node.attr("epilogue", ())]
    extra: list[Register] = [n for n in node.inputs[3:] if n]
    return [MAIN, *extra], steps  # type: ignore[return-value]


def _with_programs(
    lw: Lowering, node: Node, step: _WithEpilogue, programs: list[Program], out: str | None = None
) -> list[Step]:
    """Fuse ``programs`` (in order, each reading the result so far as ``MAIN``) into
    ``step``'s epilogue. If an operand cannot be addressed from the kernel's output blocks,
    the kernel writes a temporary and the rest runs as a separate loop."""
    out = out or node.outputs[0]
    steps: list[Step] = [step]
    current: _WithEpilogue | ChainStep = step
    for registers, ops in programs:
        if not ops:
            continue
        if lw.extend(current, node, MAIN, (registers, ops), out):
            continue
        temp = lw.fresh(out, lw.type(out))
        current.chain.out = temp
        current = ChainStep([node], Chain(lw.type(out).shape, out))
        steps.append(current)
        renamed = [temp if r == MAIN else r for r in registers]
        if not lw.extend(current, node, None, (renamed, ops), out):
            raise CompileError(f"native engine: cannot lower the epilogue of {node.name!r}")
    return steps


def _matmul(lw: Lowering, node: Node) -> list[Step]:
    out = node.outputs[0]
    if node.domain != NERVE_DOMAIN:
        return [_matmul_step(lw, node, node.inputs[0], node.inputs[1], out)]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    programs = []
    if node.attr("gemm", 0):
        step: GemmStep = _gemm_step(lw, node, bool(node.attr("transB", 0)))
        beta = float(node.attr("beta", 1.0))
        if c and beta != 0.0:
            programs.append(_bias_program(c, beta))
    else:
        step = _matmul_step(lw, node, node.inputs[0], node.inputs[1], out)
        if c:
            programs.append(_bias_program(c, 1.0))
    programs.append(_epilogue_program(node))
    return _with_programs(lw, node, step, programs)


def _gemm(lw: Lowering, node: Node) -> list[Step]:
    step = _gemm_step(lw, node, bool(node.attr("transB", 0)))
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    beta = float(node.attr("beta", 1.0))
    programs = [_bias_program(c, beta)] if c and beta != 0.0 else []
    return _with_programs(lw, node, step, programs)


def _conv(lw: Lowering, node: Node) -> list[Step]:
    x, w = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    out = node.outputs[0]
    xs, ws, ys = lw.type(x).shape, lw.type(w).shape, lw.type(out).shape
    geo = window(node, xs[2:], ws[2:], ys[2:])
    h, wd = spatial2(xs)
    group = int(node.attr("group", 1))
    desc = (
        xs[0], xs[1], h, wd, ys[1], geo.out[0], geo.out[1], geo.kernel[0], geo.kernel[1],
        geo.strides[0], geo.strides[1], geo.pads_begin[0], geo.pads_begin[1],
        geo.dilations[0], geo.dilations[1], group,
    )  # fmt: skip
    step = ConvStep([node], Chain(ys, out), x=x, w=w, bias=bias, desc=desc)
    if group != xs[1] and lw.type(w).dtype is DType.FLOAT32:
        # Not depthwise: the packed-panel kernel over weights packed once at bind time.
        spec = PackSpec(w, "conv", group)
        step.wpack = lw.packed_weight(w, spec, conv_packed_size(ws, group)) or ""
    step.groups = ([0], [1], list(range(2, len(ys))))
    programs = [_epilogue_program(node)] if node.domain == NERVE_DOMAIN else []
    return _with_programs(lw, node, step, programs)


def _attention(lw: Lowering, node: Node) -> list[Step]:
    """Attention(Q, Kt, V, [mask], [scale]) as scores = Q Kt (scale and mask applied in the
    GEMM epilogue), softmax in place, out = P V: three kernels over one scratch tensor."""
    q, kt, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else ""
    out = node.outputs[0]
    qs, ks = lw.type(q).shape, lw.type(kt).shape
    batch = tuple(np.broadcast_shapes(qs[:-2], ks[:-2]))
    scores_type = TensorType(DType.FLOAT32, (*batch, qs[-2], ks[-1]))
    scores = lw.fresh(f"{out}.scores", scores_type)
    first = _matmul_step(lw, node, q, kt, scores)
    registers: list[Register] = [MAIN]
    scale_input = node.inputs[4] if len(node.inputs) > 4 else ""
    scale = node.attr("scale")
    if scale_input:  # a scalar tensor (e.g. a weight) overrides the attribute
        registers.append(scale_input)
    elif scale is not None:
        registers.append(("literal", float(scale)))
    if mask:
        registers.append(mask)
    ops: list[tuple[Node, list[int | None]]] = []
    current = 0
    if scale_input or scale is not None:
        ops.append((Node("Mul", ["", ""], ["out"], name="scale"), [current, 1]))
        current = len(registers) + len(ops) - 1
    if mask:
        ops.append((Node("Add", ["", ""], ["out"], name="mask"), [current, len(registers) - 1]))
    steps = _with_programs(lw, node, first, [(registers, ops)], out=scores)
    n = scores_type.shape[-1]
    rows = scores_type.numel // n if n else 0
    softmax = CallStep(
        [node], f"nk_softmax(nt, 0, {rows}LL, {n}LL, 1LL, {{t0}}, {{t1}})", [scores], [scores]
    )
    second = _matmul_step(lw, node, scores, v, out)
    return [*steps, softmax, second]


# ---- pooling, normalisation, reductions ------------------------------------------------------------


def _pool(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = lw.type(x).shape, lw.type(y).shape
    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        kind = 1 if node.op_type == "GlobalAveragePool" else 2
        r = math.prod(xs[2:])
        return _call(
            node, f"nk_reduce(nt, {kind}, {xs[0] * xs[1]}LL, {r}LL, 1LL, {{t0}}, {{t1}})", [x], [y]
        )
    kernel = tuple(int(k) for k in node.attr("kernel_shape"))
    geo = window(node, xs[2:], kernel, ys[2:])
    h, w = spatial2(xs)
    if node.op_type == "MaxPool":
        kind = 0
    else:
        kind = 2 if node.attr("count_include_pad", 0) else 1
    desc = (
        xs[0] * xs[1], h, w, geo.out[0], geo.out[1], geo.kernel[0], geo.kernel[1],
        geo.strides[0], geo.strides[1], geo.pads_begin[0], geo.pads_begin[1],
        geo.pads_end[0], geo.pads_end[1], geo.dilations[0], geo.dilations[1],
    )  # fmt: skip
    prelude = [f"static const nk_pool d = {{{', '.join(f'{v}LL' for v in desc)}}};"]
    return _call(node, f"nk_pool2d(nt, {kind}, &d, {{t0}}, {{t1}})", [x], [y], prelude=prelude)


def _softmax(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    shape = lw.type(x).shape
    axis = normalize_axis(int(node.attr("axis", -1)), len(shape))
    outer, n, inner = (
        math.prod(shape[:axis]),
        shape[axis] if shape else 1,
        math.prod(shape[axis + 1 :]),
    )
    log = int(node.op_type == "LogSoftmax")
    return _call(
        node, f"nk_softmax(nt, {log}, {outer}LL, {n}LL, {inner}LL, {{t0}}, {{t1}})", [x], [y]
    )


def _layernorm(lw: Lowering, node: Node) -> Step:
    x = node.inputs[0]
    shape = lw.type(x).shape
    axis = normalize_axis(int(node.attr("axis", -1)), len(shape))
    rows, n = math.prod(shape[:axis]), math.prod(shape[axis:])
    rms = int(node.op_type in ("RMSNormalization", "RMSNorm"))
    eps = float(node.attr("epsilon", 1e-5))
    from nerve.engines.native.elementwise import lit

    ins = [x]
    args = ["{t0}"]
    for name in [*node.inputs[1:3], "", ""][:2]:
        if name:
            args.append(f"{{t{len(ins)}}}")
            ins.append(name)
        else:
            args.append("NULL")
    if rms:
        args = [*args[:2], "NULL"]
    outs: list[str] = []
    out_args = []
    for name in [*node.outputs, "", "", ""][:3]:
        if name:
            out_args.append(f"{{t{len(ins) + len(outs)}}}")
            outs.append(name)
        else:
            out_args.append("NULL")
    template = (
        f"nk_layernorm(nt, {rms}, {rows}LL, {n}LL, {lit(eps)}, {', '.join(args)}, "
        f"{', '.join(out_args)})"
    )
    return _call(node, template, ins, outs)


def _reduce(lw: Lowering, node: Node) -> Step:
    layout = reduce_layout(node, lw.graph)
    if layout is None:
        raise CompileError(f"native engine: reduction {node.name!r} has non-adjacent axes")
    outer, r, inner = layout
    kind = REDUCE_KINDS[node.op_type]
    x, y = node.inputs[0], node.outputs[0]
    return _call(
        node, f"nk_reduce(nt, {kind}, {outer}LL, {r}LL, {inner}LL, {{t0}}, {{t1}})", [x], [y]
    )


# ---- data movement -------------------------------------------------------------------------------


def _copy_pieces(
    node: Node,
    ins: list[str],
    outs: list[str],
    pieces: list[tuple[int, int, int, int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    elem: int,
) -> Step:
    """A step of strided copies. A piece is (dst tensor #, dst offset, src tensor #, src offset,
    shape, dst strides, src strides) with tensors numbered over ins + outs."""
    prelude: list[str] = []
    calls = []
    for p, (dt, doff, st, soff, shape, dstr, sstr) in enumerate(pieces):
        dims, (ds, ss) = collapse(shape, [dstr, sstr])
        if 0 in shape:
            continue
        nd = len(dims)
        arr = lambda v: "{" + ", ".join(f"{x}LL" for x in v) + "}" if v else "{0}"  # noqa: E731
        prelude.append(
            f"static const int64_t sh{p}[] = {arr(dims)}, ds{p}[] = {arr(ds)}, ss{p}[] = {arr(ss)};"
        )
        calls.append(
            f"nk_copy(nt, {nd}, sh{p}, ds{p}, ss{p}, {elem}LL, (char *){{t{dt}}} + {doff * elem}LL, "
            f"(const char *){{t{st}}} + {soff * elem}LL)"
        )
    ctypes = dict.fromkeys([*ins, *outs], "char")
    return CallStep([node], "; ".join(calls) or "(void)0", ins, outs, ctypes, prelude=prelude)


def _elem(lw: Lowering, name: str) -> int:
    return lw.type(name).dtype.itemsize


def _transpose(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    xs = lw.type(x).shape
    perm = [int(p) for p in (node.attr("perm") or range(len(xs) - 1, -1, -1))]
    xstr = contiguous_strides(xs)
    ys = lw.type(y).shape
    piece = (1, 0, 0, 0, ys, contiguous_strides(ys), tuple(xstr[p] for p in perm))
    return _copy_pieces(node, [x], [y], [piece], _elem(lw, x))


def _slice(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = lw.type(x).shape, lw.type(y).shape
    const = lw.graph.constants
    starts = [int(v) for v in const[node.inputs[1]].reshape(-1)]
    axes_in = node.inputs[3] if len(node.inputs) > 3 else ""
    steps_in = node.inputs[4] if len(node.inputs) > 4 else ""
    axes = [int(v) for v in const[axes_in].reshape(-1)] if axes_in else list(range(len(starts)))
    steps = [int(v) for v in const[steps_in].reshape(-1)] if steps_in else [1] * len(starts)
    xstr = contiguous_strides(xs)
    src = list(xstr)
    offset = 0
    for start, axis, step in zip(starts, axes, steps):
        axis = normalize_axis(axis, len(xs))
        dim = xs[axis]
        if start < 0:
            start += dim
        start = min(max(start, 0), dim) if step > 0 else min(max(start, 0), dim - 1)
        offset += start * xstr[axis]
        src[axis] = xstr[axis] * step
    piece = (1, 0, 0, offset, ys, contiguous_strides(ys), tuple(src))
    return _copy_pieces(node, [x], [y], [piece], _elem(lw, x))


def _expand(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    ys = lw.type(y).shape
    piece = (1, 0, 0, 0, ys, contiguous_strides(ys), broadcast_strides(lw.type(x).shape, ys))
    return _copy_pieces(node, [x], [y], [piece], _elem(lw, x))


def _concat(lw: Lowering, node: Node) -> Step:
    y = node.outputs[0]
    ys = lw.type(y).shape
    ins = [n for n in node.inputs if n]
    axis = normalize_axis(int(node.attr("axis", 0)), len(ys))
    ystr = contiguous_strides(ys)
    pieces = []
    at = 0
    for i, name in enumerate(ins):
        s = lw.type(name).shape
        pieces.append((len(ins), at * ystr[axis], i, 0, s, ystr, contiguous_strides(s)))
        at += s[axis]
    return _copy_pieces(node, ins, [y], pieces, _elem(lw, y))


def _split(lw: Lowering, node: Node) -> Step:
    x = node.inputs[0]
    xs = lw.type(x).shape
    axis = normalize_axis(int(node.attr("axis", 0)), len(xs))
    xstr = contiguous_strides(xs)
    outs = [o for o in node.outputs if o]
    pieces = []
    at = 0
    for o in node.outputs:
        if not o:
            continue
        s = lw.type(o).shape
        pieces.append((1 + outs.index(o), 0, 0, at * xstr[axis], s, contiguous_strides(s), xstr))
        at += s[axis]
    return _copy_pieces(node, [x], outs, pieces, _elem(lw, x))


def _gather(lw: Lowering, node: Node) -> Step:
    data, idx = node.inputs[:2]
    y = node.outputs[0]
    ds = lw.type(data).shape
    axis = normalize_axis(int(node.attr("axis", 0)), len(ds))
    outer = math.prod(ds[:axis])
    inner = math.prod(ds[axis + 1 :]) * _elem(lw, data)
    nidx = lw.type(idx).numel
    is64 = int(lw.type(idx).dtype is DType.INT64)
    template = (
        f"nk_gather(nt, {outer}LL, {ds[axis]}LL, {inner}LL, {nidx}LL, {{t1}}, {is64}, "
        "{t0}, {t2})"
    )
    ctypes = {data: "char", idx: "void", y: "char"}
    return CallStep([node], template, [data, idx], [y], ctypes, checked=True)


def _call(
    node: Node, template: str, ins: list[str], outs: list[str], prelude: list[str] | None = None
) -> CallStep:
    return CallStep([node], template, ins, outs, prelude=prelude or [])


_BUILDERS: dict[str, Callable[[Lowering, Node], Step | list[Step]]] = {
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
    "nerve.FusedMatMul": _matmul,
    "nerve.FusedConv": _conv,
    "nerve.Attention": _attention,
    **{op: _pool for op in POOL_OPS},
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "LayerNormalization": _layernorm,
    "RMSNormalization": _layernorm,
    "nerve.LayerNorm": _layernorm,
    "nerve.RMSNorm": _layernorm,
    **{op: _reduce for op in REDUCE_OPS},
    "Transpose": _transpose,
    "Slice": _slice,
    "Expand": _expand,
    "Concat": _concat,
    "Split": _split,
    "Gather": _gather,
}

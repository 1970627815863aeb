"""Lowering of the other kernels: pooling, normalisation, reductions and data movement."""

from __future__ import annotations

import math

from nerve.engines.native.claims import POOL_OPS, REDUCE_OPS
from nerve.engines.native.elementwise import lit
from nerve.engines.native.lowering import Lowering, builds
from nerve.engines.native.shapes import (
    broadcast_strides,
    collapse,
    contiguous_strides,
    normalize_axis,
    reduce_layout,
    spatial2,
    window,
)
from nerve.engines.native.steps import CallStep, Step
from nerve.errors import CompileError
from nerve.ir import DType, Node

REDUCE_KINDS = {
    "ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3, "ReduceProd": 4,
    "ReduceSumSquare": 5, "ReduceL1": 6, "ReduceL2": 7, "ReduceLogSum": 8, "ReduceLogSumExp": 9,
}  # fmt: skip


@builds(*POOL_OPS)
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


@builds("Softmax", "LogSoftmax")
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


@builds("LayerNormalization", "RMSNormalization", "nerve.LayerNorm", "nerve.RMSNorm")
def _layernorm(lw: Lowering, node: Node) -> Step:
    x = node.inputs[0]
    shape = lw.type(x).shape
    axis = normalize_axis(int(node.attr("axis", -1)), len(shape))
    rows, n = math.prod(shape[:axis]), math.prod(shape[axis:])
    rms = int(node.op_type in ("RMSNormalization", "RMSNorm"))
    eps = float(node.attr("epsilon", 1e-5))
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


@builds(*REDUCE_OPS)
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


@builds("Transpose")
def _transpose(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    xs = lw.type(x).shape
    perm = [int(p) for p in (node.attr("perm") or range(len(xs) - 1, -1, -1))]
    xstr = contiguous_strides(xs)
    ys = lw.type(y).shape
    piece = (1, 0, 0, 0, ys, contiguous_strides(ys), tuple(xstr[p] for p in perm))
    return _copy_pieces(node, [x], [y], [piece], _elem(lw, x))


@builds("Slice")
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


@builds("Expand")
def _expand(lw: Lowering, node: Node) -> Step:
    x, y = node.inputs[0], node.outputs[0]
    ys = lw.type(y).shape
    piece = (1, 0, 0, 0, ys, contiguous_strides(ys), broadcast_strides(lw.type(x).shape, ys))
    return _copy_pieces(node, [x], [y], [piece], _elem(lw, x))


@builds("Concat")
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


@builds("Split")
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


@builds("Gather")
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

"""Shape arithmetic the code generator needs: strides, broadcasting, dimension collapsing,
window geometry and reduction layouts. Pure functions of static shapes and node attributes.

>>> collapse((2, 3, 4), [(12, 4, 1), (0, 0, 1)])
((6, 4), [(4, 1), (0, 1)])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nerve.ir import Graph, Node

Shape = tuple[int, ...]
Strides = tuple[int, ...]


def contiguous_strides(shape: Shape) -> Strides:
    """Row-major strides in elements."""
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def broadcast_strides(shape: Shape, out: Shape) -> Strides:
    """Strides (elements) that read a contiguous ``shape`` broadcast to ``out`` (numpy rules).

    >>> broadcast_strides((3, 1), (2, 3, 4))
    (0, 1, 0)
    """
    own = contiguous_strides(shape)
    pad = len(out) - len(shape)
    if pad < 0:
        raise ValueError(f"cannot broadcast {shape} to {out}")
    result = []
    for i, d in enumerate(out):
        j = i - pad
        if j < 0 or shape[j] == 1:
            result.append(0)
        elif shape[j] == d:
            result.append(own[j])
        else:
            raise ValueError(f"cannot broadcast {shape} to {out}")
    return tuple(result)


def collapse(shape: Shape, strides: list[Strides]) -> tuple[Shape, list[Strides]]:
    """Drop size-1 dimensions and merge neighbours that every stride set walks contiguously.

    Merging dims i and i+1 is valid when, for each stride set s, s[i] == s[i+1] * shape[i+1]
    (a broadcast pair 0, 0 qualifies too).
    """
    keep = [i for i, d in enumerate(shape) if d != 1]
    dims = [shape[i] for i in keep]
    sets = [[s[i] for i in keep] for s in strides]
    i = len(dims) - 2
    while i >= 0:
        if all(s[i] == s[i + 1] * dims[i + 1] for s in sets):
            dims[i] *= dims[i + 1]
            del dims[i + 1]
            for s in sets:
                s[i] = s[i + 1]
                del s[i + 1]
        i -= 1
    return tuple(dims), [tuple(s) for s in sets]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---- reductions ------------------------------------------------------------------------------


def reduce_axes(node: Node, graph: Graph) -> tuple[int, ...] | None:
    """The axes a Reduce* node reduces; None when they are not known statically or the node
    is a no-op reduction (``noop_with_empty_axes`` with no axes)."""
    rank = graph.types[node.inputs[0]].rank
    axes_name = node.inputs[1] if len(node.inputs) > 1 else ""
    if axes_name:
        if axes_name not in graph.constants:
            return None
        axes = [int(a) for a in graph.constants[axes_name].reshape(-1)]
    else:
        axes = [int(a) for a in (node.attr("axes") or ())]
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(rank))
    return tuple(sorted({normalize_axis(a, rank) for a in axes}))


def reduce_layout(node: Node, graph: Graph) -> tuple[int, int, int] | None:
    """``(outer, r, inner)`` when the reduced axes form one block in memory, else None.

    Size-1 axes do not occupy memory, so they may sit anywhere.
    """
    axes = reduce_axes(node, graph)
    if axes is None:
        return None
    shape = graph.types[node.inputs[0]].shape
    if 0 in shape:
        return None
    big = [i for i, d in enumerate(shape) if d != 1]
    reduced = [i for i in big if i in axes]
    if not reduced:
        return (math.prod(shape), 1, 1)
    first, last = big.index(reduced[0]), big.index(reduced[-1])
    if big[first : last + 1] != reduced:
        return None
    outer = math.prod(shape[i] for i in big[:first])
    r = math.prod(shape[i] for i in reduced)
    inner = math.prod(shape[i] for i in big[last + 1 :])
    return outer, r, inner


# ---- sliding windows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Explicit 2-D window geometry (1-D ops use a height of 1)."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads_begin: tuple[int, int]
    pads_end: tuple[int, int]
    out: tuple[int, int]


def conv_descriptor(
    node: Node, x: Shape, w: Shape, y: Shape
) -> tuple[tuple[int, ...], Window]:
    """The ``nk_conv`` descriptor of a Conv-like node (``N C H W O OH OW KH KW SH SW PT PL DH
    DW G``, 1-D convolutions with a height of 1) and its window geometry."""
    geo = window(node, x[2:], w[2:], y[2:])
    h, wd = spatial2(x)
    desc = (
        x[0], x[1], h, wd, y[1], geo.out[0], geo.out[1], geo.kernel[0], geo.kernel[1],
        geo.strides[0], geo.strides[1], geo.pads_begin[0], geo.pads_begin[1],
        geo.dilations[0], geo.dilations[1], int(node.attr("group", 1)),
    )  # fmt: skip
    return desc, geo


def window(node: Node, in_spatial: Shape, kernel: Shape, out_spatial: Shape) -> Window:
    """The window geometry of a Conv/pool node with the output size the IR inferred."""
    rank = len(in_spatial)
    strides = [int(s) for s in (node.attr("strides") or (1,) * rank)]
    dilations = [int(d) for d in (node.attr("dilations") or (1,) * rank)]
    pads = [int(p) for p in (node.attr("pads") or (0,) * (2 * rank))]
    auto_pad = str(node.attr("auto_pad", "NOTSET"))
    begin, end = [], []
    for i in range(rank):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            extent = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (out_spatial[i] - 1) * strides[i] + extent - in_spatial[i])
            small, large = total // 2, total - total // 2
            b = small if auto_pad == "SAME_UPPER" else large
            begin.append(b)
            end.append(total - b)
        elif auto_pad == "VALID":
            begin.append(0)
            end.append(0)
        else:
            begin.append(pads[i])
            end.append(pads[i + rank])
    if rank == 1:
        return Window(
            (1, kernel[0]),
            (1, strides[0]),
            (1, dilations[0]),
            (0, begin[0]),
            (0, end[0]),
            (1, out_spatial[0]),
        )
    return Window(
        (kernel[0], kernel[1]),
        (strides[0], strides[1]),
        (dilations[0], dilations[1]),
        (begin[0], begin[1]),
        (end[0], end[1]),
        (out_spatial[0], out_spatial[1]),
    )


def spatial2(shape: Shape) -> tuple[int, int]:
    """(H, W) of an NCHW or NCW shape (H = 1 for NCW)."""
    return (1, shape[2]) if len(shape) == 3 else (shape[2], shape[3])

"""Host kernels of the nn family: convolutions, Col2Im, DepthToSpace and SpaceToDepth.

Pooling, normalization and Resize live in the sibling ``nn_*`` modules. Convolution is im2col
over a strided window view followed by one batched matmul per group, so a ResNet-sized network
runs in seconds; the transposed convolution is the mirror image (a matmul, then the columns are
scattered back onto the output with one strided add per kernel tap).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from nerve.engines.host.kernels.nn_window import (
    Geometry,
    channel_shape,
    from_compute,
    pad_for_windows,
    spatial_attrs,
    to_compute,
    window_geometry,
    window_view,
)
from nerve.engines.host.registry import kernel
from nerve.errors import KernelError
from nerve.ir import Node


@kernel("Conv")
def conv(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    xf, wf = to_compute(x), to_compute(w)
    group = int(node.attr("group", 1))
    geo = window_geometry(node, x.shape[2:], w.shape[2:])
    y = convolve(xf, wf, group, geo)
    if b is not None:
        y += channel_shape(to_compute(b), y.ndim)
    return from_compute(y, x.dtype)


def convolve(x: np.ndarray, w: np.ndarray, group: int, geo: Geometry) -> np.ndarray:
    """Grouped N-d convolution (cross-correlation) of ``x`` (N, C, ...) with ``w`` (M, C/g, ...)."""
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    nsp = len(geo.out)
    if c != cg * group or m % group:
        raise KernelError(
            f"Conv: input has {c} channels, weight {w.shape} with group={group} expects "
            f"{cg * group} (and M={m} divisible by the group count)"
        )
    windows = window_view(pad_for_windows(x, geo, 0), geo)  # (N, C, *out, *k)
    windows = windows.reshape(n, group, cg, *geo.out, *geo.kernel)
    if cg == 1:
        return _depthwise(windows, w, group, geo)
    # (N, G, Cg, *k, *out): each group's im2col matrix, rows = (channel, tap), cols = pixels.
    perm = (0, 1, 2, *range(3 + nsp, 3 + 2 * nsp), *range(3, 3 + nsp))
    taps, pixels = math.prod(geo.kernel), math.prod(geo.out)
    cols = windows.transpose(perm).reshape(n, group, cg * taps, pixels)
    y = np.matmul(w.reshape(group, m // group, cg * taps), cols)  # (N, G, M/G, pixels)
    return y.reshape(n, m, *geo.out)


def _depthwise(windows: np.ndarray, w: np.ndarray, group: int, geo: Geometry) -> np.ndarray:
    """Convolution with one input channel per group: a multiply-add per kernel tap.

    im2col would copy every window to feed tiny per-channel matmuls; summing the taps over
    the window view is an order of magnitude faster for depthwise layers.
    """
    n, m, nsp = windows.shape[0], w.shape[0], len(geo.out)
    taps = w.reshape(group, m // group, *([1] * nsp), *geo.kernel)
    y = np.zeros((n, group, m // group, *geo.out), dtype=np.result_type(windows, w))
    for tap in itertools.product(*(range(k) for k in geo.kernel)):
        at: tuple[Any, ...] = (Ellipsis, *tap)
        y += windows[at] * taps[at]
    return y.reshape(n, m, *geo.out)


@kernel("ConvTranspose")
def conv_transpose(
    node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> np.ndarray:
    xf, wf = to_compute(x), to_compute(w)
    n, c, *in_sp = x.shape
    group = int(node.attr("group", 1))
    cg, mg, kernel_sp = w.shape[0] // group, w.shape[1], w.shape[2:]
    if w.shape[0] != c or c % group:
        raise KernelError(
            f"ConvTranspose: input has {c} channels, weight {w.shape} with group={group}"
        )
    strides, dilations, _ = spatial_attrs(node, len(in_sp))
    begin, out = transpose_output_geometry(node, tuple(in_sp), tuple(kernel_sp))
    taps, pixels = math.prod(kernel_sp), math.prod(in_sp)
    # cols[n, g, (o, tap), pixel] = sum over the group's input channels of w * x.
    wt = wf.reshape(group, cg, mg * taps).transpose(0, 2, 1)
    cols = np.matmul(wt, xf.reshape(n, group, cg, pixels))
    cols = cols.reshape(n, group * mg, *kernel_sp, *in_sp)
    y = fold_columns(cols, tuple(in_sp), tuple(kernel_sp), strides, dilations, begin, out)
    if b is not None:
        y += channel_shape(to_compute(b), y.ndim)
    return from_compute(y, x.dtype)


def transpose_output_geometry(
    node: Node, in_sp: tuple[int, ...], kernel_sp: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ConvTranspose's begin pads and output spatial size, from its attributes."""
    nsp = len(in_sp)
    strides, dilations, pads = spatial_attrs(node, nsp)
    out_pad = [int(p) for p in (node.attr("output_padding") or (0,) * nsp)]
    out_shape = (
        [int(s) for s in (node.attr("output_shape") or ())][-nsp:]
        if node.attr("output_shape")
        else []
    )
    auto_pad = str(node.attr("auto_pad", "NOTSET"))
    begin, out = [], []
    for i in range(nsp):
        full = strides[i] * (in_sp[i] - 1) + out_pad[i] + (kernel_sp[i] - 1) * dilations[i] + 1
        if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            size = out_shape[i] if out_shape else in_sp[i] * strides[i]
            total = full - size
            # The split the ONNX spec gives (floor division, so a negative total pads zeros).
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            b, size = 0, full
        else:
            b, size = pads[i], full - pads[i] - pads[i + nsp]
        begin.append(b)
        out.append(size)
    return tuple(begin), tuple(out)


def fold_columns(
    cols: np.ndarray,
    blocks: tuple[int, ...],
    kernel_sp: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    begin: tuple[int, ...],
    out: tuple[int, ...],
) -> np.ndarray:
    """Sum columns ``(N, C, *kernel, *blocks)`` back onto an image (col2im).

    Block ``j`` of tap ``t`` lands at ``j * stride + t * dilation - begin``; values landing
    outside ``[0, out)`` are dropped (they fell in the padding).
    """
    n, c = cols.shape[:2]
    full = [
        (nb - 1) * s + (k - 1) * d + 1 for nb, k, s, d in zip(blocks, kernel_sp, strides, dilations)
    ]
    every: tuple[slice, ...] = (slice(None), slice(None))  # all images, all channels
    canvas = np.zeros((n, c, *full), dtype=cols.dtype)
    for tap in itertools.product(*(range(k) for k in kernel_sp)):
        target = tuple(
            slice(t * d, t * d + (nb - 1) * s + 1, s)
            for t, d, nb, s in zip(tap, dilations, blocks, strides)
        )
        canvas[every + target] += cols[every + tap]
    y = np.zeros((n, c, *out), dtype=cols.dtype)
    dst, src = [], []
    for o, b, f in zip(out, begin, full):
        lo, hi = max(0, -b), max(0, min(o, f - b))
        hi = max(lo, hi)
        dst.append(slice(lo, hi))
        src.append(slice(lo + b, hi + b))
    y[every + tuple(dst)] = canvas[every + tuple(src)]
    return y


@kernel("Col2Im")
def col2im(
    node: Node, x: np.ndarray, image_shape: np.ndarray, block_shape: np.ndarray
) -> np.ndarray:
    image = tuple(int(v) for v in image_shape)
    kernel_sp = tuple(int(v) for v in block_shape)
    nsp = len(image)
    strides, dilations, pads = spatial_attrs(node, nsp)
    blocks = tuple(
        (image[i] + pads[i] + pads[i + nsp] - (kernel_sp[i] - 1) * dilations[i] - 1) // strides[i]
        + 1
        for i in range(nsp)
    )
    n, ck, count = x.shape
    taps = math.prod(kernel_sp)
    if ck % taps or count != math.prod(blocks):
        raise KernelError(
            f"Col2Im: input {x.shape} does not hold {taps}-tap columns of {blocks} blocks"
        )
    work = x if x.dtype != np.float16 else x.astype(np.float32)
    cols = work.reshape(n, ck // taps, *kernel_sp, *blocks)
    y = fold_columns(cols, blocks, kernel_sp, strides, dilations, tuple(pads[:nsp]), image)
    return y.astype(x.dtype, copy=False)


@kernel("DepthToSpace")
def depth_to_space(node: Node, x: np.ndarray) -> np.ndarray:
    bs = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    depth = c // (bs * bs)
    if str(node.attr("mode", "DCR")) == "CRD":
        y = x.reshape(n, depth, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, bs, bs, depth, h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, depth, h * bs, w * bs)


@kernel("SpaceToDepth")
def space_to_depth(node: Node, x: np.ndarray) -> np.ndarray:
    bs = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // bs, bs, w // bs, bs)
    if str(node.attr("mode", "DCR")) == "CRD":
        y = blocks.transpose(0, 1, 3, 5, 2, 4)
    else:
        y = blocks.transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)

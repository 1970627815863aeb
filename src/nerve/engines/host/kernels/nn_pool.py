"""Host kernels of the pooling ops: Max/Average/Lp pooling, their global forms, MaxUnpool.

Each pool reduces a strided window view of the padded input (see :mod:`nn_window`) over its
kernel axes in one numpy call. Padding never counts as data: MaxPool pads with -inf, the sums
pad with zeros and divide by the number of taps that count.
"""

from __future__ import annotations

import math

import numpy as np

from nerve.engines.host.kernels.nn_window import (
    Geometry,
    from_compute,
    pad_for_windows,
    to_compute,
    valid_tap_mask,
    window_geometry,
    window_view,
)
from nerve.engines.host.registry import kernel
from nerve.ir import Node


def _geometry(node: Node, x: np.ndarray) -> Geometry:
    kernel_sp = tuple(int(k) for k in node.attr("kernel_shape"))
    return window_geometry(node, x.shape[2:], kernel_sp, bool(node.attr("ceil_mode", 0)))


def _kernel_axes(geo: Geometry) -> tuple[int, ...]:
    nsp = len(geo.out)
    return tuple(range(2 + nsp, 2 + 2 * nsp))


@kernel("MaxPool")
def max_pool(node: Node, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    geo = _geometry(node, x)
    wants_indices = len(node.outputs) > 1 and bool(node.outputs[1])
    # Integers widen to float64 (exact for every MaxPool type) so -inf marks padding without
    # colliding with a real minimum value; bfloat16 decodes to float32.
    work = x.astype(np.float64) if x.dtype.kind in "iu" and x.dtype != np.uint16 else to_compute(x)
    windows = window_view(pad_for_windows(work, geo, -np.inf), geo)
    y = from_compute(windows.max(axis=_kernel_axes(geo)), x.dtype)
    if not wants_indices:
        return y
    return y, _argmax_indices(windows, x.shape, geo, int(node.attr("storage_order", 0)))


def _argmax_indices(
    windows: np.ndarray, shape: tuple[int, ...], geo: Geometry, storage_order: int
) -> np.ndarray:
    """MaxPool's Indices: the flat input index of each window's (first) maximum."""
    n, c, *in_sp = shape
    nsp = len(in_sp)
    flat = windows.reshape(n, c, *geo.out, math.prod(geo.kernel))
    taps = np.unravel_index(np.argmax(flat, axis=-1), geo.kernel)
    spatial = np.zeros((n, c, *geo.out), dtype=np.int64)
    # Row-major (storage_order 0) or column-major (1) position within one channel's image.
    order = range(nsp) if storage_order == 0 else reversed(range(nsp))
    for i in order:
        grid = np.arange(geo.out[i]).reshape([-1 if j == i else 1 for j in range(nsp)])
        coord = grid * geo.strides[i] + taps[i] * geo.dilations[i] - geo.pads_begin[i]
        spatial = spatial * in_sp[i] + coord
    channel = np.arange(n * c, dtype=np.int64).reshape(n, c, *([1] * nsp))
    return channel * math.prod(in_sp) + spatial


@kernel("AveragePool")
def average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    geo = _geometry(node, x)
    xf = to_compute(x)
    windows = window_view(pad_for_windows(xf, geo, 0), geo)
    sums = windows.sum(axis=_kernel_axes(geo))
    include_pad = bool(node.attr("count_include_pad", 0))
    counts = valid_tap_mask(x.shape[2:], geo, limit_end=include_pad)
    counts = counts.sum(axis=tuple(range(len(geo.out), 2 * len(geo.out))))
    return from_compute(sums / counts.astype(xf.dtype), x.dtype)


@kernel("LpPool")
def lp_pool(node: Node, x: np.ndarray) -> np.ndarray:
    geo = _geometry(node, x)
    p = float(node.attr("p", 2))
    xf = to_compute(x)
    windows = window_view(pad_for_windows(np.abs(xf) ** xf.dtype.type(p), geo, 0), geo)
    y = windows.sum(axis=_kernel_axes(geo)) ** xf.dtype.type(1.0 / p)
    return from_compute(y, x.dtype)


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


@kernel("GlobalAveragePool")
def global_average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    xf = to_compute(x)
    return from_compute(xf.mean(axis=_spatial_axes(x), keepdims=True), x.dtype)


@kernel("GlobalMaxPool")
def global_max_pool(node: Node, x: np.ndarray) -> np.ndarray:
    xf = to_compute(x)
    return from_compute(xf.max(axis=_spatial_axes(x), keepdims=True), x.dtype)


@kernel("GlobalLpPool")
def global_lp_pool(node: Node, x: np.ndarray) -> np.ndarray:
    p = float(node.attr("p", 2))
    xf = to_compute(x)
    total = (np.abs(xf) ** xf.dtype.type(p)).sum(axis=_spatial_axes(x), keepdims=True)
    return from_compute(total ** xf.dtype.type(1.0 / p), x.dtype)


@kernel("MaxUnpool")
def max_unpool(
    node: Node, x: np.ndarray, indices: np.ndarray, output_shape: np.ndarray | None = None
) -> np.ndarray:
    n, c, *in_sp = x.shape
    nsp = len(in_sp)
    kernel_sp = [int(k) for k in node.attr("kernel_shape")]
    strides = [int(s) for s in (node.attr("strides") or (1,) * nsp)]
    pads = [int(p) for p in (node.attr("pads") or (0,) * (2 * nsp))]
    natural = [
        (in_sp[i] - 1) * strides[i] - pads[i] - pads[i + nsp] + kernel_sp[i] for i in range(nsp)
    ]
    # Indices address the unpooled image of the natural size (as MaxPool's Indices address its
    # input); a larger output_shape extends that image with zeros at the end of each axis.
    image = np.zeros(n * c * math.prod(natural), dtype=x.dtype)
    image[indices.reshape(-1)] = x.reshape(-1)
    image = image.reshape(n, c, *natural)
    if output_shape is None:
        return image
    shape = tuple(int(s) for s in output_shape)
    y = np.zeros(shape, dtype=x.dtype)
    region = tuple(slice(0, min(a, b)) for a, b in zip(shape, image.shape))
    y[region] = image[region]
    return y

"""Sliding-window geometry shared by the convolution and pooling kernels.

A window op (Conv, the pools) slides a kernel of ``kernel`` taps, ``dilations`` apart, with
``strides`` over the padded spatial axes. :func:`window_geometry` turns the ONNX attributes
(``auto_pad``, ``pads``, ``ceil_mode``) into explicit begin pads and the output size;
:func:`window_view` exposes every window of the padded input as a strided view
``(N, C, *out, *kernel)``, so the kernels reduce or multiply whole windows with numpy instead of
looping over output pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nerve.ir import Node
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16


@dataclass(frozen=True)
class Geometry:
    """Where each window of a window op sits, per spatial axis."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]  # the explicit (or auto) end pads; ceil_mode may read beyond them
    out: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """The span of one dilated window along each axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))


def spatial_attrs(node: Node, rank: int) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """``strides``, ``dilations`` and ``pads`` of ``node`` with their ONNX defaults filled."""
    strides = tuple(int(s) for s in (node.attr("strides") or (1,) * rank))
    dilations = tuple(int(d) for d in (node.attr("dilations") or (1,) * rank))
    pads = [int(p) for p in (node.attr("pads") or (0,) * (2 * rank))]
    return strides, dilations, pads


def window_geometry(
    node: Node, in_spatial: tuple[int, ...], kernel: tuple[int, ...], ceil_mode: bool = False
) -> Geometry:
    """The geometry of ``node``'s windows over an input of spatial shape ``in_spatial``."""
    rank = len(in_spatial)
    strides, dilations, pads = spatial_attrs(node, rank)
    auto_pad = str(node.attr("auto_pad", "NOTSET"))
    begin, end, out = [], [], []
    for i, size in enumerate(in_spatial):
        s, extent = strides[i], (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            n = -(-size // s)
            total = max(0, (n - 1) * s + extent - size)
            small, large = total // 2, total - total // 2
            b, e = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            b = e = 0
            n = (size - extent) // s + 1
        else:
            b, e = pads[i], pads[i + rank]
            span = size + b + e - extent
            if ceil_mode:
                n = -(-span // s) + 1
                # A window that would start inside the end padding is dropped (ONNX, PyTorch).
                if (n - 1) * s >= size + b:
                    n -= 1
            else:
                n = span // s + 1
        begin.append(b)
        end.append(e)
        out.append(max(n, 0))
    return Geometry(kernel, strides, dilations, tuple(begin), tuple(end), tuple(out))


def pad_for_windows(x: np.ndarray, geo: Geometry, fill: Any) -> np.ndarray:
    """``x`` padded with ``fill`` so that every window of ``geo`` lies inside it."""
    widths = [(0, 0)] * (x.ndim - len(geo.out))
    need_pad = False
    for i, size in enumerate(x.shape[x.ndim - len(geo.out) :]):
        needed = (geo.out[i] - 1) * geo.strides[i] + geo.extent[i] if geo.out[i] else 0
        after = max(0, needed - size - geo.pads_begin[i])
        widths.append((geo.pads_begin[i], after))
        need_pad = need_pad or geo.pads_begin[i] > 0 or after > 0
    if not need_pad:
        return x
    return np.pad(x, widths, mode="constant", constant_values=fill)


def window_view(padded: np.ndarray, geo: Geometry) -> np.ndarray:
    """A read-only view ``(*leading, *out, *kernel)`` of every window of ``padded``."""
    nsp = len(geo.out)
    lead = padded.shape[: padded.ndim - nsp]
    sp_strides = padded.strides[padded.ndim - nsp :]
    shape = (*lead, *geo.out, *geo.kernel)
    strides = (
        *padded.strides[: padded.ndim - nsp],
        *(st * s for st, s in zip(sp_strides, geo.strides)),
        *(st * d for st, d in zip(sp_strides, geo.dilations)),
    )
    return np.lib.stride_tricks.as_strided(padded, shape, strides, writeable=False)


def valid_tap_mask(in_spatial: tuple[int, ...], geo: Geometry, limit_end: bool) -> np.ndarray:
    """Per (out..., kernel...) position: does the tap fall inside the input?

    With ``limit_end`` the bound is the explicitly padded extent instead (what AveragePool's
    count_include_pad counts: explicit padding yes, the ceil_mode overhang no).
    """
    mask: np.ndarray = np.ones((), dtype=bool)
    nsp = len(in_spatial)
    for i, size in enumerate(in_spatial):
        pos = (
            np.arange(geo.out[i])[:, None] * geo.strides[i]
            + np.arange(geo.kernel[i])[None, :] * geo.dilations[i]
            - geo.pads_begin[i]
        )
        lo, hi = (-geo.pads_begin[i], size + geo.pads_end[i]) if limit_end else (0, size)
        ok = (pos >= lo) & (pos < hi)
        shape = [1] * (2 * nsp)
        shape[i], shape[nsp + i] = geo.out[i], geo.kernel[i]
        mask = mask & ok.reshape(shape)
    return mask


# ---- float compute ------------------------------------------------------------------------


def to_compute(x: np.ndarray) -> np.ndarray:
    """``x`` in the precision kernels compute in: float16 and bfloat16 widen to float32.

    bfloat16 arrives as uint16 bit patterns; the float ops that call this accept no uint16,
    so a uint16 array here is always bfloat16.
    """
    if x.dtype == np.float16:
        return x.astype(np.float32)
    if x.dtype == np.uint16:
        return bfloat16_to_float32(x)
    return x


def from_compute(y: np.ndarray, like: np.dtype) -> np.ndarray:
    """``y`` (computed by :func:`to_compute` rules) back in the input's storage dtype."""
    if like == np.uint16:
        return float32_to_bfloat16(np.asarray(y, dtype=np.float32))
    return np.asarray(y).astype(like, copy=False)


def channel_shape(v: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against an ``(N, C, ...)`` tensor of ``rank``."""
    return v.reshape((1, -1) + (1,) * (rank - 2))


__all__ = [
    "Geometry",
    "channel_shape",
    "from_compute",
    "pad_for_windows",
    "spatial_attrs",
    "to_compute",
    "valid_tap_mask",
    "window_geometry",
    "window_view",
]

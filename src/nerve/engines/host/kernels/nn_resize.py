"""Host kernel of Resize: nearest, (anti-aliased) linear and cubic, any coordinate mode.

Every mode is separable, so the kernel resizes one axis at a time: nearest gathers input
indices, linear and cubic multiply by an ``(out, in)`` interpolation matrix built from the
output coordinates mapped back into the input (``coordinate_transformation_mode``). The
formulas follow the ONNX spec, including its float details (``output_width = scale * in``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nerve.engines.host.registry import kernel
from nerve.errors import KernelError
from nerve.ir import Node


@dataclass(frozen=True)
class AxisPlan:
    """How one axis is resized."""

    axis: int
    scale: float
    size: int
    roi: tuple[np.floating, np.floating]  # start, end, in the roi input's own precision


@kernel("Resize")
def resize(
    node: Node,
    x: np.ndarray,
    roi: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    plans = plan_axes(node, x.shape, roi, scales, sizes)
    mode = str(node.attr("mode", "nearest"))
    wide = x.dtype == np.float64 or x.dtype.kind in "iu"
    work = x if mode == "nearest" else x.astype(np.float64 if wide else np.float32)
    extrapolation = float(node.attr("extrapolation_value", 0.0))
    for plan in plans:
        if _is_identity(plan, x.shape[plan.axis]):
            continue
        coords, outside = source_coordinates(node, plan, work.shape[plan.axis])
        if mode == "nearest":
            index = nearest_index(coords, str(node.attr("nearest_mode", "round_prefer_floor")))
            work = np.take(work, np.clip(index, 0, work.shape[plan.axis] - 1), axis=plan.axis)
        else:
            matrix = interpolation_matrix(node, coords, plan.scale, work.shape[plan.axis])
            moved = np.tensordot(matrix.astype(work.dtype), work, axes=([1], [plan.axis]))
            work = np.moveaxis(moved, 0, plan.axis)
        if outside is not None and outside.any():
            mask = outside.reshape([-1 if i == plan.axis else 1 for i in range(work.ndim)])
            work = np.where(mask, np.asarray(extrapolation).astype(work.dtype), work)
    return _cast_back(work, x.dtype)


def plan_axes(
    node: Node,
    shape: tuple[int, ...],
    roi: np.ndarray | None,
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
) -> list[AxisPlan]:
    """Scale, output size and region of interest of each resized axis."""
    rank = len(shape)
    axes = [int(a) % rank for a in (node.attr("axes") or range(rank))]
    if sizes is not None and sizes.size:
        ratios = [int(sizes[i]) / shape[a] for i, a in enumerate(axes)]
        policy = str(node.attr("keep_aspect_ratio_policy", "stretch"))
        if policy == "stretch":
            factors, outs = ratios, [int(s) for s in sizes]
        else:
            common = min(ratios) if policy == "not_larger" else max(ratios)
            factors = [common] * len(axes)
            # round half up, as the spec's round_int does
            outs = [int(common * shape[a] + 0.5) for a in axes]
    elif scales is not None and scales.size:
        factors = [float(s) for s in scales]
        outs = [math.floor(f * shape[a]) for f, a in zip(factors, axes)]
    else:
        raise KernelError(f"Resize {node.name!r}: neither scales nor sizes was given")
    if len(factors) != len(axes):
        raise KernelError(f"Resize {node.name!r}: {len(factors)} scales/sizes for {len(axes)} axes")
    plans = []
    for i, a in enumerate(axes):
        region = (np.float64(0), np.float64(1))
        if roi is not None and roi.size > 0:
            region = (roi[i], roi[i + len(axes)])
        plans.append(AxisPlan(a, factors[i], outs[i], region))
    return plans


def _is_identity(plan: AxisPlan, length: int) -> bool:
    return (
        math.isclose(plan.scale, 1.0)
        and plan.size == length
        and math.isclose(float(plan.roi[0]), 0.0)
        and math.isclose(float(plan.roi[1]), 1.0)
    )


def source_coordinates(
    node: Node, plan: AxisPlan, length: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Input coordinate of each output index, and (tf_crop_and_resize) which fall outside."""
    mode = str(node.attr("coordinate_transformation_mode", "half_pixel"))
    out = np.arange(plan.size, dtype=np.float64)
    scale = plan.scale
    width = scale * length  # the spec's output_width: fractional when given by a scale
    if mode == "half_pixel":
        return (out + 0.5) / scale - 0.5, None
    if mode == "half_pixel_symmetric":
        offset = length / 2 * (1 - plan.size / width)
        return offset + (out + 0.5) / scale - 0.5, None
    if mode == "pytorch_half_pixel":
        return (out + 0.5) / scale - 0.5 if width != 1 else np.full(plan.size, -0.5), None
    if mode == "align_corners":
        return out * (length - 1) / (width - 1) if width != 1 else np.zeros(plan.size), None
    if mode == "asymmetric":
        return out / scale, None
    if mode == "tf_crop_and_resize":
        # The roi arithmetic stays in the roi's precision (float32 usually), as ONNX's reference
        # evaluates it; only then does it meet the float64 coordinates.
        start, end = plan.roi
        span = end - start
        if width != 1:
            coords = out * span * (length - 1) / (width - 1)
        else:
            coords = np.full(plan.size, span * (length - 1) / 2, dtype=np.float64)
        coords = coords + start * (length - 1)
        return coords, (coords < 0) | (coords > length - 1)
    raise KernelError(f"Resize {node.name!r}: unknown coordinate_transformation_mode {mode!r}")


def nearest_index(coords: np.ndarray, mode: str) -> np.ndarray:
    """The input index ``nearest_mode`` picks for each (fractional) coordinate."""
    if mode == "round_prefer_ceil":
        index = np.floor(coords + 0.5)
    elif mode == "floor":
        index = np.floor(coords)
    elif mode == "ceil":
        index = np.ceil(coords)
    else:  # round_prefer_floor: halves go down
        index = np.ceil(coords - 0.5)
    return index.astype(np.int64)


def interpolation_matrix(node: Node, coords: np.ndarray, scale: float, length: int) -> np.ndarray:
    """The ``(out, in)`` matrix of linear or cubic weights (edge pixels repeat outside)."""
    cubic = str(node.attr("mode")) == "cubic"
    antialias = bool(node.attr("antialias", 0))
    # Anti-aliasing stretches the filter by 1/scale when downsampling.
    stretch = min(scale, 1.0) if antialias else 1.0
    radius = 2 if cubic else 1
    first = math.floor(-radius / stretch) + 1
    offsets = np.arange(first, 2 - first)
    index = np.floor(coords).astype(np.int64)[:, None] + offsets[None, :]
    distance = np.abs(index - coords[:, None]) * stretch
    if cubic:
        weights = _cubic(distance, float(node.attr("cubic_coeff_a", -0.75)))
    else:
        weights = np.clip(1 - distance, 0, 1)
    if antialias:
        weights = weights / weights.sum(axis=1, keepdims=True)
    if node.attr("exclude_outside", 0):
        weights = np.where((index < 0) | (index >= length), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    matrix = np.zeros((len(coords), length))
    rows = np.repeat(np.arange(len(coords)), len(offsets))
    np.add.at(matrix, (rows, np.clip(index, 0, length - 1).reshape(-1)), weights.reshape(-1))
    return matrix


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient ``a`` at distances ``d >= 0``."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _cast_back(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if y.dtype == dtype:
        return y
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return y.astype(dtype)

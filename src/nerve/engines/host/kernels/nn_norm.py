"""Host kernels of the normalization ops and LRN.

Statistics are computed in float32 at least (float64 stays float64; a ``stash_type`` of double
computes in float64), then the result is cast back to the input's dtype.
"""

from __future__ import annotations

import numpy as np

from nerve.engines.host.kernels.nn_window import channel_shape, from_compute, to_compute
from nerve.engines.host.registry import kernel
from nerve.ir import Node

# ONNX TensorProto codes of the stash types nerve computes in.
_STASH_FLOAT64 = 11


def _stash(x: np.ndarray, node: Node) -> np.ndarray:
    """``x`` in the precision the node's ``stash_type`` asks for (float32 unless double)."""
    xf = to_compute(x)
    if int(node.attr("stash_type", 1)) == _STASH_FLOAT64:
        return xf.astype(np.float64)
    return xf.astype(np.float32, copy=False)


def _standardize(
    x: np.ndarray, axes: tuple[int, ...], epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance), with mean and 1/std."""
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + x.dtype.type(epsilon))
    return centered * inv_std, mean, inv_std


@kernel("BatchNormalization")
def batch_normalization(
    node: Node,
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
) -> np.ndarray | tuple[np.ndarray, ...]:
    xf = to_compute(x)
    eps = xf.dtype.type(node.attr("epsilon", 1e-5))
    s, b = (channel_shape(to_compute(v).astype(xf.dtype), x.ndim) for v in (scale, bias))
    m, v = (to_compute(a).astype(xf.dtype) for a in (mean, var))
    if not int(node.attr("training_mode", 0)):
        inv = channel_shape(1 / np.sqrt(v + eps), x.ndim)
        y = (xf - channel_shape(m, x.ndim)) * (inv * s) + b
        return from_compute(y, x.dtype)
    axes = (0, *range(2, x.ndim))
    batch_mean = xf.mean(axis=axes)
    batch_var = np.mean(np.square(xf - channel_shape(batch_mean, x.ndim)), axis=axes)
    inv = channel_shape(1 / np.sqrt(batch_var + eps), x.ndim)
    y = (xf - channel_shape(batch_mean, x.ndim)) * (inv * s) + b
    momentum = xf.dtype.type(node.attr("momentum", 0.9))
    running_mean = m * momentum + batch_mean * (1 - momentum)
    running_var = v * momentum + batch_var * (1 - momentum)
    return (
        from_compute(y, x.dtype),
        from_compute(running_mean, mean.dtype),
        from_compute(running_var, var.dtype),
    )


def _trailing_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(range(axis % x.ndim, x.ndim))


@kernel("LayerNormalization")
def layer_normalization(
    node: Node, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    xs = _stash(x, node)
    axes = _trailing_axes(x, int(node.attr("axis", -1)))
    normalized, mean, inv_std = _standardize(xs, axes, float(node.attr("epsilon", 1e-5)))
    # Stage two (scale and shift) runs in the input's precision, as the spec's function does.
    y = from_compute(normalized, x.dtype)
    yf = to_compute(y) * to_compute(scale)
    if bias is not None:
        yf = yf + to_compute(bias)
    # Mean and InvStdDev have the stash type (float32 unless stash_type says double).
    return from_compute(yf, x.dtype), mean, inv_std


@kernel("RMSNormalization")
def rms_normalization(node: Node, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    xs = _stash(x, node)
    axes = _trailing_axes(x, int(node.attr("axis", -1)))
    eps = xs.dtype.type(node.attr("epsilon", 1e-5))
    inv_rms = 1 / np.sqrt(np.mean(np.square(xs), axis=axes, keepdims=True) + eps)
    y = from_compute(xs * inv_rms, x.dtype)
    return from_compute(to_compute(y) * to_compute(scale), x.dtype)


@kernel("InstanceNormalization")
def instance_normalization(
    node: Node, x: np.ndarray, scale: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    xf = to_compute(x)
    normalized, _, _ = _standardize(xf, tuple(range(2, x.ndim)), float(node.attr("epsilon", 1e-5)))
    s, b = (channel_shape(to_compute(v).astype(xf.dtype), x.ndim) for v in (scale, bias))
    return from_compute(normalized * s + b, x.dtype)


@kernel("GroupNormalization")
def group_normalization(
    node: Node, x: np.ndarray, scale: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    groups = int(node.attr("num_groups"))
    xs = _stash(x, node)
    grouped = xs.reshape(x.shape[0], groups, -1)
    normalized, _, _ = _standardize(grouped, (2,), float(node.attr("epsilon", 1e-5)))
    y = to_compute(from_compute(normalized.reshape(x.shape), x.dtype))
    s, b = (channel_shape(to_compute(v), x.ndim) for v in (scale, bias))
    return from_compute(y * s + b, x.dtype)


@kernel("LpNormalization")
def lp_normalization(node: Node, x: np.ndarray) -> np.ndarray:
    xf = to_compute(x)
    axis = int(node.attr("axis", -1))
    p = int(node.attr("p", 2))
    if p == 1:
        norm = np.abs(xf).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.square(xf).sum(axis=axis, keepdims=True))
    # A zero vector stays zero rather than becoming 0/0 = NaN.
    safe = np.where(norm == 0, xf.dtype.type(1), norm)
    return from_compute(xf / safe, x.dtype)


@kernel("MeanVarianceNormalization")
def mean_variance_normalization(node: Node, x: np.ndarray) -> np.ndarray:
    xf = to_compute(x)
    axes = tuple(int(a) % x.ndim for a in node.attr("axes", (0, 2, 3)))
    mean = xf.mean(axis=axes, keepdims=True)
    centered = xf - mean
    std = np.sqrt(np.mean(np.square(centered), axis=axes, keepdims=True))
    # The spec's function adds 1e-9 to the standard deviation, not to the variance.
    return from_compute(centered / (std + xf.dtype.type(1e-9)), x.dtype)


@kernel("LRN")
def lrn(node: Node, x: np.ndarray) -> np.ndarray:
    xf = to_compute(x)
    size = int(node.attr("size"))
    alpha = float(node.attr("alpha", 1e-4))
    beta = float(node.attr("beta", 0.75))
    bias = float(node.attr("bias", 1.0))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    # Sum of squares over the channel window [c - before, c + after], zeros past the ends.
    widths = [(0, 0)] * x.ndim
    widths[1] = (before, after)
    padded = np.pad(np.square(xf), widths)
    window = np.lib.stride_tricks.sliding_window_view(padded, size, axis=1).sum(axis=-1)
    denom = (xf.dtype.type(bias) + xf.dtype.type(alpha / size) * window) ** xf.dtype.type(beta)
    return from_compute(xf / denom, x.dtype)

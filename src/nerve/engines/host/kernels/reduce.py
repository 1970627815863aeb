"""Host kernels of the reduce family: Reduce*, ArgMax/ArgMin, Softmax family, CumSum/CumProd,
TopK.

float16 and bfloat16 compute in float32 and round once at the end. bfloat16 arrives as uint16
bit patterns; the kernels that call :func:`widen` belong to ops whose ONNX type lists have no
uint16, so a uint16 array there is always bfloat16. ArgMax/ArgMin/TopK (and Einsum) do accept
uint16: their kernels are ``typed`` and read the IR types to tell the two apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nerve.engines.host.registry import kernel
from nerve.ir import DType, Node, TensorType
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16

# The IR types of a typed kernel's inputs (None when the caller has none to give).
InputTypes = Sequence[TensorType | None] | None

# ---- precision helpers (shared with kernels/linalg.py) --------------------------------------


def widen(x: np.ndarray) -> np.ndarray:
    """float16 and bfloat16 (uint16 bits) as float32; every other dtype unchanged."""
    if x.dtype == np.float16:
        return x.astype(np.float32)
    if x.dtype == np.uint16:
        return bfloat16_to_float32(x)
    return x


def narrow(y: np.ndarray | np.generic, dtype: np.dtype) -> np.ndarray:
    """``y`` in the storage dtype ``dtype`` (uint16 meaning bfloat16 bits, as in :func:`widen`)."""
    y = np.asarray(y)
    if dtype == np.uint16:
        return float32_to_bfloat16(y.astype(np.float32, copy=False))
    return y.astype(dtype, copy=False)


def is_bfloat16(input_types: InputTypes, index: int = 0) -> bool:
    """Whether input ``index`` is bfloat16 by the IR types (False when they are not given)."""
    if input_types is None or index >= len(input_types):
        return False
    t = input_types[index]
    return t is not None and t.dtype is DType.BFLOAT16


def _axis(value: int, rank: int) -> int:
    return value % rank if rank else 0


# ---- Reduce* ---------------------------------------------------------------------------------


def reduce_axes(node: Node, data: np.ndarray, axes: np.ndarray | None) -> tuple[int, ...]:
    """The axes a Reduce* node reduces: empty/absent axes mean all of them, or none at all when
    ``noop_with_empty_axes`` is set (then only the elementwise steps of the op apply)."""
    if axes is None or axes.size == 0:
        return () if node.attr("noop_with_empty_axes", 0) else tuple(range(data.ndim))
    return tuple(sorted({_axis(int(a), data.ndim) for a in axes.reshape(-1)}))


def _reduction(
    body: Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray | np.generic],
) -> Callable[..., np.ndarray]:
    """A Reduce* kernel from ``body(x, axes, keepdims)``, run on the widened input."""

    def run(node: Node, data: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        keep = bool(node.attr("keepdims", 1))
        x = widen(data)
        return narrow(body(x, reduce_axes(node, data, axes), keep), data.dtype)

    run.__doc__ = body.__doc__
    return run


def _sum(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    # dtype=x.dtype: small integers wrap like ONNX rather than promote.
    return np.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)


def _identity_of_max(dtype: np.dtype) -> bool | int | float:
    if dtype == np.bool_:
        return False
    if np.issubdtype(dtype, np.integer):
        return int(np.iinfo(dtype).min)
    return -np.inf


def _identity_of_min(dtype: np.dtype) -> bool | int | float:
    if dtype == np.bool_:
        return True
    if np.issubdtype(dtype, np.integer):
        return int(np.iinfo(dtype).max)
    return np.inf


def reduce_sum(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Sum; 0 over an empty set."""
    return _sum(x, axes, keep)


def reduce_mean(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Mean; integers truncate toward zero; NaN over an empty set (ONNX leaves it undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(x, axis=axes, keepdims=keep)


def reduce_max(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Max (False < True for bool); the dtype's lowest value over an empty set."""
    return np.max(x, axis=axes, keepdims=keep, initial=_identity_of_max(x.dtype))


def reduce_min(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Min; the dtype's highest value over an empty set."""
    return np.min(x, axis=axes, keepdims=keep, initial=_identity_of_min(x.dtype))


def reduce_prod(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Product; 1 over an empty set."""
    return np.prod(x, axis=axes, keepdims=keep, dtype=x.dtype)


def reduce_l1(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Sum of absolute values."""
    return _sum(np.abs(x), axes, keep)


def reduce_l2(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Square root of the sum of squares (integers: truncated)."""
    return np.sqrt(_sum(np.square(x), axes, keep))


def reduce_sum_square(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """Sum of squares."""
    return _sum(np.square(x), axes, keep)


def reduce_log_sum(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """log(sum(x)); -inf over an empty set."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(_sum(x, axes, keep))


def reduce_log_sum_exp(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray | np.generic:
    """log(sum(exp(x))), shifted by the maximum so large inputs do not overflow; -inf over an
    empty set."""
    peak = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    # An infinite peak cannot be subtracted (inf - inf); shifting by 0 is exact there.
    shift = np.where(np.isfinite(peak), peak, np.zeros((), x.dtype))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = np.sum(np.exp(x - shift), axis=axes, keepdims=True)
        result = np.log(total) + shift
    return result if keep else np.squeeze(result, axis=axes)


_REDUCTIONS = {
    "ReduceSum": reduce_sum,
    "ReduceMean": reduce_mean,
    "ReduceMax": reduce_max,
    "ReduceMin": reduce_min,
    "ReduceProd": reduce_prod,
    "ReduceL1": reduce_l1,
    "ReduceL2": reduce_l2,
    "ReduceSumSquare": reduce_sum_square,
    "ReduceLogSum": reduce_log_sum,
    "ReduceLogSumExp": reduce_log_sum_exp,
}
for _op, _body in _REDUCTIONS.items():
    kernel(_op)(_reduction(_body))


# ---- ArgMax / ArgMin -------------------------------------------------------------------------


def _arg_reduce(node: Node, data: np.ndarray, pick: Callable[..., np.ndarray]) -> np.ndarray:
    axis = _axis(int(node.attr("axis", 0)), data.ndim)
    if node.attr("select_last_index", 0):
        # The first hit in the reversed axis is the last hit in the original.
        last = data.shape[axis] - 1
        index = last - pick(np.flip(data, axis=axis), axis=axis)
    else:
        index = pick(data, axis=axis)
    if node.attr("keepdims", 1):
        index = np.expand_dims(index, axis)
    return np.asarray(index, dtype=np.int64)


def _comparable(data: np.ndarray, input_types: InputTypes) -> np.ndarray:
    # bfloat16 bit patterns do not order like the values (the sign is the top bit).
    return bfloat16_to_float32(data) if is_bfloat16(input_types) else data


@kernel("ArgMax", typed=True)
def arg_max(node: Node, data: np.ndarray, input_types: InputTypes = None) -> np.ndarray:
    return _arg_reduce(node, _comparable(data, input_types), np.argmax)


@kernel("ArgMin", typed=True)
def arg_min(node: Node, data: np.ndarray, input_types: InputTypes = None) -> np.ndarray:
    return _arg_reduce(node, _comparable(data, input_types), np.argmin)


# ---- Softmax family --------------------------------------------------------------------------


def _shifted(x: np.ndarray, axis: int) -> np.ndarray:
    """x minus its maximum along ``axis``: exp() of it cannot overflow."""
    return x - np.max(x, axis=axis, keepdims=True)


@kernel("Softmax")
def softmax(node: Node, data: np.ndarray) -> np.ndarray:
    x = widen(data)
    if x.size == 0:
        return data.copy()
    axis = _axis(int(node.attr("axis", -1)), x.ndim)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(_shifted(x, axis))
        return narrow(e / np.sum(e, axis=axis, keepdims=True), data.dtype)


@kernel("LogSoftmax")
def log_softmax(node: Node, data: np.ndarray) -> np.ndarray:
    x = widen(data)
    if x.size == 0:
        return data.copy()
    axis = _axis(int(node.attr("axis", -1)), x.ndim)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s = _shifted(x, axis)
        return narrow(s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True)), data.dtype)


@kernel("Hardmax")
def hardmax(node: Node, data: np.ndarray) -> np.ndarray:
    """1 at the first maximum along the axis, 0 elsewhere."""
    x = widen(data)
    if x.size == 0:
        return data.copy()
    out = np.zeros_like(x)
    axis = _axis(int(node.attr("axis", -1)), x.ndim)
    first = np.expand_dims(np.argmax(x, axis=axis), axis)
    np.put_along_axis(out, first, np.ones((), x.dtype), axis=axis)
    return narrow(out, data.dtype)


# ---- CumSum / CumProd ------------------------------------------------------------------------


def _cumulate(
    node: Node, data: np.ndarray, axis_value: np.ndarray, scan: Callable[..., np.ndarray]
) -> np.ndarray:
    x = widen(data)
    if x.ndim == 0:
        return data.copy()
    axis = _axis(int(np.asarray(axis_value).reshape(-1)[0]), x.ndim)
    reverse = bool(node.attr("reverse", 0))
    if reverse:
        x = np.flip(x, axis=axis)
    y = scan(x, axis=axis, dtype=x.dtype)
    if node.attr("exclusive", 0) and x.shape[axis]:
        # Shift by one along the axis: element i is the scan of elements before i.
        identity = np.ones if scan is np.cumprod else np.zeros
        first = identity((*x.shape[:axis], 1, *x.shape[axis + 1 :]), dtype=x.dtype)
        kept = np.take(y, np.arange(x.shape[axis] - 1), axis=axis)
        y = np.concatenate([first, kept], axis=axis)
    if reverse:
        y = np.flip(y, axis=axis)
    return narrow(y, data.dtype)


@kernel("CumSum")
def cum_sum(node: Node, data: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _cumulate(node, data, axis, np.cumsum)


@kernel("CumProd")
def cum_prod(node: Node, data: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _cumulate(node, data, axis, np.cumprod)


# ---- TopK ------------------------------------------------------------------------------------


@kernel("TopK", typed=True)
def top_k(
    node: Node, data: np.ndarray, k: np.ndarray, input_types: InputTypes = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k largest (or smallest) along the axis; equal values keep their index order."""
    axis = _axis(int(node.attr("axis", -1)), data.ndim)
    count = int(np.asarray(k).reshape(-1)[0])
    x = np.moveaxis(_comparable(data, input_types), axis, -1)
    last = x.shape[-1] - 1
    if node.attr("largest", 1):
        # Stable ascending sort of the reversed axis, read backwards: descending values, and
        # among equal values the lower original index first. No negation, so unsigned and
        # extreme integers are safe.
        order = last - np.argsort(x[..., ::-1], axis=-1, kind="stable")[..., ::-1]
    else:
        order = np.argsort(x, axis=-1, kind="stable")
    # ``sorted=0`` leaves the order to the implementation; sorted is a valid choice.
    indices = order[..., :count]
    # Values are gathered from the stored data, so bfloat16 bits come back untouched.
    values = np.take_along_axis(np.moveaxis(data, axis, -1), indices, axis=-1)
    return (
        np.ascontiguousarray(np.moveaxis(values, -1, axis)),
        np.ascontiguousarray(np.moveaxis(indices, -1, axis)).astype(np.int64, copy=False),
    )

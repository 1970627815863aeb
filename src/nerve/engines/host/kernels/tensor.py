"""Host kernels of the tensor family: shape and data movement, indexing, scatter, casts.

Shape ops return numpy views where numpy gives them (Reshape, Transpose, Slice, Split, ...):
kernels never write into their inputs, so a view is as good as a copy and costs nothing.

bfloat16 travels as uint16 bit patterns. Moving bits (Gather, Concat, Pad, ...) needs no care;
kernels that compute with values (Cast, Range, Dropout, scatter reductions) are registered with
``typed=True`` and receive the IR types of their inputs, so they can tell bfloat16 from uint16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nerve.engines.host.registry import kernel
from nerve.errors import KernelError
from nerve.ir import DType, Node, TensorType
from nerve.ir.dtypes import (
    E8M0_ROUND_MODES,
    bfloat16_to_float32,
    float32_to_bfloat16,
    to_low_precision,
    widen_low_precision,
)

InputTypes = Sequence[TensorType | None] | None

# ---- dtype helpers -----------------------------------------------------------------------------


def dtype_of(x: np.ndarray, types: InputTypes, index: int) -> DType:
    """The IR element type of input ``index``: from the IR when known, else from numpy."""
    if types is not None and index < len(types) and types[index] is not None:
        t = types[index]
        assert t is not None
        return t.dtype
    return DType.from_numpy(x.dtype)


def decode(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Values numpy can compute with: bfloat16 bits widen to float32, the rest as they are."""
    return bfloat16_to_float32(x) if dtype is DType.BFLOAT16 else x


def encode(values: np.ndarray, dtype: DType) -> np.ndarray:
    """``values`` stored as ``dtype`` (bfloat16 as round-to-nearest-even bit patterns)."""
    if dtype is DType.BFLOAT16:
        return float32_to_bfloat16(np.asarray(values, dtype=np.float32))
    return np.asarray(values).astype(dtype.numpy, copy=False)


def _int_list(values: np.ndarray | None) -> list[int]:
    return [] if values is None else [int(v) for v in np.asarray(values).reshape(-1)]


# ---- reshaping ---------------------------------------------------------------------------------


@kernel("Reshape")
def reshape(node: Node, data: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = _int_list(shape)
    if not node.attr("allowzero", 0):
        # 0 copies the input's dimension at that position (unless allowzero says it means 0).
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) == 1:
        known = math.prod(d for d in target if d != -1)
        if known == 0:
            raise KernelError(f"Reshape {node.name!r}: cannot infer -1 next to a 0 dimension")
        target[target.index(-1)] = data.size // known
    return data.reshape(target)


@kernel("Flatten")
def flatten(node: Node, x: np.ndarray) -> np.ndarray:
    axis = int(node.attr("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("Squeeze")
def squeeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(a % x.ndim for a in _int_list(axes)))


@kernel("Unsqueeze")
def unsqueeze(node: Node, x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    # Axes count in the output's rank, as numpy's expand_dims counts them.
    return np.expand_dims(x, tuple(_int_list(axes)))


@kernel("Transpose")
def transpose(node: Node, x: np.ndarray) -> np.ndarray:
    perm = node.attr("perm")
    return np.transpose(x, None if perm is None else tuple(int(p) for p in perm))


@kernel("Identity")
def identity(node: Node, x: np.ndarray) -> np.ndarray:
    return x


# ---- joining and splitting ---------------------------------------------------------------------


@kernel("Concat")
def concat(node: Node, *inputs: np.ndarray) -> np.ndarray:
    return np.concatenate(inputs, axis=int(node.attrs["axis"]))


@kernel("Split")
def split(node: Node, x: np.ndarray, sizes: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    axis = int(node.attr("axis", 0)) % x.ndim
    count = len(node.outputs)
    if sizes is None:
        # num_outputs form: chunks of ceil(dim / n), the last one smaller.
        chunk = -(-x.shape[axis] // count)
        bounds = [min(chunk * i, x.shape[axis]) for i in range(1, count)]
    else:
        bounds = [int(b) for b in np.cumsum(_int_list(sizes))[:-1]]
    return tuple(np.split(x, bounds, axis=axis))


@kernel("Tile")
def tile(node: Node, x: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    return np.tile(x, _int_list(repeats))


@kernel("Expand")
def expand(node: Node, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = np.broadcast_shapes(x.shape, tuple(_int_list(shape)))
    return np.array(np.broadcast_to(x, target))  # a real array, not a read-only broadcast view


# ---- slicing and padding -----------------------------------------------------------------------


def slice_of(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice bounds on an axis of length ``dim`` as a Python slice.

    Negative bounds count from the end; then bounds are clamped to [0, dim] for a positive
    step and to [-1, dim - 1] for a negative one, where an end of -1 means "past index 0".
    """
    if step == 0:
        raise KernelError("Slice steps must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@kernel("Slice")
def slice_(
    node: Node,
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    begin, end = _int_list(starts), _int_list(ends)
    axis_list = _int_list(axes) if axes is not None else list(range(len(begin)))
    step_list = _int_list(steps) if steps is not None else [1] * len(begin)
    index = [slice(None)] * data.ndim
    for b, e, a, s in zip(begin, end, axis_list, step_list):
        axis = a % data.ndim
        index[axis] = slice_of(b, e, s, data.shape[axis])
    return data[tuple(index)]


@kernel("Pad")
def pad(
    node: Node,
    data: np.ndarray,
    pads: np.ndarray,
    constant_value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
) -> np.ndarray:
    """Negative pads crop first; then the positive ones pad in the node's mode."""
    axis_list = [a % data.ndim for a in _int_list(axes)] if axes is not None else None
    axis_list = axis_list if axis_list is not None else list(range(data.ndim))
    amounts = _int_list(pads)
    before = [0] * data.ndim
    after = [0] * data.ndim
    for i, axis in enumerate(axis_list):
        before[axis], after[axis] = amounts[i], amounts[i + len(axis_list)]
    crop = tuple(
        slice(max(-b, 0), data.shape[i] - max(-a, 0)) for i, (b, a) in enumerate(zip(before, after))
    )
    cropped = data[crop]
    widths = [(max(b, 0), max(a, 0)) for b, a in zip(before, after)]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        fill = np.zeros((), data.dtype) if constant_value is None else constant_value.reshape(())
        return np.pad(cropped, widths, mode="constant", constant_values=fill)
    if mode not in ("reflect", "edge", "wrap"):
        raise KernelError(f"Pad {node.name!r}: unknown mode {mode!r}")
    return np.pad(cropped, widths, mode=mode)


# ---- indexing ----------------------------------------------------------------------------------


def _wrap(indices: np.ndarray, dim: int | np.ndarray) -> np.ndarray:
    """Negative indices counted from the end, as ONNX allows."""
    idx = indices.astype(np.int64, copy=False)
    return np.where(idx < 0, idx + dim, idx)


@kernel("Gather")
def gather(node: Node, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    axis = int(node.attr("axis", 0)) % data.ndim
    return np.take(data, _wrap(indices, data.shape[axis]), axis=axis)


@kernel("GatherElements")
def gather_elements(node: Node, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    axis = int(node.attr("axis", 0)) % data.ndim
    return np.take_along_axis(data, _wrap(indices, data.shape[axis]), axis=axis)


@kernel("GatherND")
def gather_nd(node: Node, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    batch = int(node.attr("batch_dims", 0))
    depth = indices.shape[-1]
    out_shape = indices.shape[:-1] + data.shape[batch + depth :]
    batches = math.prod(data.shape[:batch])
    per_batch = math.prod(indices.shape[batch:-1])
    flat_data = data.reshape((batches, *data.shape[batch:]))
    flat_idx = _wrap(
        indices.reshape(batches, per_batch, depth), np.asarray(data.shape[batch : batch + depth])
    )
    rows = np.broadcast_to(np.arange(batches)[:, None], (batches, per_batch))
    where = (rows, *np.moveaxis(flat_idx, -1, 0))
    picked = flat_data[where]
    return picked.reshape(out_shape)


_REDUCERS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(
    node: Node, data: np.ndarray, where: tuple[np.ndarray, ...], updates: np.ndarray,
    types: InputTypes,
) -> np.ndarray:
    reduction = node.attr("reduction", "none")
    dtype = dtype_of(data, types, 0)
    if reduction == "none":
        out = data.copy()
        out[where] = updates  # duplicate indices: ONNX leaves the winner undefined
        return out
    reducer = _REDUCERS.get(reduction)
    if reducer is None:
        raise KernelError(f"{node.op_type} {node.name!r}: unknown reduction {reduction!r}")
    values = decode(data, dtype).copy()
    reducer.at(values, where, decode(updates, dtype))  # unbuffered: duplicates all count
    return encode(values, dtype)


@kernel("ScatterND", typed=True)
def scatter_nd(
    node: Node, data: np.ndarray, indices: np.ndarray, updates: np.ndarray,
    input_types: InputTypes = None,
) -> np.ndarray:
    depth = indices.shape[-1]
    flat = _wrap(indices.reshape(-1, depth), np.asarray(data.shape[:depth]))
    rows = updates.reshape((flat.shape[0], *data.shape[depth:]))
    return _scatter(node, data, tuple(flat.T), rows, input_types)


@kernel("ScatterElements", "Scatter", typed=True)
def scatter_elements(
    node: Node, data: np.ndarray, indices: np.ndarray, updates: np.ndarray,
    input_types: InputTypes = None,
) -> np.ndarray:
    axis = int(node.attr("axis", 0)) % data.ndim
    where: list[np.ndarray] = list(np.indices(indices.shape, sparse=True))
    where[axis] = _wrap(indices, data.shape[axis])
    return _scatter(node, data, tuple(where), updates, input_types)


@kernel("Compress")
def compress(
    node: Node, x: np.ndarray, condition: np.ndarray
) -> np.ndarray:
    axis = node.attr("axis")
    data = x.reshape(-1) if axis is None else x
    ax = 0 if axis is None else int(axis) % x.ndim
    cond = condition.reshape(-1).astype(bool)
    if cond[data.shape[ax] :].any():
        raise KernelError(f"Compress {node.name!r}: condition selects past the axis length")
    return np.compress(cond[: data.shape[ax]], data, axis=ax)


@kernel("ReverseSequence")
def reverse_sequence(node: Node, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    batch_axis = int(node.attr("batch_axis", 1))
    time_axis = int(node.attr("time_axis", 0))
    out = x.copy()
    src = np.moveaxis(x, (batch_axis, time_axis), (0, 1))
    dst = np.moveaxis(out, (batch_axis, time_axis), (0, 1))  # a view: writes land in out
    for b, length in enumerate(_int_list(lengths)):
        if not 0 <= length <= src.shape[1]:
            raise KernelError(
                f"ReverseSequence {node.name!r}: sequence_lens[{b}] = {length} is outside "
                f"[0, {src.shape[1]}]"
            )
        dst[b, :length] = src[b, :length][::-1]
    return out


# ---- shapes as data, and generated tensors -----------------------------------------------------


@kernel("Shape")
def shape(node: Node, x: np.ndarray) -> np.ndarray:
    end = node.attr("end")
    # Python slicing clamps start/end exactly as ONNX specifies.
    return np.array(x.shape[int(node.attr("start", 0)) : None if end is None else int(end)],
                    dtype=np.int64)


@kernel("Size")
def size(node: Node, x: np.ndarray) -> np.ndarray:
    return np.array(x.size, dtype=np.int64)


@kernel("ConstantOfShape")
def constant_of_shape(node: Node, dims: np.ndarray) -> np.ndarray:
    value = node.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(_int_list(dims), fill[0], dtype=fill.dtype)


@kernel("Range", typed=True)
def range_(
    node: Node, start: np.ndarray, limit: np.ndarray, delta: np.ndarray,
    input_types: InputTypes = None,
) -> np.ndarray:
    dtype = dtype_of(start, input_types, 0)
    if dtype in (DType.FLOAT16, DType.BFLOAT16):
        # stash_type: the loop runs in float (1) or double (11), the result is rounded back.
        wide = DType.from_onnx(int(node.attr("stash_type", DType.FLOAT32.onnx))).numpy
        first, stop, step = (decode(v, dtype).astype(wide) for v in (start, limit, delta))
    else:
        first, stop, step = start, limit, delta
    with np.errstate(all="ignore"):
        # The element count as ONNX computes it: the difference in T, divided in double.
        count = max(int(np.ceil(np.float64(stop - first) / np.float64(step))), 0)
        values = first + np.arange(count).astype(np.asarray(first).dtype) * step
    return encode(np.asarray(values).reshape(-1), dtype)


@kernel("EyeLike")
def eye_like(node: Node, x: np.ndarray) -> np.ndarray:
    dtype_code = node.attr("dtype")
    dtype = DType.from_numpy(x.dtype) if dtype_code is None else DType.from_onnx(int(dtype_code))
    rows, cols = x.shape
    ones = np.eye(rows, cols, k=int(node.attr("k", 0)), dtype=np.float32)
    return encode(ones, dtype) if dtype is DType.BFLOAT16 else ones.astype(dtype.numpy)


@kernel("Trilu")
def trilu(node: Node, x: np.ndarray, k: np.ndarray | None = None) -> np.ndarray:
    diagonal = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    # numpy applies triu/tril to the last two axes of a stack, as ONNX does.
    return np.triu(x, diagonal) if int(node.attr("upper", 1)) else np.tril(x, diagonal)


@kernel("OneHot", typed=True)
def one_hot(
    node: Node, indices: np.ndarray, depth: np.ndarray, values: np.ndarray,
    input_types: InputTypes = None,
) -> np.ndarray:
    # Non-integer indices and depth are cast to int64 (truncated), as the spec says.
    size_ = int(decode(depth, dtype_of(depth, input_types, 1)).reshape(-1)[0])
    idx = decode(indices, dtype_of(indices, input_types, 0)).astype(np.int64)
    idx = np.where(idx < 0, idx + size_, idx)  # out-of-range indices match nothing: all off
    axis = int(node.attr("axis", -1))
    axis = axis + indices.ndim + 1 if axis < 0 else axis
    hot = np.moveaxis(idx[..., None] == np.arange(size_), -1, axis)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return np.where(hot, on, off).astype(values.dtype, copy=False)


# ---- Dropout -----------------------------------------------------------------------------------


@kernel("Dropout", typed=True)
def dropout(
    node: Node,
    x: np.ndarray,
    ratio: np.ndarray | None = None,
    training_mode: np.ndarray | None = None,
    input_types: InputTypes = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Identity at inference; in training mode a mask reproducible from the node's ``seed``.

    The mask keeps an element where ``numpy.random.RandomState(seed).uniform(0, 1, shape)`` is
    at least ``ratio``, and kept elements are scaled by ``1 / (1 - ratio)``. The same seed gives
    the same mask on every run.
    """
    rate = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
    if not training or rate == 0.0:
        return x, np.ones(x.shape, dtype=bool)
    if not 0.0 <= rate < 1.0:
        raise KernelError(f"Dropout {node.name!r}: ratio {rate} is not in [0, 1)")
    seed = node.attr("seed")
    if seed is None:
        raise KernelError(
            f"Dropout {node.name!r} runs in training mode but has no seed; nerve makes only "
            "reproducible masks. Give the node a seed attribute, or feed training_mode=False"
        )
    rng = np.random.RandomState(int(seed) & 0xFFFFFFFF)
    keep = rng.uniform(0.0, 1.0, x.shape) >= rate
    dtype = dtype_of(x, input_types, 0)
    values = decode(x, dtype)
    scaled = values * keep * np.asarray(1.0 / (1.0 - rate), dtype=values.dtype)
    return encode(scaled, dtype), keep


# ---- casts -------------------------------------------------------------------------------------


def cast_array(
    x: np.ndarray, source: DType, target: DType, saturate: bool = True, round_mode: str = "up"
) -> np.ndarray:
    """``x`` (stored as ``source``) converted to ``target``, with ONNX Cast's rules.

    Floats round to nearest even (bfloat16 included, through float32); float to integer
    truncates (out-of-range values are undefined in ONNX); integers wrap; anything nonzero is
    True. Strings parse as numbers ("1e-5", "INF", "NaN") and numbers print as plain decimals.
    The low-precision types (float8, float4, 4-bit and 2-bit integers) widen exactly; casts
    into them follow :func:`nerve.ir.dtypes.to_low_precision`, where ``saturate`` (float8 and
    E8M0) and ``round_mode`` (E8M0) apply.
    """
    if source is target:
        return x
    if source is DType.STRING:
        return _parse_strings(x, target, saturate, round_mode)
    values = widen_low_precision(x, source) if source.is_low_precision else decode(x, source)
    if target is DType.STRING:
        return np.vectorize(_format_number, otypes=[object])(values) if values.size else (
            values.astype(object)
        )
    with np.errstate(all="ignore"):
        if target is DType.BFLOAT16:
            return float32_to_bfloat16(values.astype(np.float32))
        if target.is_low_precision:
            return to_low_precision(values, target, saturate=saturate, round_mode=round_mode)
        return values.astype(target.numpy)


def _parse_strings(x: np.ndarray, target: DType, saturate: bool, round_mode: str) -> np.ndarray:
    def parse(s: object) -> float | int:
        text = s.decode() if isinstance(s, bytes) else str(s)
        try:
            return int(text)
        except ValueError:
            return float(text)  # float() reads INF, -inf, NaN, 1E8 in any case

    if target is DType.BOOL:
        numbers = np.array([parse(s) for s in x.reshape(-1)], dtype=np.float64)
        return (numbers != 0).reshape(x.shape)
    parsed = [parse(s) for s in x.reshape(-1)]
    wide = np.float64 if target.is_float or any(isinstance(p, float) for p in parsed) else np.int64
    values = np.array(parsed, dtype=wide).reshape(x.shape)
    return cast_array(values, DType.from_numpy(values.dtype), target, saturate, round_mode)


def _format_number(v: object) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (np.floating, float)):
        return str(v).replace("inf", "INF").replace("nan", "NaN")
    return str(v)


def _cast_options(node: Node) -> tuple[bool, str]:
    """(saturate, round_mode) of a Cast/CastLike node, with ONNX's defaults."""
    round_mode = str(node.attr("round_mode", "up"))
    if round_mode not in E8M0_ROUND_MODES:
        raise KernelError(
            f"node {node.name!r} ({node.op_type}): attribute round_mode is {round_mode!r}; "
            f"ONNX allows {', '.join(E8M0_ROUND_MODES)}"
        )
    return bool(node.attr("saturate", 1)), round_mode


@kernel("Cast", typed=True)
def cast(node: Node, x: np.ndarray, input_types: InputTypes = None) -> np.ndarray:
    target = DType.from_onnx(int(node.attrs["to"]))
    return cast_array(x, dtype_of(x, input_types, 0), target, *_cast_options(node))


@kernel("CastLike", typed=True)
def cast_like(
    node: Node, x: np.ndarray, like: np.ndarray, input_types: InputTypes = None
) -> np.ndarray:
    target = dtype_of(like, input_types, 1)
    return cast_array(x, dtype_of(x, input_types, 0), target, *_cast_options(node))


__all__ = ["cast_array", "decode", "dtype_of", "encode", "slice_of"]

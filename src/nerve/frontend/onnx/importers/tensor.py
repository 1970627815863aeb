"""Shape and data movement: Reshape, Transpose, Concat, Gather, Slice, Pad, Cast, and more.

Every importer here emits the op's latest ONNX form with all attributes spelled out (defaults of
the latest schema filled in), so kernels and passes see one form per op:

* inputs that fix an output's shape (Reshape's shape, Slice's bounds, Pad's pads, Tile's
  repeats, ...) must be constants: nerve compiles static shapes. A graph input can be made one
  with ``nerve.compile(model, constants={...})``;
* older forms are rewritten: Split's ``split`` and ``num_outputs`` become an explicit ``split``
  input, CastLike becomes Cast, Compress becomes Gather with constant indices, Range over
  float16/bfloat16/int16 runs in a wider type between two Casts, and so on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from nerve.frontend.onnx.context import ImportContext, attribute_value
from nerve.frontend.onnx.registry import importer
from nerve.ir import DType
from nerve.ir.dtypes import E8M0_ROUND_MODES
from nerve.ir.opset import onnx_schema

# ---- helpers -----------------------------------------------------------------------------------


def latest_attrs(ctx: ImportContext, node: onnx.NodeProto, *drop: str) -> dict[str, Any]:
    """The node's attributes in the op's latest schema: its defaults, then the node's values.

    Attributes named in ``drop`` (those an older form had and the latest does not) are left out.
    """
    values: dict[str, Any] = {}
    schema = onnx_schema(node.op_type, node.domain)
    if schema is not None:
        for name, spec in schema.attributes.items():
            if spec.default_value.type != onnx.AttributeProto.UNDEFINED:
                values[name] = attribute_value(spec.default_value)
    values.update(ctx.attrs(node))
    for name in drop:
        values.pop(name, None)
    return values


def emit_latest(ctx: ImportContext, node: onnx.NodeProto, inputs: list[str] | None = None) -> None:
    """Emit ``node`` as its latest form (same inputs unless given, attributes spelled out)."""
    ins = list(node.input) if inputs is None else inputs
    ctx.emit(node.op_type, ins, list(node.output), latest_attrs(ctx, node), node.name)


def optional_input(node: onnx.NodeProto, index: int) -> str:
    """The name of input ``index``, or "" when it is omitted."""
    return node.input[index] if len(node.input) > index else ""


def require_constants(ctx: ImportContext, node: onnx.NodeProto, *names: str) -> None:
    """Refuse ``node`` unless each of its inputs named (by schema name) is present-and-constant."""
    schema = onnx_schema(node.op_type, node.domain)
    assert schema is not None
    formal = [i.name for i in schema.inputs]
    for what in names:
        name = optional_input(node, formal.index(what))
        if name:
            ctx.require_constant(node, name, what)


def rank_of(ctx: ImportContext, name: str) -> int:
    return len(ctx.type_of(name).shape)


def normalized_axis(
    ctx: ImportContext, node: onnx.NodeProto, attribute: str, axis: int, rank: int
) -> int:
    """``axis`` in [0, rank), or a refusal naming the attribute when it is out of range."""
    if not -rank <= axis < rank:
        ctx.refuse(node, attribute, f"axis {axis} is out of range for a rank-{rank} input")
    return axis % rank


# ---- ops that import unchanged (their latest form is also every form since opset 13) ----------

# Attributes are honoured by the kernels as the latest schema defines them; ONNX's inference
# checks their values (axis ranges, permutation validity) when the node is emitted.
_UNCHANGED = (
    "Flatten",
    "Concat",
    "Gather",
    "GatherElements",
    "GatherND",
    "Shape",
    "Size",
    "Trilu",
    "Identity",
    "ReverseSequence",
)


@importer(*_UNCHANGED)
def import_unchanged(ctx: ImportContext, node: onnx.NodeProto) -> None:
    emit_latest(ctx, node)


@importer("Transpose")
def import_transpose(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = latest_attrs(ctx, node)
    if attrs.get("perm") is None:
        # The default permutation reverses the axes; spelled out so no pass has to know that.
        attrs["perm"] = tuple(reversed(range(rank_of(ctx, node.input[0]))))
    ctx.emit("Transpose", list(node.input), list(node.output), attrs, node.name)


# ---- shape-determining inputs that must be constants -------------------------------------------


@importer("Reshape")
def import_reshape(ctx: ImportContext, node: onnx.NodeProto) -> None:
    shape = ctx.require_constant(node, node.input[1], "shape")
    attrs = latest_attrs(ctx, node)  # allowzero (opset 14+) defaults to 0 before that
    if attrs.get("allowzero") and np.any(shape == 0) and np.any(shape == -1):
        ctx.refuse(node, "allowzero", "with allowzero=1 the shape may not hold both 0 and -1")
    ctx.emit("Reshape", list(node.input), list(node.output), attrs, node.name)


@importer("Expand", "Tile", "ConstantOfShape", "OneHot", "Compress", "Unsqueeze")
def import_with_constant_operands(ctx: ImportContext, node: onnx.NodeProto) -> None:
    operand = {
        "Expand": "shape",
        "Tile": "repeats",
        "ConstantOfShape": "input",
        "OneHot": "depth",
        "Compress": "condition",
        "Unsqueeze": "axes",
    }[node.op_type]
    require_constants(ctx, node, operand)
    if node.op_type == "Compress":
        _import_compress(ctx, node)
    elif node.op_type == "ConstantOfShape":
        _import_constant_of_shape(ctx, node)
    else:
        emit_latest(ctx, node)


@importer("Squeeze")
def import_squeeze(ctx: ImportContext, node: onnx.NodeProto) -> None:
    require_constants(ctx, node, "axes")  # without axes, every static 1-dim is squeezed
    emit_latest(ctx, node)


@importer("Slice")
def import_slice(ctx: ImportContext, node: onnx.NodeProto) -> None:
    require_constants(ctx, node, "starts", "ends", "axes", "steps")
    steps = ctx.constant_value(optional_input(node, 4))
    if steps is not None and np.any(steps == 0):
        ctx.refuse(node, "steps", "a step of 0 is not allowed")
    emit_latest(ctx, node)


@importer("Split")
def import_split(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Every form (split input, num_outputs, equal parts) becomes an explicit ``split`` input."""
    attrs = latest_attrs(ctx, node, "num_outputs", "split")
    rank = rank_of(ctx, node.input[0])
    axis = normalized_axis(ctx, node, "axis", int(attrs["axis"]), rank)
    attrs["axis"] = axis
    dim = ctx.type_of(node.input[0]).shape[axis]
    count = len(node.output)
    given = optional_input(node, 1)
    if given:
        sizes = [int(v) for v in ctx.require_constant(node, given, "split").reshape(-1)]
        if len(sizes) != count or min(sizes, default=0) < 0 or sum(sizes) != dim:
            ctx.refuse(
                node, "split", f"sizes {sizes} must be {count} non-negative numbers summing "
                f"to the axis length {dim}"
            )
    else:
        num_outputs = ctx.attrs(node).get("num_outputs")
        if num_outputs is not None and int(num_outputs) != count:
            ctx.refuse(node, "num_outputs", f"is {num_outputs} but the node has {count} outputs")
        sizes = _split_sizes(ctx, node, dim, count, uneven=num_outputs is not None)
    split = ctx.add_constant(f"{node.name or 'split'}_sizes", np.asarray(sizes, np.int64))
    ctx.emit("Split", [node.input[0], split], list(node.output), attrs, node.name)


def _split_sizes(
    ctx: ImportContext, node: onnx.NodeProto, dim: int, count: int, uneven: bool
) -> list[int]:
    if uneven:
        # num_outputs (opset 18): chunks of ceil(dim / n), the last one smaller.
        chunk = -(-dim // count)
        sizes = [min(chunk, max(dim - chunk * i, 0)) for i in range(count)]
        if sum(sizes) != dim or (dim >= count and 0 in sizes):
            ctx.refuse(node, "num_outputs", f"cannot split length {dim} into {count} chunks")
        return sizes
    if dim % count:
        ctx.refuse(
            node, "split", f"without split sizes, the axis length {dim} must divide evenly "
            f"into {count} outputs"
        )
    return [dim // count] * count


@importer("Pad")
def import_pad(ctx: ImportContext, node: onnx.NodeProto) -> None:
    require_constants(ctx, node, "pads", "axes")
    attrs = latest_attrs(ctx, node)
    mode = attrs["mode"]
    if mode not in ("constant", "reflect", "edge", "wrap"):
        ctx.refuse(node, "mode", f"{mode!r} is not one of constant, reflect, edge, wrap")
    emit_latest(ctx, node)


@importer("Range")
def import_range(ctx: ImportContext, node: onnx.NodeProto) -> None:
    require_constants(ctx, node, "start", "limit", "delta")
    attrs = latest_attrs(ctx, node)  # opset 11 had no stash_type: the default (float) applies
    dtype = ctx.type_of(node.input[0]).dtype
    if dtype is DType.INT16:
        wide = DType.INT32  # exact; ONNX computes Range's length only for int32/int64/float/double
    elif dtype in (DType.FLOAT16, DType.BFLOAT16):
        wide = DType.from_onnx(int(attrs["stash_type"]))
        if wide not in (DType.FLOAT32, DType.FLOAT64):
            ctx.refuse(node, "stash_type", f"must be float or double, not {wide.value}")
    else:
        ctx.emit("Range", list(node.input), list(node.output), attrs, node.name)
        return
    # Range in the wide type between two Casts: the spec's own decomposition for stash_type.
    wide_inputs = []
    for name in node.input:
        cast = ctx.fresh(f"{name}_{wide.value}")
        ctx.emit("Cast", [name], [cast], _cast_attrs(wide), f"{node.name}_cast_{name}")
        wide_inputs.append(cast)
    wide_out = ctx.fresh(f"{node.output[0]}_{wide.value}")
    ctx.emit("Range", wide_inputs, [wide_out], attrs, node.name)
    ctx.emit("Cast", [wide_out], [node.output[0]], _cast_attrs(dtype), f"{node.name}_cast_out")


def _import_constant_of_shape(ctx: ImportContext, node: onnx.NodeProto) -> None:
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    if value is None or value.data_type != onnx.TensorProto.BFLOAT16:
        emit_latest(ctx, node)
        return
    # IR attributes hold arrays, which cannot say "bfloat16": fill with the float32 value (exact)
    # and Cast, so the element type survives.
    bits = ctx.attrs(node)["value"]
    fill = (np.asarray(bits, np.uint32) << 16).view(np.float32)
    wide = ctx.fresh(f"{node.output[0]}_float32")
    ctx.emit("ConstantOfShape", list(node.input), [wide], {"value": fill}, node.name)
    ctx.emit("Cast", [wide], list(node.output), _cast_attrs(DType.BFLOAT16), f"{node.name}_cast")


def _import_compress(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Compress with a constant condition is Gather with constant indices (static shape)."""
    condition = ctx.require_constant(node, node.input[1], "condition").reshape(-1)
    data = node.input[0]
    axis_attr = ctx.attrs(node).get("axis")
    if axis_attr is None:
        flat = ctx.fresh(f"{data}_flat")
        shape = ctx.add_constant(f"{node.name or 'compress'}_flat_shape", np.array([-1]))
        ctx.emit("Reshape", [data, shape], [flat], {"allowzero": 0}, f"{node.name}_flatten")
        data, axis = flat, 0
    else:
        axis = normalized_axis(ctx, node, "axis", int(axis_attr), rank_of(ctx, data))
    dim = ctx.type_of(data).shape[axis]
    if len(condition) > dim and np.any(condition[dim:]):
        ctx.refuse(
            node, "condition", f"it selects index {int(np.flatnonzero(condition)[-1])}, past "
            f"the axis length {dim}"
        )
    indices = ctx.add_constant(
        f"{node.name or 'compress'}_indices", np.flatnonzero(condition[:dim]).astype(np.int64)
    )
    ctx.emit("Gather", [data, indices], list(node.output), {"axis": axis}, node.name)


# ---- type conversion ---------------------------------------------------------------------------


def _cast_attrs(dtype: DType) -> dict[str, Any]:
    return {"to": dtype.onnx, "saturate": 1, "round_mode": "up"}


@importer("Cast")
def import_cast(ctx: ImportContext, node: onnx.NodeProto) -> None:
    # saturate (float8, E8M0 targets) and round_mode (E8M0) are honoured by the Cast kernel.
    attrs = latest_attrs(ctx, node)
    DType.from_onnx(int(attrs["to"]))  # refuses a target type nerve does not support
    _check_round_mode(ctx, node, attrs)
    ctx.emit("Cast", list(node.input), list(node.output), attrs, node.name)


def _check_round_mode(ctx: ImportContext, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("round_mode", "up") not in E8M0_ROUND_MODES:
        ctx.refuse(node, "round_mode", f"{attrs['round_mode']!r} is not one of up, down, nearest")


@importer("CastLike")
def import_cast_like(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """CastLike becomes Cast: the target's type is static, and bfloat16 needs the type code."""
    attrs = latest_attrs(ctx, node)
    attrs["to"] = ctx.type_of(node.input[1]).dtype.onnx
    _check_round_mode(ctx, node, attrs)
    ctx.emit("Cast", [node.input[0]], list(node.output), attrs, node.name)


@importer("EyeLike")
def import_eye_like(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = latest_attrs(ctx, node)
    if attrs.get("dtype") is None:
        attrs["dtype"] = ctx.type_of(node.input[0]).dtype.onnx  # spelled out: bfloat16 is uint16
    DType.from_onnx(int(attrs["dtype"]))
    ctx.emit("EyeLike", list(node.input), list(node.output), attrs, node.name)


# ---- scatter -----------------------------------------------------------------------------------


@importer("ScatterND", "ScatterElements")
def import_scatter(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = latest_attrs(ctx, node)  # reduction: "none" before opset 16
    if attrs["reduction"] not in ("none", "add", "mul", "max", "min"):
        ctx.refuse(node, "reduction", f"{attrs['reduction']!r} is not none/add/mul/max/min")
    ctx.emit(node.op_type, list(node.input), list(node.output), attrs, node.name)


@importer("Scatter", since=9, until=11)
def import_scatter_deprecated(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Scatter (deprecated in opset 11) is ScatterElements without a reduction."""
    attrs = {"axis": int(ctx.attrs(node).get("axis", 0)), "reduction": "none"}
    ctx.emit("ScatterElements", list(node.input), list(node.output), attrs, node.name)


# ---- Dropout -----------------------------------------------------------------------------------


@importer("Dropout")
def import_dropout(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Dropout: the identity at inference; in training mode it needs a seed to be reproducible.

    With ``training_mode`` constant true and a ratio that may be above 0, a node without a
    ``seed`` is refused: nerve produces no unseeded random masks. When training_mode is a
    run-time input, the kernel refuses at run time instead, naming the node.
    """
    attrs = latest_attrs(ctx, node)
    training_name, ratio_name = optional_input(node, 2), optional_input(node, 1)
    training = ctx.constant_value(training_name)
    if not training_name or (training is not None and not bool(np.asarray(training))):
        # Inference: the ratio plays no part (and the kernel ignores it).
        ctx.emit("Dropout", list(node.input), list(node.output), attrs, node.name)
        return
    ratio = 0.5 if not ratio_name else ctx.constant_value(ratio_name)
    rate = None if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    if rate is not None and not 0.0 <= rate < 1.0:
        ctx.refuse(node, "ratio", f"{rate} is not in [0, 1)")
    if training is not None and "seed" not in attrs and rate != 0.0:
        ctx.refuse(
            node, "seed", "training_mode is true and the node has no seed; nerve makes only "
            "reproducible dropout masks. Give the node a seed, or export it for inference"
        )
    ctx.emit("Dropout", list(node.input), list(node.output), attrs, node.name)


__all__ = ["emit_latest", "latest_attrs"]

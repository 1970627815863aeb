"""Convolution, pooling, normalization, resizing: the spatial network ops.

Most of these import unchanged: their semantics are the same in every opset nerve sees (13 and
later), and the importer only checks the attributes whose values nerve would otherwise have to
guess at. Some need rewriting into the latest form:

* BatchNormalization-9 (opset 13): inference or training is told by the outputs asked for;
* GroupNormalization-18: ``scale`` and ``bias`` are per group; since 21 they are per channel;
* inputs that decide an output shape (Resize's ``scales``/``sizes``, Col2Im's shapes,
  MaxUnpool's ``output_shape``) must be known at import; float ones arrive as weights (Params),
  so the importer copies their values into constants, which is what shape inference reads;
  MaxUnpool's ``output_shape`` becomes a Pad, since ONNX's inference cannot read its value.

Output shapes come from ONNX's shape inference. Where it contradicts the spec (a window larger
than its padded input, ConvTranspose's SAME padding with ``output_padding`` or a stride larger
than the kernel, ...) the node is refused rather than run with a shape nobody agrees on.
"""

from __future__ import annotations

import numpy as np
import onnx

from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer
from nerve.ir import DType

_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _check_choice(
    ctx: ImportContext, node: onnx.NodeProto, name: str, allowed: tuple[str, ...]
) -> str:
    value = str(ctx.attrs(node).get(name, allowed[0]))
    if value not in allowed:
        ctx.refuse(node, name, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _check_float_input(ctx: ImportContext, node: onnx.NodeProto, what: str) -> None:
    """Refuse bfloat16 data where the op also takes uint16 numbers.

    bfloat16 travels as uint16 bit patterns. Kernels of float-only ops know a uint16 array is
    bfloat16; ops that accept real uint16 too (Resize, Col2Im) cannot tell, so they refuse it.
    """
    if ctx.type_of(node.input[0]).dtype is DType.BFLOAT16:
        ctx.refuse(
            node, what, "bfloat16 input is not supported by this op's kernel; cast to float32"
        )


def _static_input(ctx: ImportContext, node: onnx.NodeProto, index: int, what: str) -> str:
    """The name of input ``index`` as a constant (copied out of a Param if it is a weight)."""
    name = node.input[index] if index < len(node.input) else ""
    if not name or ctx.constant_value(name) is not None:
        return name
    if name in ctx.graph.params:
        # A float initializer is a Param; its value is structure here (it fixes a shape).
        return ctx.add_constant(f"{name}_static", ctx.graph.weights[name])
    ctx.require_constant(node, name, what)
    return name


def _emit_with_inputs(ctx: ImportContext, node: onnx.NodeProto, inputs: list[str]) -> None:
    ctx.emit(node.op_type, inputs, list(node.output), ctx.attrs(node), node.name)


# ---- convolution and pooling --------------------------------------------------------------


def _window_attrs(
    ctx: ImportContext, node: onnx.NodeProto, kernel: tuple[int, ...]
) -> tuple[tuple[int, ...], list[int], list[int], list[int]]:
    """Input spatial shape, strides, dilations and pads of a window op, defaults filled."""
    attrs = ctx.attrs(node)
    spatial = ctx.type_of(node.input[0]).shape[2:]
    rank = len(spatial)
    if len(kernel) != rank:
        ctx.refuse(node, "kernel_shape", f"{list(kernel)} does not have {rank} spatial axes")
    strides = [int(v) for v in attrs.get("strides") or [1] * rank]
    dilations = [int(v) for v in attrs.get("dilations") or [1] * rank]
    pads = [int(v) for v in attrs.get("pads") or [0] * (2 * rank)]
    for name, values, count in (("strides", strides, rank), ("dilations", dilations, rank)):
        if len(values) != count or min(values, default=1) < 1:
            ctx.refuse(node, name, f"{values} must be {count} positive values")
    if len(pads) != 2 * rank or min(pads, default=0) < 0:
        ctx.refuse(node, "pads", f"{pads} must be {2 * rank} non-negative values")
    return spatial, strides, dilations, pads


def _check_windows_fit(
    ctx: ImportContext, node: onnx.NodeProto, kernel: tuple[int, ...], ceil_mode: bool
) -> None:
    """Refuse windows larger than the padded input, and auto_pad=VALID with a ceil_mode the
    spec and ONNX's shape inference disagree on (ONNX would type such nodes inconsistently)."""
    spatial, strides, dilations, pads = _window_attrs(ctx, node, kernel)
    auto_pad = str(ctx.attrs(node).get("auto_pad", "NOTSET"))
    rank = len(spatial)
    for i, size in enumerate(spatial):
        extent = (kernel[i] - 1) * dilations[i] + 1
        room = size + (pads[i] + pads[i + rank] if auto_pad == "NOTSET" else 0)
        if auto_pad in ("NOTSET", "VALID") and room < extent:
            ctx.refuse(
                node,
                "kernel_shape",
                f"on spatial axis {i} the window spans {extent} elements but the (padded) "
                f"input has only {room}",
            )
        if auto_pad == "VALID" and ceil_mode and (size - extent) % strides[i]:
            ctx.refuse(
                node,
                "ceil_mode",
                "with auto_pad=VALID the ONNX spec (floor) and ONNX shape inference (ceil) "
                f"disagree on the output size of spatial axis {i}; use explicit pads instead",
            )


@importer("Conv", since=11)
def import_conv(ctx: ImportContext, node: onnx.NodeProto) -> None:
    _check_choice(ctx, node, "auto_pad", _AUTO_PAD)
    kernel = _checked_kernel(ctx, node)
    _check_windows_fit(ctx, node, kernel, ceil_mode=False)
    ctx.passthrough(node)


@importer("ConvTranspose", since=11)
def import_conv_transpose(ctx: ImportContext, node: onnx.NodeProto) -> None:
    auto_pad = _check_choice(ctx, node, "auto_pad", _AUTO_PAD)
    kernel = _checked_kernel(ctx, node)
    spatial, strides, dilations, _ = _window_attrs(ctx, node, kernel)
    attrs = ctx.attrs(node)
    rank = len(spatial)
    output_shape = [int(v) for v in attrs.get("output_shape") or []]
    if output_shape and len(output_shape) not in (rank, rank + 2):
        ctx.refuse(node, "output_shape", f"{output_shape} does not give {rank} spatial sizes")
    output_shape = output_shape[-rank:] if output_shape else []
    out_pad = [int(v) for v in attrs.get("output_padding") or [0] * rank]
    if len(out_pad) != rank:
        ctx.refuse(node, "output_padding", f"{out_pad} does not give {rank} values")
    for i, size in enumerate(spatial):
        if output_shape and output_shape[i] < size:
            ctx.refuse(
                node,
                "output_shape",
                f"{output_shape} is smaller than the input's spatial shape {list(spatial)}, "
                "which ONNX shape inference cannot type; crop after a larger ConvTranspose",
            )
        if not output_shape and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # ONNX's shape inference pads max(0, extent - stride) in total; the spec asks for
            # an output of exactly size * stride. Where the two differ nerve will not guess.
            extent = (kernel[i] - 1) * dilations[i] + 1
            inferred = strides[i] * (size - 1) + out_pad[i] + min(extent, strides[i])
            if inferred != size * strides[i]:
                ctx.refuse(
                    node,
                    "auto_pad",
                    f"{auto_pad} on spatial axis {i}: the spec gives size {size * strides[i]} "
                    f"but ONNX shape inference {inferred}; give explicit pads or output_shape",
                )
    ctx.passthrough(node)


def _checked_kernel(ctx: ImportContext, node: onnx.NodeProto) -> tuple[int, ...]:
    """The kernel's spatial shape (from the weight), checked against ``kernel_shape``."""
    weight = ctx.type_of(node.input[1]).shape[2:]
    given = ctx.attrs(node).get("kernel_shape")
    if given and tuple(int(k) for k in given) != weight:
        ctx.refuse(
            node,
            "kernel_shape",
            f"{list(given)} differs from the weight's spatial shape {list(weight)}",
        )
    return weight


@importer("MaxPool", "AveragePool", "LpPool", since=8)
def import_pool(ctx: ImportContext, node: onnx.NodeProto) -> None:
    _check_choice(ctx, node, "auto_pad", _AUTO_PAD)
    attrs = ctx.attrs(node)
    if node.op_type == "MaxPool" and int(attrs.get("storage_order", 0)) not in (0, 1):
        ctx.refuse(node, "storage_order", "must be 0 (row major) or 1 (column major)")
    kernel = tuple(int(k) for k in attrs.get("kernel_shape") or ())
    _check_windows_fit(ctx, node, kernel, ceil_mode=bool(attrs.get("ceil_mode", 0)))
    ctx.passthrough(node)


@importer("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "DepthToSpace", since=1)
def import_unchanged(ctx: ImportContext, node: onnx.NodeProto) -> None:
    if node.op_type == "DepthToSpace":
        _check_choice(ctx, node, "mode", ("DCR", "CRD"))
    ctx.passthrough(node)


@importer("SpaceToDepth", since=1)
def import_space_to_depth(ctx: ImportContext, node: onnx.NodeProto) -> None:
    # Before opset 28 SpaceToDepth had no mode; it behaved as DCR, the default since.
    _check_choice(ctx, node, "mode", ("DCR", "CRD"))
    ctx.passthrough(node)


@importer("MaxUnpool", since=9)
def import_max_unpool(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """MaxUnpool of the natural size, then (given ``output_shape``) zeros to that size.

    This is the ONNX reference's reading of ``output_shape``: the indices address the image of
    the natural size ``(in - 1) * stride + kernel - pads``, which a larger ``output_shape``
    extends with zeros at the end of each axis. (ONNX shape inference cannot read the value of
    ``output_shape``; the Pad makes the shape static.)
    """
    shape_name = _static_input(ctx, node, 2, "output_shape")
    attrs = ctx.attrs(node)
    x_shape = ctx.type_of(node.input[0]).shape
    kernel = [int(k) for k in attrs["kernel_shape"]]
    rank = len(kernel)
    strides = [int(v) for v in attrs.get("strides") or [1] * rank]
    pads = [int(v) for v in attrs.get("pads") or [0] * (2 * rank)]
    natural = list(x_shape[:2]) + [
        (x_shape[2 + i] - 1) * strides[i] - pads[i] - pads[i + rank] + kernel[i]
        for i in range(rank)
    ]
    want = [int(v) for v in ctx.graph.constants[shape_name]] if shape_name else natural
    if len(want) != len(natural):
        ctx.refuse(node, "output_shape", f"{want} does not have the input's rank {len(natural)}")
    if want == natural:
        ctx.emit(node.op_type, list(node.input[:2]), list(node.output), attrs, node.name)
        return
    unpooled = ctx.fresh(f"{node.output[0]}_unpooled")
    ctx.emit(node.op_type, list(node.input[:2]), [unpooled], attrs, node.name)
    amounts = [0] * len(want) + [w - h for w, h in zip(want, natural)]
    pads_name = ctx.add_constant(f"{node.output[0]}_pads", np.array(amounts, dtype=np.int64))
    ctx.emit("Pad", [unpooled, pads_name], list(node.output), {"mode": "constant"})


@importer("Col2Im", since=18)
def import_col2im(ctx: ImportContext, node: onnx.NodeProto) -> None:
    dtype = ctx.type_of(node.input[0]).dtype
    if dtype in (DType.BFLOAT16, DType.STRING, DType.BOOL):
        ctx.refuse(node, "input", f"{dtype.value} input is not supported (numeric types only)")
    image = _static_input(ctx, node, 1, "image_shape")
    block = _static_input(ctx, node, 2, "block_shape")
    _emit_with_inputs(ctx, node, [node.input[0], image, block])


# ---- normalization ------------------------------------------------------------------------


@importer("BatchNormalization", since=9, until=13)
def import_batch_norm_9(ctx: ImportContext, node: onnx.NodeProto) -> None:
    # Version 9 trains when the running statistics are asked for; saved_mean and saved_var
    # (outputs 4 and 5) were dropped in version 14.
    outputs = list(node.output)
    if any(outputs[3:]):
        ctx.refuse(
            node,
            "saved_mean",
            "the saved_mean/saved_var outputs of BatchNormalization-9 are not supported "
            "(re-export with opset >= 14)",
        )
    attrs = ctx.attrs(node)
    attrs["training_mode"] = 1 if any(outputs[1:3]) else 0
    ctx.emit(node.op_type, list(node.input), outputs[:3], attrs, node.name)


@importer("BatchNormalization", since=14)
def import_batch_norm(ctx: ImportContext, node: onnx.NodeProto) -> None:
    ctx.passthrough(node)


@importer("LayerNormalization", "RMSNormalization", "GroupNormalization", since=17)
def import_stashed_norm(ctx: ImportContext, node: onnx.NodeProto) -> None:
    stash = int(ctx.attrs(node).get("stash_type", 1))
    if stash not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        ctx.refuse(
            node, "stash_type", f"{stash} is not supported; nerve computes in float or double"
        )
    schema = ctx.schema(node)
    if node.op_type == "GroupNormalization" and schema is not None and schema.since_version < 21:
        _import_group_norm_18(ctx, node)
        return
    ctx.passthrough(node)


def _import_group_norm_18(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """GroupNormalization-18 (per-group scale/bias) as the per-channel form of version 21."""
    attrs = ctx.attrs(node)
    groups = int(attrs["num_groups"])
    channels = ctx.type_of(node.input[0]).shape[1]
    if groups <= 0 or channels % groups:
        ctx.refuse(node, "num_groups", f"{groups} does not divide the {channels} channels")
    index = ctx.add_constant(
        f"{node.name or 'gn'}_channel_group",
        np.repeat(np.arange(groups, dtype=np.int64), channels // groups),
    )
    per_channel = []
    for name in node.input[1:3]:
        out = ctx.fresh(f"{name}_per_channel")
        ctx.emit("Gather", [name, index], [out], {"axis": 0})
        per_channel.append(out)
    ctx.emit(node.op_type, [node.input[0], *per_channel], list(node.output), attrs, node.name)


@importer("InstanceNormalization", "LpNormalization", "MeanVarianceNormalization", "LRN", since=1)
def import_plain_norm(ctx: ImportContext, node: onnx.NodeProto) -> None:
    if node.op_type == "LpNormalization" and int(ctx.attrs(node).get("p", 2)) not in (1, 2):
        ctx.refuse(node, "p", "only p=1 and p=2 are defined by ONNX")
    ctx.passthrough(node)


# ---- resizing -----------------------------------------------------------------------------


@importer("Resize", since=11)
def import_resize(ctx: ImportContext, node: onnx.NodeProto) -> None:
    mode = _check_choice(ctx, node, "mode", ("nearest", "linear", "cubic"))
    _check_choice(
        ctx,
        node,
        "coordinate_transformation_mode",
        (
            "half_pixel",
            "half_pixel_symmetric",
            "pytorch_half_pixel",
            "align_corners",
            "asymmetric",
            "tf_crop_and_resize",
        ),
    )
    _check_choice(
        ctx, node, "nearest_mode", ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
    )
    _check_choice(ctx, node, "keep_aspect_ratio_policy", ("stretch", "not_larger", "not_smaller"))
    if mode != "nearest":
        _check_float_input(ctx, node, "mode")
    inputs = [node.input[0], node.input[1] if len(node.input) > 1 else ""]
    inputs.append(_static_input(ctx, node, 2, "scales"))
    inputs.append(_static_input(ctx, node, 3, "sizes"))
    given = [name for name in inputs[2:] if name and ctx.graph.constants[name].size]
    if len(given) != 1:
        ctx.refuse(node, "scales", "exactly one of scales and sizes must be given (non-empty)")
    while inputs and not inputs[-1]:
        inputs.pop()
    _emit_with_inputs(ctx, node, inputs)

"""MatMul, Gemm, Einsum, MatMulInteger, QLinearMatMul, Det.

All of them import unchanged from opset 13 on (their later versions only widened type lists).
The importers check what the host kernels would otherwise find out at run time: a malformed
Einsum equation, a Gemm bias that does not broadcast, misshapen zero points.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import onnx

from nerve.errors import ModelFormatError, ShapeError
from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

_EINSUM_LABELS = frozenset(string.ascii_letters)
_ELLIPSIS = "..."


@importer("MatMul", "Det", since=1)
def import_unchanged(ctx: ImportContext, node: onnx.NodeProto) -> None:
    ctx.passthrough(node)


@importer("Gemm", since=13)
def import_gemm(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Y = alpha * A' @ B' + beta * C, where C broadcasts one way to Y's shape (M, N)."""
    out = ctx.passthrough(node)
    if len(node.input) > 2 and node.input[2]:
        c_shape = ctx.type_of(node.input[2]).shape
        y_shape = ctx.type_of(out.outputs[0]).shape
        if len(c_shape) > 2 or any(
            c not in (1, y) for c, y in zip(reversed(c_shape), reversed(y_shape))
        ):
            raise ShapeError(
                f"node {node.name!r} (Gemm): C of shape {list(c_shape)} does not broadcast to "
                f"the output shape {list(y_shape)}"
            )


@importer("MatMulInteger", since=10)
def import_matmul_integer(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Zero points: a scalar (per tensor), or per row of A / per column of B."""
    a_shape = ctx.type_of(node.input[0]).shape
    b_shape = ctx.type_of(node.input[1]).shape
    for index, role, per in ((2, "a_zero_point", -2), (3, "b_zero_point", -1)):
        if len(node.input) <= index or not node.input[index]:
            continue
        shape = ctx.type_of(node.input[index]).shape
        operand = a_shape if index == 2 else b_shape
        if not _zero_point_fits(shape, operand, per):
            raise ShapeError(
                f"node {node.name!r} (MatMulInteger): {role} of shape {list(shape)} is neither "
                f"a scalar nor one value per {'row of A' if per == -2 else 'column of B'} "
                f"(operand shape {list(operand)})"
            )
    ctx.passthrough(node)


def _zero_point_fits(shape: Sequence[int], operand: Sequence[int], per: int) -> bool:
    if int(np.prod(shape)) == 1 and len(shape) <= 1:
        return True
    if len(operand) < 2:
        return False
    if len(shape) == 1:
        return shape[0] == operand[per]
    # N-D: operand's shape with the non-quantized matrix axis set to 1.
    expected = list(operand)
    expected[-1 if per == -2 else -2] = 1
    return list(shape) == expected


@importer("QLinearMatMul", since=10)
def import_qlinear_matmul(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Scales and zero points: scalars (per tensor), per row of ``a``, per column of ``b``; the
    output's per tensor or per column."""
    a_shape = ctx.type_of(node.input[0]).shape
    b_shape = ctx.type_of(node.input[3]).shape
    n_columns = b_shape[-1] if b_shape else 1
    checks = (
        (1, "a_scale", a_shape, -2),
        (2, "a_zero_point", a_shape, -2),
        (4, "b_scale", b_shape, -1),
        (5, "b_zero_point", b_shape, -1),
    )
    for index, role, operand, per in checks:
        shape = ctx.type_of(node.input[index]).shape
        if not _zero_point_fits(shape, operand, per):
            raise ShapeError(
                f"node {node.name!r} (QLinearMatMul): {role} of shape {list(shape)} is neither "
                f"a scalar nor one value per {'row of a' if per == -2 else 'column of b'}"
            )
    for index, role in ((6, "y_scale"), (7, "y_zero_point")):
        shape = ctx.type_of(node.input[index]).shape
        if int(np.prod(shape)) not in (1, n_columns) or len(shape) > 1:
            raise ShapeError(
                f"node {node.name!r} (QLinearMatMul): {role} of shape {list(shape)} is neither "
                "a scalar nor one value per output column"
            )
    ctx.passthrough(node)


@importer("Einsum", since=12)
def import_einsum(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    shapes = [ctx.type_of(name).shape for name in node.input]
    try:
        attrs["equation"] = normalize_einsum(str(attrs.get("equation", "")), shapes)
    except ValueError as exc:
        raise ModelFormatError(
            f"node {node.name!r} (Einsum): equation {attrs.get('equation')!r} is malformed: {exc}"
        ) from None
    ctx.emit(node.op_type, list(node.input), list(node.output), attrs, node.name)


def normalize_einsum(equation: str, shapes: Sequence[Sequence[int]]) -> str:
    """``equation`` without whitespace, after checking it against the operands' shapes.

    Raises ValueError saying what is wrong.

    >>> normalize_einsum("bij, bjk -> bik", [(5, 2, 3), (5, 3, 4)])
    'bij,bjk->bik'
    """
    compact = "".join(equation.split())
    if compact.count("->") > 1:
        raise ValueError("'->' appears more than once")
    lhs, arrow, rhs = compact.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"it names {len(terms)} operands but the node has {len(shapes)} inputs")
    sizes: dict[str, int] = {}
    ellipsis_shapes: list[tuple[int, ...]] = []
    for index, (term, shape) in enumerate(zip(terms, shapes)):
        labels = _labels(term, f"operand {index}")
        if _ELLIPSIS in term:
            if len(labels) > len(shape):
                raise ValueError(f"operand {index} has rank {len(shape)} but {len(labels)} labels")
            ellipsis_rank = len(shape) - len(labels)
            head = term.index(_ELLIPSIS)
            ellipsis_shapes.append(tuple(shape[head : head + ellipsis_rank]))
            dims = list(shape[:head]) + list(shape[head + ellipsis_rank :])
        else:
            if len(labels) != len(shape):
                raise ValueError(f"operand {index} has rank {len(shape)} but {len(labels)} labels")
            dims = list(shape)
        for label, dim in zip(labels, dims):
            if sizes.setdefault(label, dim) != dim:
                raise ValueError(f"label {label!r} stands for sizes {sizes[label]} and {dim}")
    try:
        ellipsis_dims = np.broadcast_shapes(*ellipsis_shapes) if ellipsis_shapes else ()
    except ValueError:
        raise ValueError(
            f"the '...' dimensions {ellipsis_shapes} do not broadcast together"
        ) from None
    if arrow:
        out_labels = _labels(rhs, "the output")
        if len(set(out_labels)) != len(out_labels):
            raise ValueError(f"the output {rhs!r} repeats a label")
        unknown = sorted(set(out_labels) - set(sizes))
        if unknown:
            raise ValueError(f"output labels {unknown} appear in no operand")
        if ellipsis_dims and _ELLIPSIS not in rhs:
            raise ValueError("the operands have '...' dimensions but the output drops them")
    return compact


def _labels(term: str, what: str) -> str:
    if term.count(_ELLIPSIS) > 1:
        raise ValueError(f"{what} has more than one '...'")
    labels = term.replace(_ELLIPSIS, "", 1)
    bad = sorted(set(labels) - _EINSUM_LABELS)
    if bad:
        raise ValueError(f"{what} ({term!r}) has characters {bad}; labels are letters a-z, A-Z")
    return labels

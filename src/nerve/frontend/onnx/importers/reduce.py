"""Reductions, ArgMax/ArgMin, Softmax family, CumSum/CumProd, TopK.

Canonical (latest-opset) forms produced here:

* ``Reduce*(data, axes?)`` with ``keepdims`` and ``noop_with_empty_axes``; ``axes`` is an int64
  constant input (before opset 18 it was an attribute; ReduceSum moved it in opset 13).
* everything else unchanged: the other ops did not change meaning from opset 13 on (Hardmax
  from older opsets is fixed up at load time, see :func:`coerce_upgraded_hardmax`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from nerve.errors import ModelFormatError, ShapeError
from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import importer

REDUCE_OPS = (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
# ReduceSum took ``axes`` as an input from opset 13; the others from opset 18.
_AXES_ATTRIBUTE_OPS = tuple(op for op in REDUCE_OPS if op != "ReduceSum")
# Defined with Exp/Log: ONNX dropped their integer types in opset 28.
_FLOAT_ONLY_REDUCE_OPS = ("ReduceLogSum", "ReduceLogSumExp")


# ---- reductions ------------------------------------------------------------------------------


@importer(*_AXES_ATTRIBUTE_OPS, until=17)
def import_reduce_axes_attribute(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Opset 13..17: ``axes`` is an attribute; it becomes a constant input."""
    attrs = ctx.attrs(node)
    axes = attrs.pop("axes", None)
    axes_array = None if axes is None else np.asarray(axes, dtype=np.int64).reshape(-1)
    _emit_reduce(ctx, node, attrs, axes_array, axes_name=None)


@importer("ReduceSum", since=13)
@importer(*_AXES_ATTRIBUTE_OPS, since=18)
def import_reduce(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Opset 18+ (ReduceSum 13+): ``axes`` is an optional input, which must be a constant."""
    attrs = ctx.attrs(node)
    axes_name = node.input[1] if len(node.input) > 1 and node.input[1] else None
    axes_array = None
    if axes_name is not None:
        axes_array = np.asarray(ctx.require_constant(node, axes_name, "axes")).reshape(-1)
    _emit_reduce(ctx, node, attrs, axes_array, axes_name)


def _emit_reduce(
    ctx: ImportContext,
    node: onnx.NodeProto,
    attrs: dict[str, Any],
    axes: np.ndarray | None,
    axes_name: str | None,
) -> None:
    data = node.input[0]
    data_type = ctx.type_of(data)
    if node.op_type in _FLOAT_ONLY_REDUCE_OPS and not data_type.dtype.is_float:
        ctx.refuse(
            node,
            "data",
            f"{node.op_type} of {data_type.dtype.value} data is not supported (ONNX defines it "
            "for float types only since opset 28); Cast the input to float first",
        )
    if axes is not None:
        if axes.dtype != np.int64:
            raise ModelFormatError(
                f"node {node.name!r} ({node.op_type}): axes must be int64, not {axes.dtype}"
            )
        _check_axes(node, axes, data_type.rank)
        if axes_name is None:
            axes_name = ctx.add_constant(f"{node.output[0]}_axes", axes)
    canonical = {
        "keepdims": int(attrs.get("keepdims", 1)),
        "noop_with_empty_axes": int(attrs.get("noop_with_empty_axes", 0)),
    }
    inputs = [data] if axes_name is None else [data, axes_name]
    ctx.emit(node.op_type, inputs, list(node.output), canonical, node.name)


def _check_axes(node: onnx.NodeProto, axes: np.ndarray, rank: int) -> None:
    normalized = []
    for axis in axes.tolist():
        if not -rank <= axis < rank:
            raise ShapeError(
                f"node {node.name!r} ({node.op_type}): axis {axis} is out of range for an "
                f"input of rank {rank} (valid: {-rank}..{rank - 1})"
            )
        normalized.append(axis % rank)
    if len(set(normalized)) != len(normalized):
        raise ShapeError(
            f"node {node.name!r} ({node.op_type}): axes {axes.tolist()} name an axis twice"
        )


# ---- ArgMax / ArgMin -------------------------------------------------------------------------


@importer("ArgMax", "ArgMin", since=13)
def import_arg_reduce(ctx: ImportContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    data_type = ctx.type_of(node.input[0])
    axis = _normalized_axis(node, int(attrs["axis"]), data_type.rank)
    if data_type.shape[axis] == 0:
        raise ShapeError(
            f"node {node.name!r} ({node.op_type}): axis {axis} of input {node.input[0]!r} is "
            "empty, so there is no element to select"
        )
    ctx.passthrough(node)


# ---- Softmax family --------------------------------------------------------------------------


@importer("Softmax", "LogSoftmax", "Hardmax", since=13)
def import_softmax(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Opset 13+: ``axis`` names the single axis normalized over. The older 2-D coercion is
    rewritten before import: by onnx's version converter for Softmax/LogSoftmax, by
    :func:`coerce_upgraded_hardmax` for Hardmax."""
    attrs = ctx.attrs(node)
    _normalized_axis(node, int(attrs["axis"]), ctx.type_of(node.input[0]).rank)
    ctx.passthrough(node)


# ---- CumSum / CumProd ------------------------------------------------------------------------


@importer("CumSum", "CumProd", since=11)
def import_cumulative(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """The ``axis`` input may be computed at run time (it does not change the output shape);
    when it is a constant it is checked here."""
    axis = ctx.constant_value(node.input[1])
    if axis is not None:
        if axis.size != 1:
            raise ShapeError(
                f"node {node.name!r} ({node.op_type}): axis must hold one value, it has "
                f"shape {list(axis.shape)}"
            )
        _normalized_axis(node, int(axis.reshape(-1)[0]), ctx.type_of(node.input[0]).rank)
    ctx.passthrough(node)


# ---- TopK ------------------------------------------------------------------------------------


@importer("TopK", since=11)
def import_topk(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """K must be a constant: it is the size of both outputs."""
    attrs = ctx.attrs(node)
    data_type = ctx.type_of(node.input[0])
    axis = _normalized_axis(node, int(attrs["axis"]), data_type.rank)
    k = np.asarray(ctx.require_constant(node, node.input[1], "K")).reshape(-1)
    if k.size != 1:
        raise ShapeError(f"node {node.name!r} (TopK): K must hold one value, it has {k.size}")
    if not 0 <= int(k[0]) <= data_type.shape[axis]:
        raise ShapeError(
            f"node {node.name!r} (TopK): K={int(k[0])} but axis {axis} of input "
            f"{node.input[0]!r} has {data_type.shape[axis]} elements"
        )
    ctx.passthrough(node)


# ---- helpers ---------------------------------------------------------------------------------


def _normalized_axis(node: onnx.NodeProto, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(
            f"node {node.name!r} ({node.op_type}): axis {axis} is out of range for an input "
            f"of rank {rank} (valid: {-rank}..{rank - 1})"
        )
    return axis % rank if rank else 0


# ---- Hardmax from opsets before 13 -----------------------------------------------------------


def coerce_upgraded_hardmax(graph: onnx.GraphProto) -> None:
    """Give Hardmax nodes of a model upgraded from opset < 13 their old meaning, in place.

    Before opset 13 Hardmax flattened its input to 2-D at ``axis`` (default 1) and took the
    maximum over the whole trailing block; from 13 on it works along one axis. onnx's version
    converter rewrites Softmax and LogSoftmax for this change but only relabels Hardmax, which
    would silently change results. Call this on a graph just upgraded from opset < 13: every
    Hardmax there has the old meaning and becomes Flatten -> Hardmax(axis=-1) -> Reshape.
    """
    names = _all_names(graph)
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        _coerce_subgraphs(node)
        if node.op_type != "Hardmax" or node.domain not in ("", "ai.onnx"):
            rewritten.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        source, target = node.input[0], node.output[0]
        shape, flat, hard = (
            _unused(names, f"{target}_hardmax_{p}") for p in ("shape", "2d", "max")
        )
        base = node.name or target
        rewritten += [
            onnx.helper.make_node("Shape", [source], [shape], name=f"{base}_shape"),
            onnx.helper.make_node("Flatten", [source], [flat], name=f"{base}_flatten", axis=axis),
            onnx.helper.make_node("Hardmax", [flat], [hard], name=node.name, axis=-1),
            onnx.helper.make_node("Reshape", [hard, shape], [target], name=f"{base}_reshape"),
        ]
    del graph.node[:]
    graph.node.extend(rewritten)


def _coerce_subgraphs(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            coerce_upgraded_hardmax(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                coerce_upgraded_hardmax(sub)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    names |= {n for node in graph.node for n in (*node.input, *node.output)}
    return names


def _unused(names: set[str], base: str) -> str:
    name, i = base, 0
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return name

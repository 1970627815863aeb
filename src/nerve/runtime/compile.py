"""``nerve.compile``: model in, Program out (frontend -> compiler -> engines)."""

from __future__ import annotations

from typing import Any

import onnx

from nerve.compiler import compile as compile_plan
from nerve.compiler.targets import Target
from nerve.engines import get_engine
from nerve.frontend.onnx import ShapeSpec, load_onnx
from nerve.frontend.onnx.loader import ModelSource
from nerve.ir import Graph
from nerve.runtime.program import Program


def load_graph(model: ModelSource | Graph, shapes: ShapeSpec | None = None) -> Graph:
    """The IR graph of ``model`` (a path, bytes, an onnx.ModelProto or an ir.Graph)."""
    if isinstance(model, Graph):
        return model
    return load_onnx(model, shapes)


def compile(
    model: ModelSource | Graph | onnx.ModelProto,
    target: str | Target = "host",
    shapes: ShapeSpec | None = None,
    **options: Any,
) -> Program:
    """Compile ``model`` for ``target`` and return a runnable :class:`Program`.

    >>> import numpy as np, nerve
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    >>> nerve.compile(helper.make_model(g), shapes={"x": (4,)}).inputs[0].shape
    (4,)
    """
    graph = load_graph(model, shapes)
    plan = compile_plan(graph, target, options)
    executables = [get_engine(seg.engine).build(seg, plan) for seg in plan.segments]
    return Program(plan, executables)

"""``nerve.compile``: model in, Program out (frontend -> compiler -> engines)."""

from __future__ import annotations

from typing import Any

import onnx

from nerve.compiler import compile as compile_plan
from nerve.compiler.check import CheckReport, check_graph
from nerve.compiler.targets import Target
from nerve.engines import get_engine
from nerve.engines.host import evaluate as host_evaluate
from nerve.engines.host.registry import get_kernel
from nerve.errors import InputError
from nerve.frontend.onnx import ConstantSpec, ShapeSpec, load_onnx
from nerve.frontend.onnx.loader import ModelSource
from nerve.ir import Graph
from nerve.runtime.program import Program


def load_graph(
    model: ModelSource | Graph,
    shapes: ShapeSpec | None = None,
    constants: ConstantSpec | None = None,
) -> Graph:
    """The IR graph of ``model`` (a path, bytes, an onnx.ModelProto or an ir.Graph)."""
    if isinstance(model, Graph):
        if constants:
            raise InputError(
                "constants= binds inputs of an ONNX model; an ir.Graph is already built, so "
                "add the values to it with graph.add_constant instead"
            )
        return model
    return load_onnx(model, shapes, constants)


def compile(
    model: ModelSource | Graph | onnx.ModelProto,
    target: str | Target = "host",
    shapes: ShapeSpec | None = None,
    constants: ConstantSpec | None = None,
    **options: Any,
) -> Program:
    """Compile ``model`` for ``target`` and return a runnable :class:`Program`.

    ``shapes`` fixes input shapes (``{"x": (1, 3, 224, 224)}``) or symbolic dimensions
    (``{"batch": 1}``). ``constants`` binds inputs to values at compile time
    (``{"shape": np.array([1, -1])}``): each becomes a constant of the program instead of an
    input, so the shapes that depend on it (a Reshape's target, a Slice's bounds) are static.

    >>> import numpy as np, nerve
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    >>> nerve.compile(helper.make_model(g), shapes={"x": (4,)}).inputs[0].shape
    (4,)
    """
    graph = load_graph(model, shapes, constants)
    # The host kernels evaluate constant subgraphs: the compiler cannot import engines itself.
    plan = compile_plan(graph, target, options, evaluate=host_evaluate)
    executables = [get_engine(seg.engine).build(seg, plan) for seg in plan.segments]
    return Program(plan, executables)


def _host_has_kernel(op_type: str, domain: str) -> bool:
    return get_kernel(op_type, domain) is not None


def check_graph_with_host(
    graph: Graph, target: str | Target = "host", *, fix: bool = False
) -> CheckReport:
    """:func:`nerve.compiler.check.check_graph` with the host engine's evaluator and kernels."""
    return check_graph(graph, target, fix=fix, evaluate=host_evaluate,
                       supported=_host_has_kernel)


def check(
    model: ModelSource | Graph | onnx.ModelProto,
    target: str | Target = "host",
    shapes: ShapeSpec | None = None,
    *,
    fix: bool = False,
) -> CheckReport:
    """Every restriction of ``target`` that ``model`` breaks, as a report object.

    ``report.errors`` / ``.warnings`` / ``.infos`` list Diagnostics (code, class, severity,
    node, message, fix); ``report.ok`` is False while an error remains; ``fix=True`` repairs
    what the catalog can repair first and lists it in ``report.fixed``. ``str`` of
    ``report.format()`` is what ``nerve check`` prints.

    >>> import nerve
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    >>> report = nerve.check(helper.make_model(g), "ane")
    >>> report.ok, sorted({d.code for d in report.errors})
    (False, ['ANE-R04'])
    """
    return check_graph_with_host(load_graph(model, shapes), target, fix=fix)

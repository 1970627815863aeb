"""``nerve.compile``: model in, Program out (frontend -> compiler -> engines)."""

from __future__ import annotations

from typing import Any

import onnx

from nerve.compiler import compile as compile_plan
from nerve.compiler.check import CheckReport, check_graph
from nerve.compiler.pipeline import key_extra
from nerve.compiler.plan import Plan
from nerve.compiler.targets import Target, get_target
from nerve.engines import Executable, get_engine
from nerve.engines.host import evaluate as host_evaluate
from nerve.engines.host.registry import get_kernel
from nerve.errors import InputError
from nerve.frontend.onnx import ConstantSpec, ShapeSpec, load_onnx
from nerve.frontend.onnx.loader import ModelSource
from nerve.ir import Graph, structural_key
from nerve.runtime import budget
from nerve.runtime import cache as program_cache
from nerve.runtime.program import Program
from nerve.runtime.serialize import Origin


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

    The program cache (:mod:`nerve.runtime.cache`) serves structures compiled before, in this
    process or another (``program.report.cache`` says ``hit``, ``miss`` or ``off``); a hit runs
    no pass and does not count against the target's compile budget. ``cache=False`` compiles
    without it; ``cache=ProgramCache(...)`` uses that cache.
    """
    cache_option = options.pop("cache", True)
    graph = load_graph(model, shapes, constants)
    tgt = get_target(target)
    extra = key_extra(tgt, options)
    cache = program_cache.resolve(cache_option) if program_cache.cacheable(tgt) else None
    if cache is None:
        plan = _run_passes(graph, tgt, options)
        plan.report.cache = "off"
        executables = build_executables(plan)
    else:
        key = structural_key(graph, extra)
        # One compile per structure, even across processes: lookup, compile and store run
        # under the key's lock, so a second process waits and then finds the entry.
        with cache.claim(key):
            cached = cache.lookup(key)
            if cached is not None:
                plan = program_cache.bind_weights(
                    cached, graph.weights, "plan from the program cache: no pass ran")
            else:
                cache.prepare(key)
                plan = _run_passes(graph, tgt, options)
            plan.artifact_dir = cache.artifact_dir(key)
            executables = build_executables(plan)
            if cached is None:
                cache.store(plan, key)
    program = Program(plan, executables)
    structure = graph.copy()
    structure.weights = {}
    program.origin = Origin(structure, dict(options), constants, extra)
    return program


def _run_passes(graph: Graph, target: Target, options: dict[str, Any]) -> Plan:
    budget.charge(target)  # a compile that runs the passes counts against the budget
    # The host kernels evaluate constant subgraphs: the compiler cannot import engines itself.
    return compile_plan(graph, target, options, evaluate=host_evaluate)


def build_executables(plan: Plan) -> list[Executable]:
    """One executable per segment of ``plan``, from the segment's engine."""
    return [get_engine(seg.engine).build(seg, plan) for seg in plan.segments]


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

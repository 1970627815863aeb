"""``compile(graph, target, options) -> Plan``: the five passes in order, each timed.

    normalize -> [restriction check] -> fuse -> precision -> layout -> plan

After normalize the target's restriction catalog runs (``check`` option): an error-severity
diagnostic stops the compile with a :class:`~nerve.errors.RestrictionError` listing every
violation. Each pass is verified (:func:`nerve.ir.verify`) so a pass bug is caught at the pass.

The compiler cannot import engines (they sit above it); numeric constant folding needs an
evaluator, so callers pass one: ``nerve.compile`` passes the host engine's
``nerve.engines.host.evaluate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from nerve.compiler.context import Evaluator, KernelQuery, PassContext
from nerve.compiler.passes.fuse import fuse
from nerve.compiler.passes.layout import layout
from nerve.compiler.passes.normalize import normalize
from nerve.compiler.passes.plan import plan as plan_pass
from nerve.compiler.passes.precision import precision
from nerve.compiler.plan import Plan
from nerve.compiler.report import CompileReport, PassRecord
from nerve.compiler.targets import Target, get_target
from nerve.errors import CompileError, GraphError, RestrictionError
from nerve.ir import Graph, structural_key, verify

GraphPass = Callable[[Graph, PassContext], Graph]

# The graph-to-graph passes, in order; the plan pass follows them.
PASSES: list[tuple[str, GraphPass]] = [
    ("normalize", normalize),
    ("fuse", fuse),
    ("precision", precision),
    ("layout", layout),
]
PASS_NAMES = [name for name, _ in PASSES] + ["plan"]

# observer(pass name, graph after it): for --dump-ir and debugging.
Observer = Callable[[str, Graph], None]


def compile(
    graph: Graph,
    target: str | Target = "host",
    options: Mapping[str, Any] | None = None,
    *,
    evaluate: Evaluator | None = None,
    supported: KernelQuery | None = None,
    observer: Observer | None = None,
) -> Plan:
    """Lower ``graph`` to a Plan for ``target``. The caller's graph is not modified.

    Options (all optional): ``fuse`` (True), ``fold_constants`` (True),
    ``fold_max_elements`` (65536), ``fix`` (True: normalize repairs fixable restrictions),
    ``check`` (True: restriction errors stop the compile), ``fallback`` (True: unsupported
    nodes run on host), ``precision`` (the target's default policy), ``in_place`` (True).

    >>> from nerve.ir import Graph, TensorType, DType
    >>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (2,))); g.set_outputs(["x"])
    >>> compile(g).segments
    []
    """
    tgt = get_target(target)
    opts = dict(options or {})
    report = CompileReport(target=tgt.name)
    key = plan_key(graph, tgt, opts)
    work = graph.copy()
    params = dict(graph.params)
    ctx = PassContext.new(work, tgt, opts, evaluate=evaluate, supported=supported)
    for name, fn in PASSES:
        work = _timed(name, fn, work, ctx, report)
        if observer is not None:
            observer(name, work)
        if name == "normalize" and ctx.option("check"):
            _check(work, ctx, report)
    record = PassRecord("plan", 0.0, len(work.nodes), len(work.nodes))
    ctx.record = record
    start = time.perf_counter()
    result = plan_pass(work, ctx, key=key, report=report, params=params)
    record.seconds = time.perf_counter() - start
    report.passes.append(record)
    result.diagnostics = list(report.diagnostics)
    if observer is not None:
        observer("plan", work)
    return result


def key_extra(target: Target, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a plan's structural key hashes besides the graph: target, features, options."""
    return {"target": target.name, "features": list(target.features),
            "options": dict(options or {})}


def plan_key(
    graph: Graph, target: str | Target = "host", options: Mapping[str, Any] | None = None
) -> str:
    """The structural key :func:`compile` gives the Plan of ``graph`` (no pass runs): the
    program cache looks plans up by it before compiling."""
    return structural_key(graph, key_extra(get_target(target), options))


def _timed(
    name: str, fn: GraphPass, graph: Graph, ctx: PassContext, report: CompileReport
) -> Graph:
    record = PassRecord(name, 0.0, len(graph.nodes), 0)
    ctx.record = record
    start = time.perf_counter()
    graph = fn(graph, ctx)
    record.seconds = time.perf_counter() - start
    record.nodes_out = len(graph.nodes)
    report.passes.append(record)
    ctx.book.graph = graph
    try:
        verify(graph)
    except GraphError as exc:
        raise CompileError(f"the {name} pass left a broken graph ({exc}) — a compiler bug") from exc
    return graph


def _check(graph: Graph, ctx: PassContext, report: CompileReport) -> None:
    from nerve.compiler.restrictions import evaluate_catalog, format_diagnostics

    diagnostics = evaluate_catalog(graph, ctx.target, ctx.placement, ctx.supported)
    report.diagnostics = diagnostics
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise RestrictionError(
            f"the model breaks {len(errors)} restrictions of target {ctx.target.name!r}:\n"
            + format_diagnostics(errors)
            + "\nRun `nerve check MODEL --target "
            + ctx.target.name
            + "` for the full list, or compile with check=False to skip the check.",
            errors,
        )

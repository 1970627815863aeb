"""``compile(graph, target, options) -> Plan``: the passes in order, each timed and reported.

The five passes (normalize, fuse, precision, layout, plan) each live in ``passes/``. Each graph
pass is a function ``(graph, target, options, report) -> graph``; the last step partitions the
graph into engine segments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from nerve.compiler.plan import Plan, Segment
from nerve.compiler.report import CompileReport, PassRecord
from nerve.compiler.targets import Target, get_target
from nerve.ir import Graph, structural_key, verify

GraphPass = Callable[[Graph, Target, Mapping[str, Any], PassRecord], Graph]

# The graph-to-graph passes, in order. They arrive with the compiler issue; the seam is here.
PASSES: list[tuple[str, GraphPass]] = []


def compile(
    graph: Graph, target: str | Target = "host", options: Mapping[str, Any] | None = None
) -> Plan:
    """Lower ``graph`` to a Plan for ``target``.

    >>> from nerve.ir import Graph, TensorType, DType
    >>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (2,))); g.set_outputs(["x"])
    >>> compile(g).segments
    []
    """
    tgt = get_target(target)
    opts = dict(options or {})
    report = CompileReport(target=tgt.name)
    key = structural_key(
        graph, {"target": tgt.name, "features": list(tgt.features), "options": opts}
    )
    for name, fn in PASSES:
        record = PassRecord(name, 0.0, len(graph.nodes), 0)
        start = time.perf_counter()
        graph = fn(graph, tgt, opts, record)
        record.seconds = time.perf_counter() - start
        record.nodes_out = len(graph.nodes)
        report.passes.append(record)
        verify(graph)
    start = time.perf_counter()
    segments = [Segment(0, tgt.engine, list(graph.nodes))] if graph.nodes else []
    report.passes.append(
        PassRecord("plan", time.perf_counter() - start, len(graph.nodes), len(graph.nodes))
    )
    return Plan(graph=graph, target=tgt, segments=segments, key=key, report=report, options=opts)

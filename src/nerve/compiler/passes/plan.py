"""Pass 5, plan: partition into engine segments, schedule, and plan memory.

* **partition** — each node goes to the target's engine when the target supports it
  (``Target.supports``) and no fix pinned it elsewhere; otherwise to ``host``, or, with
  ``fallback=False``, the compile stops naming every such node. Consecutive nodes on one
  engine form a segment.
* **schedule** — the graph's topological order (segments run in that order).
* **memory** — :func:`nerve.compiler.memplan.plan_memory` over all intermediates.
* **recipes** — one bake recipe per weight slot the final graph reads.
"""

from __future__ import annotations

from nerve.compiler.bake import identity_recipe
from nerve.compiler.context import PassContext
from nerve.compiler.memplan import plan_memory
from nerve.compiler.plan import Plan, Segment
from nerve.compiler.report import CompileReport
from nerve.compiler.targets import Target
from nerve.errors import CompileError
from nerve.ir import Graph, Param

HOST = "host"


def assign_engines(
    graph: Graph, target: Target, placement: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The engine of each node, and why each node that left the target's engine left it."""
    placement = placement or {}
    engines: list[str] = []
    why: dict[str, str] = {}
    for node in graph.nodes:
        if node.name in placement:
            engines.append(placement[node.name])
            why[node.name] = "placed by a fix"
            continue
        reason = target.supports(node, graph)
        if reason is None:
            engines.append(target.engine)
        else:
            engines.append(HOST)
            why[node.name] = reason
    return engines, why


def segments_of(graph: Graph, engines: list[str]) -> list[Segment]:
    """Maximal runs of consecutive nodes on one engine."""
    segments: list[Segment] = []
    for node, engine in zip(graph.nodes, engines):
        if segments and segments[-1].engine == engine:
            segments[-1].nodes.append(node)
        else:
            segments.append(Segment(len(segments), engine, [node]))
    return segments


def plan(
    graph: Graph, ctx: PassContext, *, key: str, report: CompileReport,
    params: dict[str, Param],
) -> Plan:
    """The Plan for ``graph`` (see the module docstring)."""
    engines, why = assign_engines(graph, ctx.target, ctx.placement)
    fallen = {n: r for n, r in why.items() if ctx.target.engine != HOST}
    if fallen and not ctx.option("fallback"):
        listed = "; ".join(f"{n!r}: {r}" for n, r in list(fallen.items())[:10])
        raise CompileError(
            f"{len(fallen)} nodes cannot run on target {ctx.target.name!r} and fallback=False: "
            f"{listed}. Allow fallback to the host engine or change the model"
        )
    if fallen:
        ctx.count("host_fallback", len(fallen))
    segments = segments_of(graph, engines)
    external = set(graph.input_names) | set(graph.output_names)
    external |= set(graph.constants) | set(graph.params)
    memory = plan_memory(graph.nodes, graph.types, external=external,
                         in_place=bool(ctx.option("in_place")))
    recipes = {
        slot: ctx.book.recipes.get(slot) or identity_recipe(param)
        for slot, param in graph.params.items()
    }
    report.peak_scratch_bytes = memory.arena_bytes
    report.intermediate_bytes = memory.total_bytes
    report.peak_live_bytes = memory.peak_live_bytes
    report.intermediates = len(memory.buffers)
    report.segments = [(s.engine, len(s.nodes)) for s in segments]
    report.bake_recipes = sum(1 for r in recipes.values() if r.steps)
    report.notes.extend(ctx.notes)
    return Plan(
        graph=graph, target=ctx.target, segments=segments, key=key, report=report,
        options=dict(ctx.options), bake_recipes=recipes, memory=memory,
        layouts=dict(ctx.layouts), params=params,
    )


__all__ = ["assign_engines", "plan", "segments_of"]

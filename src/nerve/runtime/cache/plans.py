"""Plans as the cache holds them: without weights, and never shared with a program."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from nerve.compiler.plan import Plan, Segment
from nerve.compiler.targets import Target, get_target
from nerve.errors import TargetError


def cacheable(target: Target) -> bool:
    """Only the built-in targets are cached: a custom Target may share a built-in's name."""
    try:
        return get_target(target.name) is target
    except TargetError:
        return False


def copy_plan(plan: Plan, weights: Mapping[str, np.ndarray] | None = None) -> Plan:
    """A copy of ``plan`` that shares no mutable container with it, holding ``weights``.

    Entries and the plans handed to programs are kept apart this way, so code that adjusts
    its program's plan (a test retargeting segments) can never change a cached entry. Arrays
    (constants) are shared: they are read-only.
    """
    graph = plan.graph.copy()
    graph.weights = dict(weights or {})
    index = {id(n): i for i, n in enumerate(plan.graph.nodes)}
    segments = [
        Segment(s.index, s.engine, [graph.nodes[index[id(n)]] for n in s.nodes])
        for s in plan.segments
    ]
    report = dataclasses.replace(plan.report, passes=list(plan.report.passes),
                                 notes=list(plan.report.notes),
                                 segments=list(plan.report.segments),
                                 diagnostics=list(plan.report.diagnostics))
    return dataclasses.replace(
        plan, graph=graph, segments=segments, report=report, options=dict(plan.options),
        bake_recipes=dict(plan.bake_recipes), layouts=dict(plan.layouts),
        params=dict(plan.params), diagnostics=list(plan.diagnostics),
        memory=dataclasses.replace(plan.memory, buffers=dict(plan.memory.buffers)),
        artifact_dir=None,
    )


def strip_weights(plan: Plan) -> Plan:
    """A copy of the plan without weights: what an entry holds."""
    return copy_plan(plan)


def bind_weights(plan: Plan, weights: Mapping[str, np.ndarray], note: str) -> Plan:
    """A copy of the cached ``plan`` holding ``weights``, its report saying "hit"."""
    bound = copy_plan(plan, weights)
    bound.report.cache = "hit"
    bound.report.notes.append(note)
    return bound


def plan_nbytes(plan: Plan) -> int:
    """An estimate of a plan's memory footprint, for an entry with no size on disk."""
    g = plan.graph
    return sum(a.nbytes for a in g.constants.values()) + 400 * len(g.nodes) + 200 * len(g.types)

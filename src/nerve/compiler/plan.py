"""The Plan: what the compiler hands to engines.

A Plan holds the final graph, its partition into engine segments, the bake recipes that turn
Params into the weight arena, the CompileReport and the structural key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerve.compiler.report import CompileReport
from nerve.compiler.targets import Target
from nerve.ir import Graph, Node


@dataclass
class Segment:
    """A run of consecutive nodes executed by one engine."""

    index: int
    engine: str
    nodes: list[Node]

    @property
    def inputs(self) -> list[str]:
        produced = {o for n in self.nodes for o in n.outputs}
        seen: dict[str, None] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i and i not in produced:
                    seen.setdefault(i)
        return list(seen)

    @property
    def outputs(self) -> list[str]:
        return [o for n in self.nodes for o in n.outputs if o]


@dataclass
class Plan:
    graph: Graph
    target: Target
    segments: list[Segment]
    key: str
    report: CompileReport
    options: dict[str, object] = field(default_factory=dict)

    def keep_alive(self, segment: Segment) -> set[str]:
        """Names a segment must not free: graph outputs and what later segments read."""
        keep = set(self.graph.output_names)
        for later in self.segments[segment.index + 1 :]:
            keep.update(later.inputs)
        return keep

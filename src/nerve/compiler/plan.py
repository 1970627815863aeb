"""The Plan: what the compiler hands to engines.

A Plan holds the final graph, its partition into engine segments, the memory plan (an offset
in one scratch arena for every intermediate), the layout of every tensor, the bake recipes that
turn the model's Params into the weight slots the graph reads, the CompileReport and the
structural key.

Weights: ``plan.params`` are the model's Params (the handles ``update_weights`` takes).
``plan.graph.params`` are those plus the derived weight *slots* passes created (BatchNorm
folded into a conv, a pre-transposed matrix, a cast); every one has a recipe in
``plan.bake_recipes`` (a plain Param's recipe is the identity). ``plan.graph.weights`` holds
only the model's weight data, by Param name; :func:`nerve.compiler.bake.run_recipes` turns it
into the data of every slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nerve.compiler.bake import BakeRecipe
from nerve.compiler.memplan import MemoryPlan
from nerve.compiler.report import CompileReport
from nerve.compiler.targets import Target
from nerve.ir import Graph, Node, Param

if TYPE_CHECKING:
    from nerve.compiler.restrictions import Diagnostic


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
    bake_recipes: dict[str, BakeRecipe] = field(default_factory=dict)
    memory: MemoryPlan = field(default_factory=MemoryPlan)
    layouts: dict[str, str] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # Where engines keep build artifacts (shared libraries) for this plan: a directory of the
    # runtime's program cache entry, set before engine.build; None when the cache is off.
    # Machine-local, so never serialized (see nerve.runtime.cache).
    artifact_dir: Path | None = None

    def keep_alive(self, segment: Segment) -> set[str]:
        """Names a segment must not free: graph outputs and what later segments read."""
        keep = set(self.graph.output_names)
        for later in self.segments[segment.index + 1 :]:
            keep.update(later.inputs)
        return keep

    def transformed_slots(self) -> dict[str, BakeRecipe]:
        """The recipes that do something (not a plain Param passed through)."""
        return {s: r for s, r in self.bake_recipes.items() if r.steps}

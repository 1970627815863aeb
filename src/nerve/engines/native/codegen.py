"""Generate the C translation unit of one native segment.

The unit defines one entry point, ``int64_t nerve_seg_<hash>(void *const *P, char *S, int nt)``:
``P`` is the pointer table (inputs, outputs, weights — fixed slots set once at load), ``S`` the
scratch arena, ``nt`` the thread count. It returns 0, or 1 + the index of a step that found bad
data (an index out of range). Helper functions are ``static`` and prefixed with the segment's
hash, so many segments can share one library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerve.engines.native.buffers import BufferPlan, plan_buffers, root_of
from nerve.engines.native.lower import Lowering
from nerve.engines.native.packing import PackSpec
from nerve.engines.native.steps import PREFIX, Emitter, Step, describe
from nerve.engines.native.toolchain import source_hash
from nerve.ir import Graph, Node

ENTRY = "@ENTRY@"


@dataclass
class SegmentCode:
    key: str  # hash of the code and everything that compiles it
    symbol: str
    code: str
    buffers: BufferPlan
    steps: list[Step]
    outputs: list[str]  # tensors the segment hands back through the environment
    views: dict[str, str]  # output tensor -> the tensor whose memory it reinterprets
    packed: dict[str, PackSpec] = field(default_factory=dict)  # packed weight slots


def generate(
    graph: Graph,
    nodes: list[Node],
    keep: set[str],
    identity: str,
    arena_offsets: dict[str, int] | None = None,
    features: tuple[str, ...] = (),
) -> SegmentCode:
    """Lower ``nodes`` and emit their C. ``keep``: tensors needed after these nodes;
    ``features``: the target's ISA features (they select kernel variants)."""
    produced = {o for n in nodes for o in n.outputs if o}
    wanted = [o for n in nodes for o in n.outputs if o and o in keep]
    lowering = Lowering(graph, nodes, set(wanted), features)
    steps = lowering.steps
    buffers = plan_buffers(
        lowering.types,
        set(graph.params) | set(graph.weights) | set(lowering.packed),
        set(graph.constants),
        [s.reads() for s in steps],
        [s.writes() for s in steps],
        [s.workspace() for s in steps],
        lowering.alias,
        set(wanted),
        arena_offsets,
    )
    em = Emitter(buffers)
    body: list[str] = []
    for i, step in enumerate(steps):
        body.append(describe(step.nodes))
        body.extend(step.emit(em, i))
    lines = [f"/* native segment: {len(nodes)} nodes in {len(steps)} steps */", *em.definitions]
    lines.append(f"int64_t {ENTRY}(void *const *P, char *S, int nt) {{")
    lines.append("    (void)P; (void)S; (void)nt;")
    lines.extend("    " + s for s in body)
    lines += ["    return 0;", "}", ""]
    template = "\n".join(lines)
    key = source_hash(identity, template)
    symbol = f"nerve_seg_{key[:20]}"
    code = template.replace(PREFIX, f"n{key[:12]}_").replace(ENTRY, symbol)
    views = {
        name: root_of(lowering.alias, name)
        for name in wanted
        if name in lowering.alias and name in produced
    }
    return SegmentCode(key, symbol, code, buffers, steps, wanted, views, dict(lowering.packed))

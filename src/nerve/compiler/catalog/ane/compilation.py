"""ANE restrictions on compilation limits and graph structure: compiles per process, I/O per
program, program size, and outputs a program must compute itself."""

from __future__ import annotations

from collections.abc import Iterator

from nerve.compiler.restrictions import (
    COMPILATION_LIMITS,
    ERROR,
    GRAPH_STRUCTURE,
    INFO,
    WARNING,
    CheckContext,
    Diagnostic,
    Restriction,
    restriction,
)
from nerve.compiler.targets import ane


@restriction(
    "ane", "ANE-R05", COMPILATION_LIMITS, ERROR, "about 119 compiles per process",
    fix="reduce host fallbacks (each splits the model into more programs), or compile in "
        "several processes; nerve caches programs so each compiles once",
)
def compile_budget(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #5 (§4.1 [P], prior work; §5 [C]): the ANE compiler leaks state; about 119
    compiles per process, after which compiles fail silently. Orion keeps a budget of 119
    and restarted the process (``exec()``, ~50 ms, #15) when it ran out."""
    budget = ctx.target.compile_budget
    if budget is not None and len(ctx.programs) > budget:
        yield r.diagnose(f"the model needs {len(ctx.programs)} ANE programs; a process can "
                         f"compile about {budget}")


@restriction(
    "ane", "ANE-R24", COMPILATION_LIMITS, ERROR, "at most 16 inputs and outputs per program",
    fix="merge inputs (e.g. stack tensors of one shape) or split the program",
)
def io_count(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: Orion's IR holds at most 16 graph inputs/outputs (fixed arrays in
    compiler/graph.h) — the limit of the reference MIL toolchain."""
    for p in ctx.programs:
        n = len(p.inputs) + len(p.outputs)
        if n > ane.MAX_PROGRAM_IO:
            yield r.diagnose(f"a program with {n} inputs and outputs (> 16)", node=p.nodes[0])


@restriction(
    "ane", "ANE-R25", GRAPH_STRUCTURE, WARNING, "returned values must be computed in-program",
    fix="nothing to do: nerve returns inputs and constants that are outputs from the host",
)
def passthrough_outputs(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #14 (§4.1, README [R]; §3.5 [C]): the return tuple must name live nodes of the
    optimised program — an output that is an input or a constant gives InvalidMILProgram."""
    g = ctx.graph
    for v in g.outputs:
        if v.name in g.input_names or v.name in g.constants or v.name in g.params:
            yield r.diagnose(f"output {v.name!r} is not computed by any node", tensor=v.name)


@restriction(
    "ane", "ANE-R27", COMPILATION_LIMITS, INFO, "small programs leave the ANE idle",
    fix="keep 16-64 ops per program (fewer host fallbacks); dispatch costs ~0.1 ms per eval",
)
def small_programs(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§10.2 [P*] (prior work): deep graphs of 16-64 ops reach ~94% utilisation against ~30%
    for a single op; each eval costs ~0.095 ms of XPC + IOKit dispatch."""
    for p in ctx.programs:
        if len(p.nodes) < 16:
            yield r.diagnose(f"a program of {len(p.nodes)} ops", node=p.nodes[0])

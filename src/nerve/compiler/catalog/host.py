"""The ``host`` target's restrictions: what even the numpy fallback cannot do."""

from __future__ import annotations

import os
from collections.abc import Iterator

from nerve.compiler.memplan import plan_memory
from nerve.compiler.restrictions import (
    ERROR,
    OPERATOR_SUPPORT,
    RESOURCE_LIMITS,
    WARNING,
    CheckContext,
    Diagnostic,
    Restriction,
    restriction,
)


@restriction(
    "host", "HOST-R01", OPERATOR_SUPPORT, ERROR, "op without a host kernel",
    fix="implement the op's host kernel (docs/adding-an-op.md) or replace the op in the model",
)
def missing_kernel(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """The host engine runs only ops with a registered numpy kernel
    (``nerve.engines.host.registry``); checked when the caller says which kernels exist."""
    if ctx.supported is None:
        return
    for node in ctx.graph.nodes:
        if not ctx.supported(node.op_type, node.domain):
            yield r.diagnose(f"{node.qualified_op} has no host kernel", node=node)


def physical_memory() -> int | None:
    """Bytes of physical memory, where the OS says."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


@restriction(
    "host", "HOST-R02", RESOURCE_LIMITS, WARNING, "working memory larger than physical memory",
    fix="run with a smaller batch or sequence, or on a machine with more memory",
)
def memory_exceeds_ram(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """The scratch arena of the memory plan (nerve.compiler.memplan) plus the weights must fit
    in physical memory (``os.sysconf``), or runs swap or fail."""
    limit = ctx.target.limits.scratch_bytes or physical_memory()
    if not limit:
        return
    g = ctx.graph
    external = set(g.input_names) | set(g.output_names) | set(g.constants) | set(g.params)
    arena = plan_memory(g.nodes, g.types, external=external).arena_bytes
    weights = sum(g.types[p].nbytes for p in g.params)
    if arena + weights > limit:
        yield r.diagnose(
            f"the model needs {arena + weights:,} B of working memory (scratch {arena:,} B + "
            f"weights {weights:,} B); this machine has {limit:,} B"
        )

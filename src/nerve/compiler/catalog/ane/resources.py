"""ANE restrictions on resource limits: channel counts, surface sizes, weights per program,
on-chip SRAM and tensor rank."""

from __future__ import annotations

from collections.abc import Iterator

from nerve.compiler.catalog.ane.common import host_fixer, is_op, nbytes
from nerve.compiler.restrictions import (
    ERROR,
    RESOURCE_LIMITS,
    WARNING,
    CheckContext,
    Diagnostic,
    Program,
    Restriction,
    restriction,
)
from nerve.compiler.targets import ane
from nerve.ir import Graph, Node


def _channels(node: Node, graph: Graph) -> tuple[int, int] | None:
    if is_op(node, "Conv"):
        return ane.conv_channels(node, graph)
    if is_op(node, "MatMul", "Gemm"):
        a, out = graph.types[node.inputs[0]], graph.types[node.outputs[0]]
        k = a.shape[0] if is_op(node, "Gemm") and node.attr("transA", 0) else a.shape[-1]
        return int(k), int(out.shape[-1])
    return None


def _too_wide(node: Node, graph: Graph) -> bool:
    ch = _channels(node, graph)
    return ch is not None and (ch[0] >= ane.MAX_CHANNELS or ch[1] > ane.MAX_CHANNELS)


@restriction(
    "ane", "ANE-R09", RESOURCE_LIMITS, ERROR, "very wide convolutions are rejected",
    fix="run the node on the host (CPU fallback, as Orion does for its classifier backward)",
    fixer=host_fixer(_too_wide),
)
def wide_conv(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #16 (§4.1 [P*], §10.5): a conv with 32,000 input channels (the classifier
    backward) is rejected, so it runs on the CPU; with 32,000 *output* channels (classifier
    forward) it compiles (§4.1 notes [C]). nerve flags >= 32,000 input or > 32,000 output
    channels, beyond what was verified."""
    for node in ctx.target_nodes():
        if _too_wide(node, ctx.graph):
            c_in, c_out = _channels(node, ctx.graph) or (0, 0)
            yield r.diagnose(
                f"{node.op_type} with {c_in:,} input and {c_out:,} output channels; the ANE "
                f"rejects convolutions this wide (~{ane.MAX_CHANNELS:,} channels)", node=node,
            )


def _token_hint(ctx: CheckContext, name: str) -> str:
    t = ctx.graph.types[name]
    if (t.rank >= 2 and t.shape[-1] == 1) or (t.rank == 3 and t.shape[1] == 1):
        return " (a 1-token sequence)"
    return ""


@restriction(
    "ane", "ANE-R04", RESOURCE_LIMITS, ERROR, "I/O surfaces need at least 49,152 bytes",
    fix="pad the sequence axis (to 16 positions or more, token at position 0) and mask the "
        "padding, so each surface reaches 49,152 B",
)
def min_surface(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #4 (§4.1 [P*][R]): the minimum IOSurface is ~49,152 B (768 channels x 16 x 4 B
    fp32); smaller surfaces compile but fail at eval with 0x1d — sequence length 1 failed
    (§10.3), so Orion decodes at a fixed seq 16 with the token at position 0 (§8)."""
    for p in ctx.programs:
        for name in dict.fromkeys((*p.inputs, *p.outputs)):
            size = nbytes(ctx, name)
            if size < ane.MIN_IO_BYTES:
                yield r.diagnose(
                    f"{name!r} is {size:,} B{_token_hint(ctx, name)}; ANE surfaces under "
                    f"{ane.MIN_IO_BYTES:,} B fail at eval (status 0x1d)", tensor=name,
                )


def _inline_scalars(p: Program, graph: Graph) -> bool:
    return any(
        i in graph.constants and graph.constants[i].size == 1
        for n in p.nodes if n.op_type in ("Add", "Mul", "Sub", "Pow") for i in n.inputs
    )


@restriction(
    "ane", "ANE-R19", RESOURCE_LIMITS, ERROR, "at most 16 weight tensors per program",
    fix="split the model into several programs (fewer weights each), e.g. one per layer",
)
def weights_per_program(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§4.2 [3P] (community issue #3 of the Orion repository, M4 Max, reproduced on M4):
    at most 16 BLOBFILE-backed weight tensors per program (a count, not bytes; a linear with
    bias costs 2); an elementwise op with an inline scalar constant lowers it to 15."""
    for p in ctx.programs:
        limit = ane.MAX_PROGRAM_WEIGHTS - (1 if _inline_scalars(p, ctx.graph) else 0)
        if len(p.weights) > limit:
            yield r.diagnose(
                f"a program embeds {len(p.weights)} weight tensors; the limit is {limit}",
                node=p.nodes[0],
            )


@restriction(
    "ane", "ANE-R23", RESOURCE_LIMITS, WARNING, "tensors beyond the 32 MB SRAM spill",
    fix="expect ~30% lower throughput; tile the op or shorten the sequence to stay on-chip",
)
def sram(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§10.2 [P*]: 32 MB of on-chip SRAM, ~30% slower when exceeded; Orion's pass_sram.c
    warns for any tensor over 32 MiB (§3.4 [C])."""
    for node in ctx.target_nodes():
        for out in node.outputs:
            if out and nbytes(ctx, out) > ane.SRAM_BYTES:
                yield r.diagnose(f"{out!r} is {nbytes(ctx, out):,} B (> 32 MiB)", node=node,
                                 tensor=out)


@restriction(
    "ane", "ANE-R18", RESOURCE_LIMITS, ERROR, "tensors have at most 4 dimensions",
    fix="reshape to rank 4 or less in the model, or run the node on the host",
    fixer=host_fixer(lambda n, g: _rank_over(n, g) is not None),
)
def rank(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: every tensor of Orion's IR has ``shape[4]`` in the ``[1, C, 1, S]``
    convention; §2.2: the 4-D shape lives in the MIL signature. Rank 5+ cannot be expressed."""
    for node in ctx.target_nodes():
        bad = _rank_over(node, ctx.graph)
        if bad is not None:
            yield r.diagnose(f"{bad!r} has rank {ctx.graph.types[bad].rank} > 4", node=node,
                             tensor=bad)


def _rank_over(node: Node, graph: Graph) -> str | None:
    return next((n for n in (*node.inputs, *node.outputs) if n and graph.types[n].rank > 4),
                None)

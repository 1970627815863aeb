"""ANE restrictions on memory layout: how the I/O surfaces of a program must be sized,
ordered and shaped ([1, C, 1, S])."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from nerve.compiler.catalog.ane.common import model_io, nbytes
from nerve.compiler.restrictions import (
    INFO,
    MEMORY_LAYOUT,
    WARNING,
    CheckContext,
    Diagnostic,
    Restriction,
    restriction,
)


def _sizes_differ(ctx: CheckContext, names: list[str]) -> bool:
    return len({nbytes(ctx, n) for n in names}) > 1


def _sizes(ctx: CheckContext, names: list[str]) -> str:
    """The first few surfaces and their sizes, for a message."""
    return ", ".join(f"{n}: {nbytes(ctx, n):,} B" for n in names[:6])


Side = Literal["inputs", "outputs"]


def _surfaces(ctx: CheckContext, side: Side) -> Iterator[list[str]]:
    """Each program's input or output surface names."""
    for p in ctx.programs:
        yield p.inputs if side == "inputs" else p.outputs


def _uneven_sizes(ctx: CheckContext, r: Restriction, side: Side) -> Iterator[Diagnostic]:
    for names in _surfaces(ctx, side):
        if _sizes_differ(ctx, names):
            yield r.diagnose(f"{side} of different sizes ({_sizes(ctx, names)})", tensor=names[0])


@restriction(
    "ane", "ANE-R02", MEMORY_LAYOUT, WARNING, "output surfaces must all have the same size",
    fix="allocate every output surface at the largest output's size (nerve's ANE binding pads)",
)
def uniform_outputs(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #2 (§4.1 [P*][R]): a multi-output program whose output surfaces differ in
    allocation size fails at eval with status 0x1d; Orion pads by hand (§3.4 [C],
    pass_uniform_outputs.c)."""
    yield from _uneven_sizes(ctx, r, "outputs")


@restriction(
    "ane", "ANE-R13", MEMORY_LAYOUT, WARNING, "input surfaces must all have the same size",
    fix="allocate every input surface at the largest input's size (nerve's ANE binding pads)",
)
def uniform_inputs(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #18 (§4.1 [P*], found with LoRA inputs, §9): multi-input programs need input
    surfaces of identical allocation size, else eval fails with status 0x1d."""
    yield from _uneven_sizes(ctx, r, "inputs")


@restriction(
    "ane", "ANE-R15", MEMORY_LAYOUT, WARNING, "padded surfaces are read packed from byte 0",
    fix="write each tensor packed ([1, C, 1, S], no stride) at the start of its padded surface",
)
def packed_surfaces(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #20 (§4.1 [P*], §9): an oversized surface is read as a packed ``[1, C, 1, S]``
    tensor from byte 0 with no stride; a strided write gives silently wrong data (a ~260x
    smaller LoRA term in Orion's test). Applies whenever R02/R13 force padding."""
    for p in ctx.programs:
        for names in (p.inputs, p.outputs):
            if _sizes_differ(ctx, names):
                small = min(names, key=lambda n: nbytes(ctx, n))
                yield r.diagnose(f"{small!r} will sit in a padded surface", tensor=small)


def _unsorted(names: list[str]) -> bool:
    return len(names) > 1 and names != sorted(names)


def _out_of_order(ctx: CheckContext, r: Restriction, side: Side) -> Iterator[Diagnostic]:
    for names in _surfaces(ctx, side):
        if _unsorted(names):
            yield r.diagnose(f"{side} {names[:6]} are not in alphabetical order", tensor=names[0])


@restriction(
    "ane", "ANE-R03", MEMORY_LAYOUT, WARNING, "outputs bind in alphabetical order",
    fix="bind output surfaces in sorted-name order (nerve's ANE binding does), or rename "
        "outputs so tuple order is alphabetical",
)
def output_order(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #3 (§4.1 [P*][R]): output surfaces bind in the alphabetical order of the MIL
    variable names, not the return-tuple order — silent wrong data (§3.4 validator [C])."""
    yield from _out_of_order(ctx, r, "outputs")


@restriction(
    "ane", "ANE-R14", MEMORY_LAYOUT, WARNING, "inputs bind in alphabetical order",
    fix="bind input surfaces in sorted-name order (nerve's ANE binding does), or rename inputs",
)
def input_order(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #19 (§4.1 [P*], §9): input surfaces bind alphabetically by MIL parameter name;
    only 1 of 6 permutations of Orion's LoRA inputs gave correct results."""
    yield from _out_of_order(ctx, r, "inputs")


@restriction(
    "ane", "ANE-R17", MEMORY_LAYOUT, INFO, "tensors are [1, C, 1, S]",
    fix="nerve converts at the boundary ([S, D] <-> [1, D, 1, S]); shape I/O as [1, C, 1, S] "
        "to skip that per-call transpose",
)
def channel_layout(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§2.2 [C]: an ANE tensor is a flat surface, channel-major ``[C][S]``; the 4-D shape
    ``[1, C, 1, S]`` exists only in the MIL signature (§3.1). Orion transposes ``[seq, d]``
    to ``[d, seq]`` on the CPU on every call. Checked on the model's inputs and outputs that
    ANE programs read or write (surfaces between programs are nerve's to lay out)."""
    for name in model_io(ctx):
        t = ctx.graph.types[name]
        if not (t.rank == 4 and t.shape[0] == 1 and t.shape[2] == 1):
            yield r.diagnose(f"{name!r} is {list(t.shape)}, not [1, C, 1, S]", tensor=name)

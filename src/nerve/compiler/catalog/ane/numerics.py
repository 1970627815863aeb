"""ANE restrictions on numerical behaviour and weight handling: fp16 compute, masks beyond
fp16's range, the fused attention op's ignored causal mask, and weights baked at compile time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nerve.compiler.catalog.ane.common import is_op, model_io
from nerve.compiler.passes import decompose
from nerve.compiler.restrictions import (
    ERROR,
    NUMERICAL,
    WARNING,
    WEIGHT_HANDLING,
    CheckContext,
    Diagnostic,
    Restriction,
    restriction,
)
from nerve.ir import DType


@restriction(
    "ane", "ANE-R06", NUMERICAL, ERROR, "the fused attention op ignores its causal mask",
    fix="write attention out: MatMul -> scale -> + causal mask constant -> Softmax -> MatMul",
    fixer=decompose.causal_attention_to_primitives,
)
def causal_sdpa(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #6 (§4.1 [P*], prior work): the ANE's scaled-dot-product-attention op ignores
    its causal mask — silently wrong attention. Orion decomposes attention explicitly with an
    additive mask constant (§3.2 patterns.c [C])."""
    for node in ctx.target_nodes():
        if is_op(node, "Attention") and node.attr("is_causal", 0):
            yield r.diagnose(
                "Attention with is_causal=1: the ANE would attend to future positions",
                node=node, fixable=decompose.simple_causal_attention(node, ctx.graph),
            )


@restriction(
    "ane", "ANE-R07", WEIGHT_HANDLING, WARNING, "weights are baked at compile time",
    fix="change weights with Program.update_weights (unload -> patch -> reload, no recompile); "
        "keep frequently changing tensors (LoRA A/B) as inputs",
)
def baked_weights(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #7 (§4.1 [P], prior work; §6 [C]): weights are baked into the program when it
    compiles; a loaded program ignores later changes on disk (stale weights) until it is
    unloaded, patched and reloaded (Orion v2's delta reload). Weights are immutable on the
    ANE, so optimizers run on the CPU (§10.5)."""
    weights = sorted({w for p in ctx.programs for w in p.weights})
    if weights:
        yield r.diagnose(f"{len(weights)} weight tensors are baked into the ANE programs",
                         tensor=weights[0])


@restriction(
    "ane", "ANE-R16", NUMERICAL, WARNING, "the ANE computes in fp16",
    fix="expect fp16 rounding (~1e-3 relative); keep values within +-65504 (nerve's ane "
        "precision policy casts at the boundary and clamps weights)",
)
def fp16(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§2.2 [C]: training uses fp16 surfaces, inference fp32 surfaces cast to fp16 inside the
    program; §7.4 [R][C]: fp16 overflow caused NaNs until values were clamped to +-65504.
    §10.2: INT8 is dequantized to fp16 too. Checked on the model's inputs and outputs."""
    for name in model_io(ctx):
        dtype = ctx.graph.types[name].dtype
        if dtype in (DType.FLOAT32, DType.FLOAT64):
            yield r.diagnose(f"{name!r} is {dtype.value}; the ANE computes it in fp16",
                             tensor=name)


@restriction(
    "ane", "ANE-R22", NUMERICAL, ERROR, "masks of -inf overflow fp16",
    fix="use -1e4 for masked positions (clamped automatically with --fix)",
    fixer=decompose.clamp_masks,
)
def infinite_mask(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§4.3 [R][C]: Orion's additive masks use -1e4, not -inf (its causal masks are 0/-1e4
    blobs, §2); fp16's largest magnitude is 65504 and -inf in a softmax gives NaN rows."""
    for node in ctx.target_nodes():
        name = decompose.overflowing_mask(ctx.graph, node)
        if name is not None:
            low = float(np.min(ctx.graph.constants[name]))
            yield r.diagnose(f"constant {name!r} holds {low:g}, beyond fp16's range",
                             node=node, tensor=name)

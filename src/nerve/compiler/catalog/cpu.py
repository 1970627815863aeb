"""The ``cpu`` target's restrictions: the native engine's op coverage and ISA features."""

from __future__ import annotations

from collections.abc import Iterator

from nerve.compiler.restrictions import (
    COMPILATION_LIMITS,
    ERROR,
    INFO,
    NUMERICAL,
    OPERATOR_SUPPORT,
    WARNING,
    CheckContext,
    Diagnostic,
    Restriction,
    restriction,
)
from nerve.ir import DType

_GEMM = ("MatMul", "Gemm", "Conv", "nerve.FusedMatMul", "nerve.FusedConv", "nerve.Attention")


@restriction(
    "cpu", "CPU-R01", OPERATOR_SUPPORT, INFO, "op not in the native engine",
    fix="nothing to do: the node runs on the host engine (numpy), which is slower",
)
def host_fallback(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """The native engine claims the ops listed in ``nerve.compiler.targets.cpu``; the
    partitioner sends every other node to the host engine (DESIGN: Plan, segments)."""
    for node in ctx.graph.nodes:
        why = ctx.target.supports(node, ctx.graph)
        if why is not None:
            yield r.diagnose(f"runs on host: {why}", node=node)


@restriction(
    "cpu", "CPU-R02", OPERATOR_SUPPORT, ERROR, "fallback op without a host kernel",
    fix="implement the op's host kernel (docs/adding-an-op.md) or replace the op in the model",
)
def fallback_without_kernel(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """A node the native engine does not claim needs a host kernel (host registry)."""
    if ctx.supported is None:
        return
    for node in ctx.graph.nodes:
        if ctx.target.supports(node, ctx.graph) is not None and not ctx.supported(
            node.op_type, node.domain
        ):
            yield r.diagnose(f"{node.qualified_op} has neither a native nor a host kernel",
                             node=node)


@restriction(
    "cpu", "CPU-R03", COMPILATION_LIMITS, WARNING, "CPU without AVX2",
    fix="nothing to do: nerve runs the model on the host engine; expect lower speed",
)
def no_avx2(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """The native engine's generated C is compiled for AVX2 at least (its ISA baseline);
    features come from /proc/cpuinfo (``nerve.compiler.targets.cpu.detect_features``)."""
    if ctx.graph.nodes and "avx2" not in ctx.target.features:
        yield r.diagnose("this CPU has no AVX2; the native engine cannot run here")


@restriction(
    "cpu", "CPU-R04", NUMERICAL, WARNING, "bfloat16 tensors without native bf16",
    fix="expect bf16 arithmetic emulated through fp32 (slower), or convert the model to fp32",
)
def bf16_without_isa(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """bf16 dot products need AVX512_BF16 or AMX_BF16 (Intel SDM; flags in /proc/cpuinfo)."""
    if {"avx512_bf16", "amx_bf16"} & set(ctx.target.features):
        return
    for node in ctx.graph.nodes:
        if any(n and ctx.graph.types[n].dtype is DType.BFLOAT16 for n in node.inputs):
            yield r.diagnose("bfloat16 inputs on a CPU without AVX512_BF16/AMX_BF16", node=node)


@restriction(
    "cpu", "CPU-R05", COMPILATION_LIMITS, INFO, "no AMX tiles for bf16/int8 GEMM",
    fix="nothing to do: GEMMs use fp32 BLAS (or AVX-512 bf16) instead of AMX tiles",
)
def no_amx(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """AMX (amx_tile, amx_bf16, amx_int8) exists on Sapphire Rapids-class Xeons only
    (DESIGN: Engines); elsewhere bf16/int8 precision policies cannot use tiles."""
    if "amx_tile" in ctx.target.features:
        return
    gemms = [n for n in ctx.graph.nodes if n.qualified_op in _GEMM]
    if gemms:
        yield r.diagnose(
            f"{len(gemms)} GEMM-class nodes; this CPU has no AMX, so bf16/int8 GEMMs would "
            "not use tiles", node=gemms[0],
        )

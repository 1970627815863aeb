"""The ``ane`` target's restrictions: Apple's Neural Engine, as publicly characterised.

Sources: Orion (R. Kumaresan, "Orion: Characterizing and Programming Apple's Neural Engine for
LLM Training and Inference", arXiv 2603.06728, and the ``mechramc/Orion`` repository), through
the digest ``shared/reference/ane-orion-notes.md``. Each check's docstring names the digest
section and the paper's restriction number (#1-#20 of the paper's table, digest §4.1), with the
digest's confidence tag: [C] read in the code, [R] repository prose, [P*] paper body,
[3P] third party.

Fixable restrictions carry a fixer that ``normalize(fix=True)`` (``nerve check --fix``) runs:
decompositions into ops the ANE has, or sending the node to the host engine (the workaround
Orion itself uses: host-side assembly, CPU fallback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from nerve.compiler.context import PassContext
from nerve.compiler.passes import decompose
from nerve.compiler.restrictions import (
    COMPILATION_LIMITS,
    ERROR,
    GRAPH_STRUCTURE,
    INFO,
    MEMORY_LAYOUT,
    NUMERICAL,
    OPERATOR_SUPPORT,
    RESOURCE_LIMITS,
    WARNING,
    WEIGHT_HANDLING,
    CheckContext,
    Diagnostic,
    Program,
    Restriction,
    restriction,
)
from nerve.compiler.targets import ane
from nerve.ir import NERVE_DOMAIN, DType, Graph, Node

_NORMS = {("", "LayerNormalization"), ("", "RMSNormalization"), (NERVE_DOMAIN, "LayerNorm"),
          (NERVE_DOMAIN, "RMSNorm")}
# Ops a specific restriction covers; the generic op-support check (R20) leaves them alone.
_SPECIFIC = {"Concat", "Gelu", "Erf", "LayerNormalization", "RMSNormalization", "nerve.LayerNorm",
             "nerve.RMSNorm"}


def _nbytes(ctx: CheckContext, name: str) -> int:
    return ctx.graph.types[name].nbytes


def _is(node: Node, *ops: str) -> bool:
    return node.domain == "" and node.op_type in ops


def _host_fixer(predicate: Callable[[Node, Graph], bool]) -> Callable[[Graph, PassContext], int]:
    """A fixer that sends every node ``predicate`` accepts to the host engine."""

    def fixer(graph: Graph, ctx: PassContext) -> int:
        return decompose.place_on_host(graph, ctx, lambda n: predicate(n, graph))

    return fixer


# ---- operator support -----------------------------------------------------------------------


def _concat(node: Node, graph: Graph) -> bool:
    return _is(node, "Concat")


@restriction(
    "ane", "ANE-R01", OPERATOR_SUPPORT, ERROR, "concat is rejected by the ANE compiler",
    fix="assemble on the host: the Concat runs on the host engine and the ANE program returns "
        "its inputs as separate outputs (a multi-output program)",
    fixer=_host_fixer(_concat),
)
def concat(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #1 (§4.1 [P*][R]): MIL ``concat`` makes ``ANECCompile()`` fail; Orion's IR names
    the op ``concat_BANNED`` and its validator rejects it (§3.3, §3.4 [C]). Workaround used by
    Orion: multi-output programs and host-side assembly (§2.2)."""
    for node in ctx.target_nodes():
        if _concat(node, ctx.graph):
            yield r.diagnose("Concat makes the ANE compiler fail (ANECCompile() FAILED)",
                             node=node)


def _causal_fixer(graph: Graph, ctx: PassContext) -> int:
    return decompose.causal_attention_to_primitives(graph, ctx)


@restriction(
    "ane", "ANE-R06", NUMERICAL, ERROR, "the fused attention op ignores its causal mask",
    fix="write attention out: MatMul -> scale -> + causal mask constant -> Softmax -> MatMul",
    fixer=_causal_fixer,
)
def causal_sdpa(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #6 (§4.1 [P*], prior work): the ANE's scaled-dot-product-attention op ignores
    its causal mask — silently wrong attention. Orion decomposes attention explicitly with an
    additive mask constant (§3.2 patterns.c [C])."""
    for node in ctx.target_nodes():
        if _is(node, "Attention") and node.attr("is_causal", 0):
            yield r.diagnose(
                "Attention with is_causal=1: the ANE would attend to future positions",
                node=node, fixable=decompose.simple_causal_attention(node, ctx.graph),
            )


def _conv_bias_fixer(graph: Graph, ctx: PassContext) -> int:
    return decompose.split_conv_bias(graph, ctx)


@restriction(
    "ane", "ANE-R08", OPERATOR_SUPPORT, ERROR, "conv takes no bias",
    fix="add the bias with a separate Add after the Conv",
    fixer=_conv_bias_fixer,
)
def conv_bias(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #13 (§4.1, README [R]): the MIL ``conv`` op rejects ``bias=``; Orion's conv-bias
    fusion pass is disabled for this reason (§3.4 [C])."""
    for node in ctx.target_nodes():
        if _is(node, "Conv") and len(node.inputs) > 2 and node.inputs[2]:
            yield r.diagnose("Conv with a bias input: MIL conv rejects bias=", node=node)


def _channels(node: Node, graph: Graph) -> tuple[int, int] | None:
    if _is(node, "Conv"):
        return ane.conv_channels(node, graph)
    if _is(node, "MatMul", "Gemm"):
        a, out = graph.types[node.inputs[0]], graph.types[node.outputs[0]]
        k = a.shape[0] if _is(node, "Gemm") and node.attr("transA", 0) else a.shape[-1]
        return int(k), int(out.shape[-1])
    return None


def _too_wide(node: Node, graph: Graph) -> bool:
    ch = _channels(node, graph)
    return ch is not None and (ch[0] >= ane.MAX_CHANNELS or ch[1] > ane.MAX_CHANNELS)


@restriction(
    "ane", "ANE-R09", RESOURCE_LIMITS, ERROR, "very wide convolutions are rejected",
    fix="run the node on the host (CPU fallback, as Orion does for its classifier backward)",
    fixer=_host_fixer(_too_wide),
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


def _gelu_fixer(graph: Graph, ctx: PassContext) -> int:
    done = decompose.gelu_to_tanh(graph, ctx)
    return done + decompose.place_on_host(graph, ctx, lambda n: _is(n, "Erf"))


@restriction(
    "ane", "ANE-R10", OPERATOR_SUPPORT, ERROR, "gelu is not an ANE op",
    fix="use the tanh approximation 0.5x(1+tanh(0.7979(x+0.044715x^3))) (max error ~1e-3); "
        "an Erf outside a Gelu runs on the host",
    fixer=_gelu_fixer,
)
def gelu(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #10 (§4.1 [P*][R]): MIL ``gelu`` is not accepted; Orion's IR has no gelu op and
    builds GELU as its tanh approximation, ~10 ops with the constant 0.7979 (§3.1, §3.2 [C])."""
    for node in ctx.target_nodes():
        if _is(node, "Gelu"):
            yield r.diagnose("Gelu is not an ANE op", node=node)
        elif _is(node, "Erf"):
            yield r.diagnose("Erf (the exact GELU's building block) is not an ANE op",
                             node=node)


def _norm_fixer(graph: Graph, ctx: PassContext) -> int:
    return decompose.layer_norm_to_primitives(graph, ctx) + decompose.rms_norm_to_primitives(
        graph, ctx)


@restriction(
    "ane", "ANE-R11", OPERATOR_SUPPORT, ERROR, "no layernorm / rmsnorm op",
    fix="decompose: mean, centre, square, mean, + eps, pow(-0.5), scale, shift",
    fixer=_norm_fixer,
)
def norms(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: Orion's op set has no layernorm (nor gelu/silu) 'by design — only
    composites'; §3.2 [C] gives the LayerNorm and RMSNorm composites it emits instead."""
    for node in ctx.target_nodes():
        if (node.domain, node.op_type) in _NORMS:
            yield r.diagnose(f"{node.qualified_op} is not an ANE op; it must be decomposed",
                             node=node)


def _rsqrt(node: Node, graph: Graph) -> bool:
    if not _is(node, "Reciprocal"):
        return False
    producer = next((n for n in graph.nodes if node.inputs[0] in n.outputs), None)
    return producer is not None and _is(producer, "Sqrt")


def _rsqrt_fixer(graph: Graph, ctx: PassContext) -> int:
    return decompose.rsqrt_to_pow(graph, ctx)


@restriction(
    "ane", "ANE-R12", OPERATOR_SUPPORT, ERROR, "rsqrt fails to compile",
    fix="use pow(v, -0.5) instead of 1/sqrt(v)", fixer=_rsqrt_fixer,
)
def rsqrt(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§4.2 [3P] (community report on the Orion repository, M4 Max, reproduced on M4): MIL
    ``rsqrt`` fails to compile; Orion's norms use ``pow(x, -0.5)`` (§3.2 [C])."""
    for node in ctx.target_nodes():
        if _rsqrt(node, ctx.graph):
            yield r.diagnose("Reciprocal(Sqrt(v)) lowers to rsqrt, which fails to compile",
                             node=node)


_OPS = ane.target().ops or {}


def _unsupported(node: Node, graph: Graph) -> bool:
    if node.qualified_op in _OPS or node.qualified_op in _SPECIFIC:
        return False
    return not _folds_into_conv(node, graph)


def _folds_into_conv(node: Node, graph: Graph) -> bool:
    """An inference BatchNormalization right after a Conv: the fuse pass folds it away."""
    if not _is(node, "BatchNormalization") or node.attr("training_mode", 0):
        return False
    producer = next((n for n in graph.nodes if node.inputs[0] in n.outputs), None)
    readers = [n for n in graph.nodes if node.inputs[0] in n.inputs]
    static = all(i in graph.params or i in graph.constants for i in node.inputs[1:5])
    return producer is not None and _is(producer, "Conv") and len(readers) == 1 and static


@restriction(
    "ane", "ANE-R20", OPERATOR_SUPPORT, ERROR, "op outside the ANE's MIL op set",
    fix="run the node on the host engine (a multi-program plan), or replace the op",
    fixer=_host_fixer(_unsupported),
)
def op_set(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: Orion's IR (what its MIL generator emits and what was verified on the ANE)
    has 27 ops: conv, add, sub, mul, matmul, reshape, transpose, cast, relu, tanh, sigmoid,
    softmax, exp, pow, reduce_sum/mean/max, neg, sqrt, split, pad, slice, identity (+ input,
    const). §10.5 [P*]: ``gather`` is not in MIL (embedding lookups stay on the CPU); §3.5
    [C]: other ops emit a comment — an invalid program."""
    for node in ctx.target_nodes():
        if _unsupported(node, ctx.graph):
            yield r.diagnose(f"{node.qualified_op} is not in the ANE's op set", node=node)


def _bad_dtype(node: Node, graph: Graph) -> str | None:
    for name in (*node.inputs, *node.outputs):
        if name and name not in graph.constants and graph.types[name].dtype not in ane.DTYPES:
            return name
    return None


@restriction(
    "ane", "ANE-R21", OPERATOR_SUPPORT, ERROR, "tensor dtype the ANE cannot hold",
    fix="run the node on the host engine, or cast to int32/fp16 in the model",
    fixer=_host_fixer(lambda n, g: _bad_dtype(n, g) is not None),
)
def dtypes(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """§3.1 [C]: ``OrionDtype`` is fp16, fp32, int32, bool (and string for names); int64
    indices, float64 and 8-bit types have no ANE representation (INT8 is dequantized to fp16,
    §10.2 [P*])."""
    for node in ctx.target_nodes():
        bad = _bad_dtype(node, ctx.graph)
        if bad is not None and not _unsupported(node, ctx.graph):
            dtype = ctx.graph.types[bad].dtype.value
            yield r.diagnose(f"{bad!r} is {dtype}; the ANE holds fp16/fp32/int32/bool",
                             node=node, tensor=bad)


def _linear(node: Node, graph: Graph) -> bool:
    return _is(node, "MatMul", "Gemm") and node.inputs[1] in graph.params


@restriction(
    "ane", "ANE-R26", OPERATOR_SUPPORT, INFO, "linears run faster as 1x1 convolutions",
    fix="nerve's ANE export lowers linears to conv1x1 (weights [out, in, 1, 1]); nothing to do",
)
def linear_as_conv(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #17 (§4.1 [P], prior work; §10.2): a 1x1 conv is ~3x faster than the equivalent
    matmul; Orion emits every Linear as conv1x1 (§3.2 [C]). Independent measurements give
    1.4-2.2x, shape-dependent (§10.6 [3P])."""
    for node in ctx.target_nodes():
        if _linear(node, ctx.graph):
            yield r.diagnose("a linear with a weight operand: emit it as a 1x1 conv", node=node)


# ---- memory layout: I/O surfaces ------------------------------------------------------------


def _sizes_differ(ctx: CheckContext, names: list[str]) -> bool:
    return len({_nbytes(ctx, n) for n in names}) > 1


@restriction(
    "ane", "ANE-R02", MEMORY_LAYOUT, WARNING, "output surfaces must all have the same size",
    fix="allocate every output surface at the largest output's size (nerve's ANE binding pads)",
)
def uniform_outputs(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #2 (§4.1 [P*][R]): a multi-output program whose output surfaces differ in
    allocation size fails at eval with status 0x1d; Orion pads by hand (§3.4 [C],
    pass_uniform_outputs.c)."""
    for p in ctx.programs:
        if _sizes_differ(ctx, p.outputs):
            sizes = ", ".join(f"{o}: {_nbytes(ctx, o):,} B" for o in p.outputs[:6])
            yield r.diagnose(f"outputs of different sizes ({sizes})", tensor=p.outputs[0])


@restriction(
    "ane", "ANE-R13", MEMORY_LAYOUT, WARNING, "input surfaces must all have the same size",
    fix="allocate every input surface at the largest input's size (nerve's ANE binding pads)",
)
def uniform_inputs(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #18 (§4.1 [P*], found with LoRA inputs, §9): multi-input programs need input
    surfaces of identical allocation size, else eval fails with status 0x1d."""
    for p in ctx.programs:
        if _sizes_differ(ctx, p.inputs):
            sizes = ", ".join(f"{i}: {_nbytes(ctx, i):,} B" for i in p.inputs[:6])
            yield r.diagnose(f"inputs of different sizes ({sizes})", tensor=p.inputs[0])


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
                small = min(names, key=lambda n: _nbytes(ctx, n))
                yield r.diagnose(f"{small!r} will sit in a padded surface", tensor=small)


def _unsorted(names: list[str]) -> bool:
    return len(names) > 1 and names != sorted(names)


@restriction(
    "ane", "ANE-R03", MEMORY_LAYOUT, WARNING, "outputs bind in alphabetical order",
    fix="bind output surfaces in sorted-name order (nerve's ANE binding does), or rename "
        "outputs so tuple order is alphabetical",
)
def output_order(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #3 (§4.1 [P*][R]): output surfaces bind in the alphabetical order of the MIL
    variable names, not the return-tuple order — silent wrong data (§3.4 validator [C])."""
    for p in ctx.programs:
        if _unsorted(p.outputs):
            yield r.diagnose(f"outputs {p.outputs[:6]} are not in alphabetical order",
                             tensor=p.outputs[0])


@restriction(
    "ane", "ANE-R14", MEMORY_LAYOUT, WARNING, "inputs bind in alphabetical order",
    fix="bind input surfaces in sorted-name order (nerve's ANE binding does), or rename inputs",
)
def input_order(ctx: CheckContext, r: Restriction) -> Iterator[Diagnostic]:
    """Paper #19 (§4.1 [P*], §9): input surfaces bind alphabetically by MIL parameter name;
    only 1 of 6 permutations of Orion's LoRA inputs gave correct results."""
    for p in ctx.programs:
        if _unsorted(p.inputs):
            yield r.diagnose(f"inputs {p.inputs[:6]} are not in alphabetical order",
                             tensor=p.inputs[0])


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
    for name in _model_io(ctx):
        t = ctx.graph.types[name]
        if not (t.rank == 4 and t.shape[0] == 1 and t.shape[2] == 1):
            yield r.diagnose(f"{name!r} is {list(t.shape)}, not [1, C, 1, S]", tensor=name)


def _model_io(ctx: CheckContext) -> list[str]:
    """Model inputs and outputs that are surfaces of some ANE program."""
    model = set(ctx.graph.input_names) | set(ctx.graph.output_names)
    return list(dict.fromkeys(
        n for p in ctx.programs for n in (*p.inputs, *p.outputs) if n in model
    ))


# ---- resource limits ------------------------------------------------------------------------


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
            size = _nbytes(ctx, name)
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
            if out and _nbytes(ctx, out) > ane.SRAM_BYTES:
                yield r.diagnose(f"{out!r} is {_nbytes(ctx, out):,} B (> 32 MiB)", node=node,
                                 tensor=out)


@restriction(
    "ane", "ANE-R18", RESOURCE_LIMITS, ERROR, "tensors have at most 4 dimensions",
    fix="reshape to rank 4 or less in the model, or run the node on the host",
    fixer=_host_fixer(lambda n, g: _rank_over(n, g) is not None),
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


# ---- compilation limits ---------------------------------------------------------------------


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


# ---- weights and numbers ----------------------------------------------------------------------


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
    for name in _model_io(ctx):
        dtype = ctx.graph.types[name].dtype
        if dtype in (DType.FLOAT32, DType.FLOAT64):
            yield r.diagnose(f"{name!r} is {dtype.value}; the ANE computes it in fp16",
                             tensor=name)


def _mask_fixer(graph: Graph, ctx: PassContext) -> int:
    return decompose.clamp_masks(graph, ctx)


@restriction(
    "ane", "ANE-R22", NUMERICAL, ERROR, "masks of -inf overflow fp16",
    fix="use -1e4 for masked positions (clamped automatically with --fix)",
    fixer=_mask_fixer,
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

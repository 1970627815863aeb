"""Lowering of products with bfloat16 operands onto the bf16 kernels (``csrc/nk_bf16.c``).

The precision pass marks FusedMatMul / FusedConv nodes ``operands="bfloat16"``: inputs 0 and
1 are read rounded to bfloat16, products and sums are float32 (see
``nerve.compiler.passes.precision_operands``); a weight operand arrives as a bfloat16 slot.
Each such node becomes one kernel call, its bias and epilogue applied on the kernel's output
blocks as the fp32 kernels do. The variant follows the target's ISA features:

* ``amx_bf16`` — products on AMX tiles (``nk_matmul_bf16_amx``);
* ``avx512_bf16`` — products and convolutions on VDPBF16PS (``nk_matmul_bf16_avx512``,
  ``nk_conv2d_bf16_avx512``, and ``nk_conv2d_bf16_cvec`` for small maps); convolutions
  also on AMX machines (there is no AMX convolution kernel yet);
* neither, or a node the kernels do not take (a weight that is an activation, a depthwise
  convolution...): the fp32 kernels over bf16-rounded operands — the activation rounded by
  ``nk_bf16_round`` into scratch, the weight slot widened at bind time. The products are the
  same (bf16 x bf16 is exact in float32); only the order of the sums differs.

The weights are packed into the kernels' VNNI pair layout at bind time and again after every
weight update (``packing_bf16``). :func:`choice` is the one place that decides a node's
kernel; the lowering follows it and :func:`precision_note` reports it in the CompileReport.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nerve.engines.native import packing_bf16
from nerve.engines.native.claims import claims
from nerve.engines.native.elementwise import Chain
from nerve.engines.native.lower_gemm import (
    _bias_program,
    _epilogue_program,
    _gemm_step,
    _matmul_step,
    _with_programs,
)
from nerve.engines.native.lowering import BUILDERS, MAIN, Lowering, Program, builds
from nerve.engines.native.packing import PackSpec
from nerve.engines.native.shapes import conv_descriptor
from nerve.engines.native.steps import CallStep, Emitter, Step, _WithEpilogue
from nerve.ir import DType, Graph, Node, TensorType
from nerve.ir.fused_ops import OPERANDS

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan

BF16 = "bfloat16"
AVX512 = "avx512_bf16"
AMX = "amx_bf16"
# What each variant multiplies with, as the CompileReport says it.
KERNEL_NAMES = {AVX512: "avx512_bf16 (vdpbf16ps)", AMX: "amx_bf16 (tdpbf16ps tiles)"}
# nk_bf16_support() bits (NK_BF16_HAVE_* in nk.h).
_HAVE = {AVX512: 2, AMX: 4}
NOTE_PREFIX = "precision kernels:"
# Small output maps with deep products put output channels in the vector lanes
# (nk_conv2d_bf16_cvec): a 7x7 map fills 49 of the 96 lanes of the pixel kernel's tiles.
# Measured on one Zen 5 core (GFLOP/s pixel kernel -> channel kernel): 7x7 maps 2048->512 1x1
# 310 -> 366, 960->160 260 -> 285, 512->512 3x3 323 -> 325, but 160->960 1x1 276 -> 252 and
# 14x14 96->576 1x1 356 -> 242 (the transposed stores dominate short products).
CVEC_MAX_PIXELS = 64
CVEC_MIN_DEPTH = 256  # C * KH * KW
_warmed: set[int] = set()  # thread counts whose pool threads ran an AMX instruction


@dataclass(frozen=True)
class Choice:
    """The kernel a bf16 node runs: ``variant`` (None: the fp32 fallback) and why not."""

    variant: str | None
    why: str = ""


def choice(node: Node, graph: Graph, features: tuple[str, ...]) -> Choice:
    """The kernel variant for a node marked ``operands="bfloat16"`` on a target with
    ``features`` (the lowering emits this; the CompileReport names it)."""
    a, b = node.inputs[:2]
    if b not in graph.params or graph.types[b].dtype is not DType.BFLOAT16:
        return Choice(None, "the right operand is not a weight")
    if graph.types[a].dtype is not DType.FLOAT32:
        return Choice(None, "the left operand is a weight")
    if node.op_type == "FusedConv":
        if int(node.attr("group", 1)) == graph.types[a].shape[1] != 1:
            return Choice(None, "depthwise convolution")
        if AVX512 in features:
            return Choice(AVX512)
        return Choice(None, "no bf16 convolution kernel for this CPU's features")
    if graph.types[b].rank != 2:
        return Choice(None, "batched weights")
    if AMX in features and "amx_tile" in features:
        return Choice(AMX)
    if AVX512 in features:
        return Choice(AVX512)
    return Choice(None, "the CPU has no bf16 dot product")


@functools.lru_cache(maxsize=1)
def _support() -> int | None:
    """``nk_bf16_support()``: what this process can execute (None without a compiler)."""
    from nerve.engines.native.cache import kernel_library
    from nerve.engines.native.toolchain import find_toolchain

    tc = find_toolchain()
    return None if tc is None else int(kernel_library(tc).handle.nk_bf16_support())


def runs_as(variant: str) -> str | None:
    """The variant the kernels run on this machine when ``variant`` is asked for (AMX falls
    back to avx512_bf16 without the tile permission; None: neither, a scalar loop runs)."""
    have = _support()
    if have is None:
        return variant
    for v in (variant, AVX512):
        if have & _HAVE[v]:
            return v
    return None


def _kernel_name(op: str, variant: str) -> str:
    runs = runs_as(variant)
    text = f"bf16 {op} on {KERNEL_NAMES[runs] if runs else 'a scalar loop'}"
    if runs != variant:
        text += f" (the target lists {variant}, which this machine cannot run)"
    return text


# ---- steps ------------------------------------------------------------------------------------


@dataclass
class Bf16MatMulStep(_WithEpilogue):
    """``nk_matmul_bf16_<variant>``: Y = bf16(A) . B over B packed in the pair layout."""

    a: str = ""
    bpack: str = ""
    m: int = 0
    n: int = 0
    k: int = 0
    variant: str = AVX512

    @property
    def kernel(self) -> str:
        return _kernel_name("MatMul", self.variant)

    def prepare(self, library: ctypes.CDLL, threads: int) -> None:
        """At load: run one AMX instruction on each pool thread (the first is slow)."""
        if self.variant == AMX and threads not in _warmed:
            _warmed.add(threads)
            library.nk_bf16_amx_warm(ctypes.c_int(threads))

    def reads(self) -> list[str]:
        return [self.a, self.bpack, *(o.name for o in self.chain.operands)]

    def writes(self) -> list[str]:
        return [self.out]

    def emit(self, em: Emitter, index: int) -> list[str]:
        fn = "nk_matmul_bf16_amx" if self.variant == AMX else "nk_matmul_bf16_avx512"
        ep, ea = self.epilogue(em)
        return [
            "{",
            *("    " + s for s in self.epilogue_args(em)),
            f"    {fn}(nt, {self.m}LL, {self.n}LL, {self.k}LL, {em.ptr(self.a)}, "
            f"{em.ptr(self.bpack, 'const uint16_t')}, {em.ptr(self.out)}, {ep}, {ea});",
            "}",
        ]


@dataclass
class Bf16ConvStep(_WithEpilogue):
    """``nk_conv2d_bf16_avx512`` (weights in channel-pair panels, pixels in the vector lanes)
    or ``nk_conv2d_bf16_cvec`` (small maps: output channels in the lanes)."""

    x: str = ""
    wpack: str = ""
    bias: str = ""
    desc: tuple[int, ...] = ()  # N C H W O OH OW KH KW SH SW PT PL DH DW G
    variant: str = AVX512
    cvec: bool = False  # output channels in the vector lanes (nk_conv2d_bf16_cvec)

    @property
    def kernel(self) -> str:
        return _kernel_name("Conv", self.variant)

    def reads(self) -> list[str]:
        names = [self.x, self.wpack, *(o.name for o in self.chain.operands)]
        return [*names, self.bias] if self.bias else names

    def writes(self) -> list[str]:
        return [self.out]

    def emit(self, em: Emitter, index: int) -> list[str]:
        desc = "{" + ", ".join(f"{int(v)}LL" for v in self.desc) + "}"
        ep, ea = self.epilogue(em)
        bias = em.ptr(self.bias) if self.bias else "NULL"
        fn = "nk_conv2d_bf16_cvec" if self.cvec else "nk_conv2d_bf16_avx512"
        return [
            "{",
            f"    static const nk_conv d = {desc};",
            *("    " + s for s in self.epilogue_args(em)),
            f"    {fn}(nt, &d, {em.ptr(self.x)}, {em.ptr(self.wpack, 'const uint16_t')}, "
            f"{bias}, {em.ptr(self.out)}, {ep}, {ea});",
            "}",
        ]


@dataclass
class Bf16FallbackStep(CallStep):
    """``nk_bf16_round``: an activation rounded to bf16 for the fp32 fallback (which names it)."""

    why: str = ""
    op: str = "MatMul"

    @property
    def kernel(self) -> str:
        return f"bf16 {self.op} as float32 over bf16-rounded operands ({self.why})"


# ---- lowering ---------------------------------------------------------------------------------


def _slot(lw: Lowering, source: str, spec: PackSpec, type_: TensorType) -> str:
    """The weight slot ``spec`` derives from ``source`` (packed when bound and after updates)."""
    name = f"{source}.packed.{spec.kind}{spec.groups}{'t' if spec.trans else ''}"
    if name not in lw.packed:
        lw.packed[name] = spec
        lw.extra_types[name] = type_
    return name


@builds(f"nerve.FusedMatMul[{BF16}]")
def _matmul(lw: Lowering, node: Node) -> list[Step]:
    chosen = choice(node, lw.graph, lw.features)
    if chosen.variant is None:
        return _fallback(lw, node, chosen.why)
    a, b = node.inputs[:2]
    out = node.outputs[0]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    programs: list[Program] = []
    if node.attr("gemm", 0):
        base = _gemm_step(lw, node, bool(node.attr("transB", 0)))
        if base.alpha != 1.0:  # alpha * (A B) first, as Gemm's host kernel computes it
            mul = Node("Mul", ["", ""], ["out"], name="alpha")
            programs.append(([MAIN, ("literal", base.alpha)], [(mul, [0, 1])]))
        beta = float(node.attr("beta", 1.0))
        if c and beta != 0.0:
            programs.append(_bias_program(c, beta))
    else:
        base = _matmul_step(lw, node, a, b, out)
        if c:
            programs.append(_bias_program(c, 1.0))
    programs.append(_epilogue_program(node))
    spec = PackSpec(b, "bf16_matmul", trans=base.tb)
    size = packing_bf16.bf16_matmul_packed_size(base.k, base.n)
    step = Bf16MatMulStep(
        [node], Chain(base.chain.shape, out), base.groups, a=a,
        bpack=_slot(lw, b, spec, TensorType(DType.BFLOAT16, (size,))),
        m=base.m, n=base.n, k=base.k, variant=chosen.variant,
    )  # fmt: skip
    return _with_programs(lw, node, step, programs)


@builds(f"nerve.FusedConv[{BF16}]")
def _conv(lw: Lowering, node: Node) -> list[Step]:
    chosen = choice(node, lw.graph, lw.features)
    if chosen.variant is None:
        return _fallback(lw, node, chosen.why)
    x, w = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    out = node.outputs[0]
    xs, ws, ys = lw.type(x).shape, lw.type(w).shape, lw.type(out).shape
    desc, geo = conv_descriptor(node, xs, ws, ys)
    group = int(node.attr("group", 1))
    depth = ws[1] * geo.kernel[0] * geo.kernel[1]
    cvec = group == 1 and 0 < geo.out[0] * geo.out[1] <= CVEC_MAX_PIXELS and (
        depth >= CVEC_MIN_DEPTH
    )
    if cvec:
        spec = PackSpec(w, "bf16_conv_cvec")
        size = packing_bf16.bf16_conv_cvec_packed_size(ws)
    else:
        spec = PackSpec(w, "bf16_conv", group)
        size = packing_bf16.bf16_conv_packed_size(ws, group)
    wpack = _slot(lw, w, spec, TensorType(DType.BFLOAT16, (size,)))
    groups = ([0], [1], list(range(2, len(ys))))
    step = Bf16ConvStep([node], Chain(ys, out), groups, x=x, wpack=wpack, bias=bias, desc=desc,
                        variant=chosen.variant, cvec=cvec)
    return _with_programs(lw, node, step, [_epilogue_program(node)])


def _fallback(lw: Lowering, node: Node, why: str) -> list[Step]:
    """The node on the fp32 kernels over bf16-rounded operands (see the module docstring)."""
    steps: list[Step] = []
    inputs = list(node.inputs)
    base_op = "Conv" if node.op_type == "FusedConv" else "MatMul"
    for i in (0, 1):
        name = inputs[i]
        t = lw.type(name)
        if t.dtype is DType.BFLOAT16:  # a weight slot (claims admits no other bf16 operand)
            inputs[i] = _slot(lw, name, PackSpec(name, "bf16_widen"),
                              TensorType(DType.FLOAT32, t.shape))
            continue
        rounded = lw.fresh(f"{name}.bf16", t)
        steps.append(Bf16FallbackStep([node], f"nk_bf16_round(nt, {t.numel}LL, {{t0}}, {{t1}})",
                                      [name], [rounded], why=why, op=base_op))
        inputs[i] = rounded
    attrs = {k: v for k, v in node.attrs.items() if k != OPERANDS}
    plain = Node(node.op_type, inputs, list(node.outputs), attrs, node.name, node.domain)
    result = BUILDERS[node.qualified_op](lw, plain)
    return [*steps, *(result if isinstance(result, list) else [result])]


# ---- the CompileReport ------------------------------------------------------------------------


def precision_note(plan: Plan, features: tuple[str, ...]) -> str | None:
    """Which kernels the plan's bf16 nodes run, and how many fell back to float32 (None when
    it has none)."""
    graph = plan.graph
    native = {id(n) for s in plan.segments if s.engine == "native" for n in s.nodes}
    kernels: dict[str, int] = {}
    fallbacks: dict[str, int] = {}
    marked = 0
    for node in graph.nodes:
        if node.attr(OPERANDS) != BF16 or node.domain != "nerve":
            continue
        marked += 1
        if id(node) not in native or not claims(node, graph):
            fallbacks["on host, numpy emulation"] = fallbacks.get("on host, numpy emulation", 0) + 1
            continue
        chosen = choice(node, graph, features)
        if chosen.variant is None:
            fallbacks[chosen.why] = fallbacks.get(chosen.why, 0) + 1
            continue
        runs = runs_as(chosen.variant)
        name = KERNEL_NAMES[runs] if runs else "a scalar loop (this machine lacks bf16)"
        key = f"{node.op_type.removeprefix('Fused')} on {name}"
        kernels[key] = kernels.get(key, 0) + 1
    cast_form = plan.report.rewrites().get("bf16_cast_form", 0)
    if cast_form:
        fallbacks["Gemm transA, rounded by Casts"] = cast_form
    if not marked and not cast_form:
        return None
    total = marked + cast_form
    parts = [f"{n} {k}" for k, n in sorted(kernels.items())]
    fell = sum(fallbacks.values())
    text = f"{NOTE_PREFIX} bf16 operands on {total} GEMM/conv nodes"
    if parts:
        text += ": " + ", ".join(parts)
    text += f"; {fell} fell back to float32 GEMMs over bf16-rounded operands"
    if fallbacks:
        text += " (" + ", ".join(f"{n}: {k}" for k, n in sorted(fallbacks.items())) + ")"
    return text


def report(plan: Plan) -> None:
    """Put :func:`precision_note` in the plan's CompileReport (replacing an older one, e.g.
    from a cached plan or an earlier segment's build)."""
    note = precision_note(plan, tuple(plan.target.features))
    notes = [n for n in plan.report.notes if not n.startswith(NOTE_PREFIX)]
    if note is not None:
        notes.append(note)
    plan.report.notes[:] = notes


__all__ = [
    "AMX",
    "AVX512",
    "Bf16ConvStep",
    "Bf16FallbackStep",
    "Bf16MatMulStep",
    "Choice",
    "choice",
    "precision_note",
    "report",
    "runs_as",
]

"""Lowering of the GEMM-like ops: MatMul, Gemm, Conv and the fused Attention node.

Each becomes one kernel step whose fused elementwise chain (bias, activation, residual...)
runs as its epilogue on the kernel's output blocks while they are in cache.
"""

from __future__ import annotations

import math

import numpy as np

from nerve.engines.native.elementwise import Chain
from nerve.engines.native.lowering import MAIN, Lowering, Program, Register, builds
from nerve.engines.native.packing import (
    CV_NB,
    PackSpec,
    conv_cvec_packed_size,
    conv_packed_size,
    matmul_packed_size,
)
from nerve.engines.native.shapes import Window, broadcast_strides, conv_descriptor
from nerve.engines.native.steps import CallStep, ChainStep, ConvStep, GemmStep, Step, _WithEpilogue
from nerve.errors import CompileError
from nerve.ir import NERVE_DOMAIN, DType, Node, TensorType
from nerve.ir.fused_ops import step_node


def _matmul_step(lw: Lowering, node: Node, a: str, b: str, out: str) -> GemmStep:
    """MatMul(a, b) -> out with numpy batching (an empty epilogue)."""
    ash, bsh = lw.type(a).shape, lw.type(b).shape
    a1, b1 = len(ash) == 1, len(bsh) == 1
    m, k = (1, ash[0]) if a1 else ash[-2:]
    n = 1 if b1 else bsh[-1]
    abatch = () if a1 else ash[:-2]
    bbatch = () if b1 else bsh[:-2]
    obatch = tuple(np.broadcast_shapes(abatch, bbatch))
    nb = math.prod(obatch)
    nbd = len(obatch)
    bd = list(range(nbd))
    md = [] if a1 else [nbd]
    nd = [] if b1 else [nbd + (0 if a1 else 1)]
    step = GemmStep([node], Chain(lw.type(out).shape, out), a=a, b=b, m=m, n=n, k=k)
    if math.prod(bbatch) == 1 and nb > 1 and not a1 and math.prod(abatch) == nb:
        # B is one matrix: fold A's batch into its rows (one big GEMM).
        step.m, step.batch = nb * m, 1
        step.groups = ([], bd + md, nd)
    else:
        step.batch = nb
        step.groups = (bd, md, nd)
        step.aoff = _batch_offsets(abatch, obatch, m * k)
        step.boff = _batch_offsets(bbatch, obatch, k * n)
    return step


# Products with a constant right operand (a weight) run on the packed-panel kernel over
# weights packed once at bind time instead of OpenBLAS (which re-packs B on every call); the
# kernel reads A's rows in place. Measured on one thread (CPU time, GFLOP/s packed / OpenBLAS
# / ONNX Runtime's MLAS, best of 5, two runs): 128x768x3072 193-209 / 149-181 / 182-198,
# 128x768x768 200-218 / 189-196 / 188-217, 128x3072x768 195-203 / 158-185 / 148-194,
# 32x784x1024 200-203 / 143-147 / 186-194. Rows 1-3 stream the packed tiles once per row,
# contiguously (OpenBLAS's gemv strides through B's rows); 4-15 rows stay on OpenBLAS.
PACKED_GEMM = True  # False: every product on OpenBLAS (for A/B measurements)
PACKED_MIN_ROWS = 16
PACKED_GEMV_ROWS = 4  # NK_GEMV_ROWS in nk_packed.c


def _packed_pays(m: int, k: int, n: int) -> bool:
    if not PACKED_GEMM:
        return False
    return m < PACKED_GEMV_ROWS or m >= PACKED_MIN_ROWS


def _pack_b(lw: Lowering, step: GemmStep) -> GemmStep:
    """Point ``step`` at a packed copy of its B when the packed kernel suits it."""
    if step.batch != 1 or step.ta or step.alpha != 1.0 or not _packed_pays(step.m, step.k, step.n):
        return step
    bt, at = lw.type(step.b), lw.type(step.a)
    if bt.rank != 2 or bt.dtype is not DType.FLOAT32 or at.dtype is not DType.FLOAT32:
        return step
    spec = PackSpec(step.b, "matmul", trans=step.tb)
    step.bpack = lw.packed_weight(step.b, spec, matmul_packed_size(step.k, step.n)) or ""
    return step


def _batch_offsets(batch: tuple[int, ...], out: tuple[int, ...], size: int) -> list[int] | None:
    if math.prod(out) <= 1:
        return None
    strides = np.asarray(broadcast_strides(batch, out), np.int64) * size
    if not strides.any():
        return None
    index = np.indices(out).reshape(len(out), -1).T
    return [int(v) for v in index @ strides]


def _gemm_step(lw: Lowering, node: Node, trans_b: bool) -> GemmStep:
    """Gemm(A, B) without its C term (transA comes from the node when it has one)."""
    a, b = node.inputs[:2]
    out = node.outputs[0]
    ta = bool(node.attr("transA", 0))
    ash = lw.type(a).shape
    m, n = lw.type(out).shape
    k = ash[0] if ta else ash[1]
    step = GemmStep(
        [node], Chain((m, n), out), a=a, b=b, ta=ta, tb=trans_b, m=m, n=n, k=k,
        alpha=float(node.attr("alpha", 1.0)),
    )  # fmt: skip
    step.groups = ([], [0], [1])
    return step


def _bias_program(c: str, beta: float) -> Program:
    """``main + beta * c`` as a chain program."""
    add = Node("Add", ["", ""], ["out"], name="bias")
    if beta == 1.0:
        return [MAIN, c], [(add, [0, 1])]
    mul = Node("Mul", ["", ""], ["out"], name="beta")
    return [MAIN, c, ("literal", beta)], [(mul, [1, 2]), (add, [0, 3])]


def _epilogue_program(node: Node) -> Program:
    """A FusedConv/FusedMatMul epilogue: registers [main, *extra inputs]."""
    steps = [(step_node(s), [int(r) for r in s[1]]) for s in node.attr("epilogue", ())]
    extra: list[Register] = [n for n in node.inputs[3:] if n]
    return [MAIN, *extra], steps  # type: ignore[return-value]


def _with_programs(
    lw: Lowering, node: Node, step: _WithEpilogue, programs: list[Program], out: str | None = None
) -> list[Step]:
    """Fuse ``programs`` (in order, each reading the result so far as ``MAIN``) into
    ``step``'s epilogue. If an operand cannot be addressed from the kernel's output blocks,
    the kernel writes a temporary and the rest runs as a separate loop."""
    out = out or node.outputs[0]
    steps: list[Step] = [step]
    current: _WithEpilogue | ChainStep = step
    for registers, ops in programs:
        if not ops:
            continue
        if lw.extend(current, node, MAIN, (registers, ops), out):
            continue
        temp = lw.fresh(out, lw.type(out))
        current.chain.out = temp
        current = ChainStep([node], Chain(lw.type(out).shape, out))
        steps.append(current)
        renamed = [temp if r == MAIN else r for r in registers]
        if not lw.extend(current, node, None, (renamed, ops), out):
            raise CompileError(f"native engine: cannot lower the epilogue of {node.name!r}")
    return steps


@builds("MatMul", "nerve.FusedMatMul")
def _matmul(lw: Lowering, node: Node) -> list[Step]:
    out = node.outputs[0]
    if node.domain != NERVE_DOMAIN:
        return [_pack_b(lw, _matmul_step(lw, node, node.inputs[0], node.inputs[1], out))]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    programs = []
    if node.attr("gemm", 0):
        step: GemmStep = _pack_b(lw, _gemm_step(lw, node, bool(node.attr("transB", 0))))
        beta = float(node.attr("beta", 1.0))
        if c and beta != 0.0:
            programs.append(_bias_program(c, beta))
    else:
        step = _pack_b(lw, _matmul_step(lw, node, node.inputs[0], node.inputs[1], out))
        if c:
            programs.append(_bias_program(c, 1.0))
    programs.append(_epilogue_program(node))
    return _with_programs(lw, node, step, programs)


@builds("Gemm")
def _gemm(lw: Lowering, node: Node) -> list[Step]:
    step = _pack_b(lw, _gemm_step(lw, node, bool(node.attr("transB", 0))))
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    beta = float(node.attr("beta", 1.0))
    programs = [_bias_program(c, beta)] if c and beta != 0.0 else []
    return _with_programs(lw, node, step, programs)


# Small maps put output channels in the vector lanes (nk_conv2d_cvec). On a 7x7 map the
# pixel-vector kernel fills 49 of 64 lanes, and a padded or strided conv's pixel rows carry
# dropped columns through a staging copy; channel blocks of 64 are full in most layers. The
# channel-vector kernel pays a transposed store per output (16x16 register transposes), which
# a K of 128 already amortises. Measured on one thread, MobileNetV2's small-map 1x1 convs,
# channel-vector / pixel-vector: 320->1280 on 7x7 198 / 250 us, 960->160 on 7x7 93 / 100 us,
# 64->384 on 14x14 44 / 49 us; a last block of at most 32 channels runs a half-width tile
# (576->96 on 14x14 was 121 / 105 us while that block ran the full tile half idle).
# Over chains of convs whose weights do not fit in L3, GFLOP/s: 3x3 512->512 on 7x7 173 / 96,
# 3x3 256->256 on 14x14 178 / 152. ResNet-50 end to end is the same either way.
CVEC_CONV = True  # False: every conv on the pixel-vector kernel (for A/B measurements)
CVEC_MAX_PIXELS = 196  # 14 x 14
CVEC_MIN_DEPTH = 128  # K = C * KH * KW
CVEC_MAX_IDLE = 0.2  # the share of lanes a partial last channel block may leave idle


def _channel_vector_pays(group: int, channels: int, out_channels: int, geo: Window) -> bool:
    depth = channels * geo.kernel[0] * geo.kernel[1]
    # A last block of at most CV_NB / 2 channels runs a half-width tile (nk_packed.c).
    last = out_channels % CV_NB
    padded = out_channels - last + (0 if last == 0 else CV_NB // 2 if last <= CV_NB // 2 else CV_NB)
    return (
        CVEC_CONV and group == 1 and 0 < math.prod(geo.out) <= CVEC_MAX_PIXELS
        and depth >= CVEC_MIN_DEPTH and padded - out_channels <= CVEC_MAX_IDLE * padded
    )


@builds("Conv", "nerve.FusedConv")
def _conv(lw: Lowering, node: Node) -> list[Step]:
    x, w = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    out = node.outputs[0]
    xs, ws, ys = lw.type(x).shape, lw.type(w).shape, lw.type(out).shape
    desc, geo = conv_descriptor(node, xs, ws, ys)
    group = int(node.attr("group", 1))
    step = ConvStep([node], Chain(ys, out), x=x, w=w, bias=bias, desc=desc)
    if group != xs[1] and lw.type(w).dtype is DType.FLOAT32:
        # Not depthwise: a packed kernel over weights packed once at bind time.
        if _channel_vector_pays(group, xs[1], ys[1], geo):
            step.cvec = True
            spec = PackSpec(w, "conv_cvec")
            step.wpack = lw.packed_weight(w, spec, conv_cvec_packed_size(ws)) or ""
        else:
            spec = PackSpec(w, "conv", group)
            step.wpack = lw.packed_weight(w, spec, conv_packed_size(ws, group)) or ""
    step.groups = ([0], [1], list(range(2, len(ys))))
    programs = [_epilogue_program(node)] if node.domain == NERVE_DOMAIN else []
    return _with_programs(lw, node, step, programs)


@builds("nerve.Attention")
def _attention(lw: Lowering, node: Node) -> list[Step]:
    """Attention(Q, Kt, V, [mask], [scale]) as scores = Q Kt (scale and mask applied in the
    GEMM epilogue), softmax in place, out = P V: three kernels over one scratch tensor."""
    q, kt, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else ""
    out = node.outputs[0]
    qs, ks = lw.type(q).shape, lw.type(kt).shape
    batch = tuple(np.broadcast_shapes(qs[:-2], ks[:-2]))
    scores_type = TensorType(DType.FLOAT32, (*batch, qs[-2], ks[-1]))
    scores = lw.fresh(f"{out}.scores", scores_type)
    first = _matmul_step(lw, node, q, kt, scores)
    registers: list[Register] = [MAIN]
    scale_input = node.inputs[4] if len(node.inputs) > 4 else ""
    scale = node.attr("scale")
    if scale_input:  # a scalar tensor (e.g. a weight) overrides the attribute
        registers.append(scale_input)
    elif scale is not None:
        registers.append(("literal", float(scale)))
    if mask:
        registers.append(mask)
    ops: list[tuple[Node, list[int | None]]] = []
    current = 0
    if scale_input or scale is not None:
        ops.append((Node("Mul", ["", ""], ["out"], name="scale"), [current, 1]))
        current = len(registers) + len(ops) - 1
    if mask:
        ops.append((Node("Add", ["", ""], ["out"], name="mask"), [current, len(registers) - 1]))
    steps = _with_programs(lw, node, first, [(registers, ops)], out=scores)
    n = scores_type.shape[-1]
    rows = scores_type.numel // n if n else 0
    softmax = CallStep(
        [node], f"nk_softmax(nt, 0, {rows}LL, {n}LL, 1LL, {{t0}}, {{t1}})", [scores], [scores]
    )
    second = _matmul_step(lw, node, scores, v, out)
    return [*steps, softmax, second]

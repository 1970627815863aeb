"""Lowering of the int8 ops: MatMulInteger, ConvInteger, QuantizeLinear, DequantizeLinear.

The int8 precision policy (``compiler/passes/precision_operands.py``) writes a quantized layer
as ``x -QuantizeLinear-> MatMulInteger/ConvInteger -> DequantizeLinear -> [Add bias] ->
[epilogue]``. Here that chain becomes **one kernel call** (``csrc/nk_int8.c``):

* a QuantizeLinear whose every reader is an integer product (as its A operand) emits nothing:
  the product quantizes the float32 input while it packs its operand rows;
* the integer product is an :class:`Int8Step` over the weight packed once, at bind time, into
  the quad layout (``PackSpec(kind="quad")``, :func:`pack_quad`);
* a DequantizeLinear reading the product's int32 result (its only reader) folds into the
  step: the kernel scales its int32 accumulators to float32, and the elementwise nodes that
  follow (bias, activation) join the step's epilogue like any GEMM's.

Anything else runs as a standalone ``nk_quantize`` / ``nk_dequantize`` call. The kernel
variant (AMX tiles, AVX512-VNNI, portable C) follows the target's features; the step names it
(:attr:`Int8Step.kernel`), and the CompileReport lists it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from nerve.engines.native.elementwise import Chain
from nerve.engines.native.lowering import Lowering, builds
from nerve.engines.native.packing import PACKERS, PackSpec
from nerve.engines.native.shapes import conv_descriptor, normalize_axis
from nerve.engines.native.steps import CallStep, Emitter, Step, _WithEpilogue
from nerve.ir import DType, Node, TensorType

# Kernel variants (NK_I8_* in nk.h) and how reports name them.
PORTABLE, VNNI, AMX = 0, 1, 2
ISA_NAMES = {
    PORTABLE: "portable C",
    VNNI: "avx512_vnni (vpdpbusd)",
    AMX: "amx_int8 (tdpbusd tiles)",
}
# Element types (NK_T_* in nk.h).
T_CODES = {DType.UINT8: 0, DType.INT8: 1, DType.FLOAT32: 2, DType.INT32: 3}
T_NAMES = {0: "NK_T_U8", 1: "NK_T_S8", 2: "NK_T_F32", 3: "NK_T_I32"}

DW_MAX_TAPS = 1024  # NK_DW_MAX_TAPS: depthwise kernels up to this size run the direct loop
QP = 16  # columns per packed panel
QK = 64  # k padding of packed rows
ROWPAD = 32  # packed A rows are padded to this


def int8_isa(features: tuple[str, ...]) -> int:
    """The int8 kernel variant for a target with ``features`` (best first)."""
    if "amx_int8" in features and "amx_tile" in features:
        return AMX
    if "avx512_vnni" in features:
        return VNNI
    return PORTABLE


def runs_as(isa: int) -> int:
    """The variant the kernels run on this machine when ``isa`` is asked for (``nk_int8_isa``:
    the CPU must have it, and AMX needs the kernel's permission); ``isa`` without a compiler."""
    from nerve.engines.native.cache import kernel_library
    from nerve.engines.native.toolchain import find_toolchain

    tc = find_toolchain()
    if tc is None:
        return isa
    return int(kernel_library(tc).handle.nk_int8_isa(isa))


# ---- packing --------------------------------------------------------------------------------


def _up(x: int, m: int) -> int:
    return -(-x // m) * m


def quad_bytes(groups: int, k: int, n: int) -> int:
    """Bytes of a ``k x n`` signed operand per group in the quad layout (``nk_quad_bytes``)."""
    panels = -(-n // QP)
    return groups * (panels * (_up(k, QK) // 4) * 64 + panels * QP * 4)


def _aligned_bytes(size: int) -> np.ndarray:
    raw = np.zeros(size + 64, np.int8)
    skip = -raw.ctypes.data % 64
    return raw[skip : skip + size]


def pack_quad(w: np.ndarray, groups: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """The int8/uint8 right operand ``w`` in the quad layout of ``nk_int8.c``, flat int8.

    ``w`` is a MatMulInteger B ``[K, N]`` or a ConvInteger weight ``[O, C/G, *kernel]`` (per
    group ``N = O/G`` columns, ``k`` ordered (kernel tap, channel)). Per group: panels of 16
    columns, ``[KQ][16][4]`` bytes (byte ``(q, j, i)`` is row ``4q + i`` of column ``16p + j``;
    ``KQ = ceil(K/64)*16``, zero-padded), then the int32 column sums. uint8 values are stored
    minus 128 (the kernel adds the shift back with the zero points). ``out``: a previous result
    for a weight of the same shape, rewritten in place.

    >>> b = np.arange(6, dtype=np.int8).reshape(3, 2)  # K=3, N=2
    >>> p = pack_quad(b)
    >>> p[:8].tolist(), p[64 * 16 :].view(np.int32)[:3].tolist()
    ([0, 2, 4, 0, 1, 3, 5, 0], [6, 9, 0])
    """
    w = np.asarray(w)
    if w.ndim > 2:
        o, cg = w.shape[:2]
        taps = math.prod(w.shape[2:])
        per_group = w.reshape(groups, o // groups, cg, taps).transpose(0, 3, 2, 1)
        b = per_group.reshape(groups, taps * cg, o // groups)  # [G][K = (tap, c)][N]
    else:
        b = w.reshape(1, *w.shape)
    if b.dtype == np.uint8:
        signed = (b ^ np.uint8(0x80)).view(np.int8)
    else:
        signed = b.astype(np.int8, copy=False)
    g, k, n = signed.shape
    panels, kq = -(-n // QP), _up(k, QK) // 4
    size = quad_bytes(g, k, n)
    if out is None or out.size != size or out.dtype != np.int8:
        out = _aligned_bytes(size)
    per = size // g
    body = panels * kq * 64
    for gi in range(g):
        padded = np.zeros((kq * 4, panels * QP), np.int8)
        padded[:k, :n] = signed[gi]
        block = out[gi * per : gi * per + body].reshape(panels, kq, QP, 4)
        block[...] = padded.reshape(kq, 4, panels, QP).transpose(2, 0, 3, 1)
        out[gi * per + body : (gi + 1) * per].view(np.int32)[:] = padded.sum(0, dtype=np.int32)
    return out


def _pack_spec(spec: PackSpec, array: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    return pack_quad(array, spec.groups, out)


PACKERS["quad"] = _pack_spec


# ---- steps ----------------------------------------------------------------------------------


def _ints(values: tuple[int, ...]) -> str:
    return "{" + ", ".join(f"{int(v)}LL" for v in values) + "}"


@dataclass
class Int8Step(_WithEpilogue):
    """One ``nk_matmul_i8`` / ``nk_conv2d_i8`` call: an integer product, optionally with its
    operand quantization (``a_scale``) and its dequantization (``y_scale``) fused."""

    isa: int = PORTABLE  # the variant that runs (see runs_as)
    asked: int = PORTABLE  # the variant the target's features ask for
    desc: tuple[int, ...] = ()  # convolutions: the nk_conv descriptor
    m: int = 0
    n: int = 0
    k: int = 0
    a_rows: int = 1
    a: str = ""
    a_type: int = 0
    a_scale: str = ""  # a float32 A is quantized with this scale to a_qtype
    a_qtype: int = 0
    a_zero: str = ""
    a_zero_n: int = 0
    b: str = ""  # the weight, or its packed slot when b_packed
    b_type: int = 0
    b_packed: bool = False
    b_zero: str = ""
    b_zero_n: int = 0
    y_scale: str = ""  # set when a DequantizeLinear folded in: the output is float32
    y_scale_n: int = 0
    fused: list[str] = field(default_factory=list)  # op types folded into this call

    @property
    def kernel(self) -> str:
        """The kernel this step runs, as the CompileReport names it."""
        fused = f" (+{', '.join(self.fused)} fused)" if self.fused else ""
        text = f"int8 {self.nodes[0].op_type}{fused} on {ISA_NAMES[self.isa]}"
        if self.asked != self.isa:
            text += f" (the target lists {ISA_NAMES[self.asked]}, which this machine cannot run)"
        return text

    def reads(self) -> list[str]:
        names = [self.a, self.a_scale, self.a_zero, self.b, self.b_zero, self.y_scale]
        return [n for n in names if n] + [o.name for o in self.chain.operands]

    def writes(self) -> list[str]:
        return [self.out]

    def workspace(self) -> int:
        packed_b = 0
        if self.desc:
            n, c, h, w, o = self.desc[:5]
            kk, g = self.desc[7] * self.desc[8] * (c // self.desc[15]), self.desc[15]
            if c == g and not self.b_packed and self.desc[7] * self.desc[8] <= DW_MAX_TAPS:
                return 0  # the direct depthwise loop
            if not self.b_packed:
                packed_b = quad_bytes(g, kk, o // g)
            return 64 + _up(n * h * w * c, 64) + _up(4 * _up(o, QP), 64) + packed_b
        mp, kp = _up(self.m, ROWPAD), _up(self.k, QK)
        if not self.b_packed:
            packed_b = quad_bytes(1, self.k, self.n)
        return 64 + _up(mp * kp, 64) + 2 * _up(4 * mp, 64) + _up(4 * _up(self.n, QP), 64) + packed_b

    def emit(self, em: Emitter, index: int) -> list[str]:
        lines = ["{"]
        if self.desc:
            lines.append(f"    static const nk_conv d = {_ints(self.desc)};")
        lines += ["    " + s for s in self.epilogue_args(em)]
        ep, ea = self.epilogue(em)

        def ptr(name: str, ctype: str) -> str:
            return em.ptr(name, ctype) if name else "NULL"

        a_ctype = "float" if self.a_type == T_CODES[DType.FLOAT32] else "void"
        fields = [
            f".isa = {self.isa}", f".M = {self.m}LL", f".N = {self.n}LL", f".K = {self.k}LL",
            f".a_rows = {max(1, self.a_rows)}LL", f".a = {ptr(self.a, a_ctype)}",
            f".a_type = {T_NAMES[self.a_type]}", f".a_scale = {ptr(self.a_scale, 'float')}",
            f".a_qtype = {T_NAMES[self.a_qtype]}", f".a_zero = {ptr(self.a_zero, 'void')}",
            f".a_zero_n = {self.a_zero_n}LL", f".b = {ptr(self.b, 'void')}",
            f".b_type = {T_NAMES[self.b_type]}", f".b_packed = {int(self.b_packed)}",
            f".b_zero = {ptr(self.b_zero, 'void')}", f".b_zero_n = {self.b_zero_n}LL",
            f".y = {em.ptr(self.out, 'void')}", f".y_scale = {ptr(self.y_scale, 'float')}",
            f".y_scale_n = {self.y_scale_n}LL", f".ep = {ep}", f".ep_args = {ea}",
            f".work = {em.workspace(index, 'void') if self.workspace() else 'NULL'}",
        ]  # fmt: skip
        lines.append("    nk_i8 g = {" + ", ".join(fields) + "};")
        call = "nk_conv2d_i8(nt, &d, &g);" if self.desc else "nk_matmul_i8(nt, &g);"
        lines += ["    " + call, "}"]
        return lines


# ---- per-lowering state -----------------------------------------------------------------------


@dataclass
class _Deferred:
    """A QuantizeLinear left to its readers: they quantize ``x`` while packing it."""

    x: str
    scale: str
    zero: str
    qtype: int


@dataclass
class _State:
    deferred: dict[str, _Deferred] = field(default_factory=dict)  # quantized value -> its source
    products: dict[str, Int8Step] = field(default_factory=dict)  # int32 result -> its step


_STATES: weakref.WeakKeyDictionary[Lowering, _State] = weakref.WeakKeyDictionary()


def _state(lw: Lowering) -> _State:
    state = _STATES.get(lw)
    if state is None:
        state = _STATES[lw] = _State()
    return state


def _numel(lw: Lowering, name: str) -> int:
    return lw.type(name).numel if name else 0


# ---- QuantizeLinear ------------------------------------------------------------------------------

PRODUCTS = ("MatMulInteger", "ConvInteger")


def _can_defer(lw: Lowering, node: Node) -> bool:
    """True when every reader of the quantized value is an integer product reading it as A
    with a per-tensor scale and zero point (so the product can quantize x itself)."""
    x, scale = node.inputs[:2]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    q = node.outputs[0]
    if q in lw.keep or lw.type(x).dtype is not DType.FLOAT32:
        return False
    if _numel(lw, scale) != 1 or (zero and _numel(lw, zero) != 1):
        return False
    readers = [n for n in lw.nodes if q in n.inputs]
    if not readers or lw.uses.get(q, 0) != len(readers):
        return False
    return all(
        n.op_type in PRODUCTS
        and not n.domain
        and n.inputs[0] == q
        and q not in n.inputs[1:]
        and _same_zero(lw, zero, n.inputs[2] if len(n.inputs) > 2 else "")
        for n in readers
    )


def _same_zero(lw: Lowering, first: str, second: str) -> bool:
    """Whether two zero points (names; "" is absent, i.e. 0) surely hold one value: the
    product must subtract the zero point the quantization added."""
    if first == second:
        return True
    values = []
    for name in (first, second):
        if not name:
            values.append(np.zeros(1, np.int64))
        elif name in lw.graph.constants:
            values.append(np.asarray(lw.graph.constants[name]).reshape(-1).astype(np.int64))
        else:
            return False
    return values[0].size == 1 and values[1].size == 1 and int(values[0][0]) == int(values[1][0])


def _axis_layout(shape: tuple[int, ...], axis: int, per_axis: bool) -> tuple[int, int, int]:
    if not per_axis:
        return 1, 1, math.prod(shape)
    axis = normalize_axis(axis, len(shape))
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


@builds("QuantizeLinear")
def _quantize(lw: Lowering, node: Node) -> list[Step]:
    x, scale = node.inputs[:2]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    y = node.outputs[0]
    qtype = T_CODES[lw.type(y).dtype]
    if _can_defer(lw, node):
        _state(lw).deferred[y] = _Deferred(x, scale, zero, qtype)
        return []
    shape = lw.type(x).shape
    n_scale = _numel(lw, scale)
    outer, axis, inner = _axis_layout(shape, int(node.attr("axis", 1)), n_scale > 1)
    inputs = [x, scale, *([zero] if zero else [])]
    zero_arg = "{t2}" if zero else "NULL"
    out = f"{{t{len(inputs)}}}"
    template = (
        f"nk_quantize(nt, {outer}LL, {axis}LL, {inner}LL, {{t0}}, {{t1}}, {n_scale}LL, "
        f"{zero_arg}, {T_NAMES[qtype]}, {out})"
    )
    ctypes = {zero: "void", y: "void"} if zero else {y: "void"}
    return [CallStep([node], template, inputs, [y], ctypes)]


# ---- DequantizeLinear --------------------------------------------------------------------------------


def _folds_into(lw: Lowering, node: Node, step: Int8Step) -> bool:
    """Whether ``node`` (a DequantizeLinear of ``step``'s int32 result) can be the step's
    output scaling: no zero point, a per-tensor or per-output-column scale."""
    x, scale = node.inputs[:2]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    if zero or lw.uses.get(x, 0) != 1 or x in lw.keep or step.y_scale:
        return False
    if int(node.attr("block_size", 0)) or lw.type(node.outputs[0]).dtype is not DType.FLOAT32:
        return False
    if lw.type(scale).dtype is not DType.FLOAT32 or not lw._ready_before(
        scale, lw.steps.index(step)
    ):
        return False
    n = _numel(lw, scale)
    if n == 1:
        return True
    rank = lw.type(x).rank
    axis = normalize_axis(int(node.attr("axis", 1)), rank)
    column_axis = 1 if step.desc else rank - 1
    return axis == column_axis and n == lw.type(x).shape[axis] and lw.type(scale).rank == 1


@builds("DequantizeLinear")
def _dequantize(lw: Lowering, node: Node) -> list[Step]:
    x, scale = node.inputs[:2]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    y = node.outputs[0]
    state = _state(lw)
    step = state.products.get(x)
    if step is not None and _folds_into(lw, node, step):
        del state.products[x]
        step.y_scale, step.y_scale_n = scale, _numel(lw, scale)
        step.chain.out = y
        step.nodes.append(node)
        step.fused.append("DequantizeLinear")
        index = lw.steps.index(step)
        lw.produced_at[y] = index
        lw.open[y] = step  # bias and activation may now join the epilogue
        return []
    shape = lw.type(x).shape
    n_scale = _numel(lw, scale)
    outer, axis, inner = _axis_layout(shape, int(node.attr("axis", 1)), n_scale > 1)
    xtype = T_NAMES[T_CODES[lw.type(x).dtype]]
    inputs = [x, scale, *([zero] if zero else [])]
    zero_arg = "{t2}" if zero else "NULL"
    out = f"{{t{len(inputs)}}}"
    template = (
        f"nk_dequantize(nt, {outer}LL, {axis}LL, {inner}LL, {{t0}}, {xtype}, {{t1}}, "
        f"{n_scale}LL, {zero_arg}, {out})"
    )
    ctypes = {x: "void", zero: "void"} if zero else {x: "void"}
    return [CallStep([node], template, inputs, [y], ctypes)]


# ---- the products ------------------------------------------------------------------------------------


def _operand_a(lw: Lowering, step: Int8Step, a: str, zero: str) -> None:
    """Point ``step`` at its A operand: the quantized tensor, or the float32 tensor a deferred
    QuantizeLinear reads (then the product quantizes it)."""
    deferred = _state(lw).deferred.get(a)
    if deferred is not None:
        step.a, step.a_type = deferred.x, T_CODES[DType.FLOAT32]
        step.a_scale, step.a_qtype = deferred.scale, deferred.qtype
        step.a_zero, step.a_zero_n = deferred.zero, _numel(lw, deferred.zero)
        step.fused.append("QuantizeLinear")
        return  # the node's own zero point holds the same value (see _can_defer)
    step.a, step.a_type = a, T_CODES[lw.type(a).dtype]
    step.a_qtype = step.a_type
    step.a_zero, step.a_zero_n = zero, _numel(lw, zero)


def _operand_b(lw: Lowering, step: Int8Step, b: str, zero: str, groups: int, pack: bool) -> None:
    step.b_type = T_CODES[lw.type(b).dtype]
    step.b_zero, step.b_zero_n = zero, _numel(lw, zero)
    step.b = b
    if pack and b in lw.graph.params:
        name = f"{b}.packed.quad{groups}"
        if name not in lw.packed:
            lw.packed[name] = PackSpec(b, "quad", groups)
            shape = lw.type(b).shape
            if len(shape) > 2:
                k = math.prod(shape[1:])
                size = quad_bytes(groups, k, shape[0] // groups)
            else:
                size = quad_bytes(1, shape[0], shape[1])
            lw.extra_types[name] = TensorType(DType.INT8, (size,))
        step.b, step.b_packed = name, True


def _add_product(lw: Lowering, step: Int8Step) -> list[Step]:
    lw.add(step)
    # The int32 result takes no elementwise epilogue (the chains compute float32); a
    # DequantizeLinear reading it may fold in later and reopen the chain (see _dequantize).
    lw.open.pop(step.out, None)
    _state(lw).products[step.out] = step
    return []


@builds("MatMulInteger")
def _matmul_integer(lw: Lowering, node: Node) -> list[Step]:
    a, b = node.inputs[:2]
    a_zero = node.inputs[2] if len(node.inputs) > 2 else ""
    b_zero = node.inputs[3] if len(node.inputs) > 3 else ""
    out = node.outputs[0]
    a_shape, (k, n) = lw.type(a).shape, lw.type(b).shape
    rows = 1 if len(a_shape) == 1 else a_shape[-2]
    m = math.prod(a_shape[:-1]) if len(a_shape) > 1 else 1
    y_shape = lw.type(out).shape
    asked = int8_isa(lw.features)
    step = Int8Step([node], Chain(y_shape, out), isa=runs_as(asked), asked=asked, m=m, n=n,
                    k=k, a_rows=rows)  # fmt: skip
    step.groups = ([], list(range(len(y_shape) - 1)), [len(y_shape) - 1])
    _operand_a(lw, step, a, a_zero)
    _operand_b(lw, step, b, b_zero, 1, pack=True)
    return _add_product(lw, step)


@builds("ConvInteger")
def _conv_integer(lw: Lowering, node: Node) -> list[Step]:
    x, w = node.inputs[:2]
    x_zero = node.inputs[2] if len(node.inputs) > 2 else ""
    w_zero = node.inputs[3] if len(node.inputs) > 3 else ""
    out = node.outputs[0]
    xs, ws, ys = lw.type(x).shape, lw.type(w).shape, lw.type(out).shape
    desc, _ = conv_descriptor(node, xs, ws, ys)
    group = int(node.attr("group", 1))
    asked = int8_isa(lw.features)
    step = Int8Step([node], Chain(ys, out), isa=runs_as(asked), asked=asked, desc=desc)
    step.groups = ([0], [1], list(range(2, len(ys))))
    _operand_a(lw, step, x, x_zero)
    # One input channel per group: the direct loop reads the weights as they are.
    direct = xs[1] == group and math.prod(ws[2:]) <= DW_MAX_TAPS
    _operand_b(lw, step, w, w_zero, group, pack=not direct)
    return _add_product(lw, step)


__all__ = ["ISA_NAMES", "Int8Step", "int8_isa", "pack_quad", "quad_bytes"]

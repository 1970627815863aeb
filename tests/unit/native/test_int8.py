"""The native engine's int8 path (csrc/nk_int8.c, lower_int8.py).

Integer products must be bit-exact against an integer numpy reference written here (int64
arithmetic wrapped to int32); quantization and dequantization must equal the host engine's
(which is the oracle), and fused layers must equal the host's emulation of the int8 policy.
The kernels are driven two ways: through ctypes with many shapes (no C compile per example),
and through compiled programs (one compiler run for the module).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import ModelProto, TensorProto, helper, numpy_helper

import nerve
from nerve.compiler.targets import cpu
from nerve.engines import native
from nerve.engines.native import cache
from nerve.engines.native.lower_int8 import AMX, PORTABLE, VNNI, Int8Step, pack_quad
from nerve.engines.native.toolchain import CSRC, find_toolchain
from nerve.models import MODELS
from tests.unit.quant.helpers import cnn

FEATURES = cpu.detect_features()
HAS_VNNI = "avx512_vnni" in FEATURES
HAS_AMX = "amx_int8" in FEATURES and "amx_tile" in FEATURES
BEST = AMX if HAS_AMX else (VNNI if HAS_VNNI else PORTABLE)
T = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.float32): 2}


# ---- the kernels through ctypes ---------------------------------------------------------------


class NkI8(ctypes.Structure):
    """``nk_i8`` of nk.h."""

    _fields_ = [
        ("isa", ctypes.c_int), ("M", ctypes.c_int64), ("N", ctypes.c_int64),
        ("K", ctypes.c_int64), ("a_rows", ctypes.c_int64), ("a", ctypes.c_void_p),
        ("a_type", ctypes.c_int), ("a_scale", ctypes.c_void_p), ("a_qtype", ctypes.c_int),
        ("a_zero", ctypes.c_void_p), ("a_zero_n", ctypes.c_int64), ("b", ctypes.c_void_p),
        ("b_type", ctypes.c_int), ("b_packed", ctypes.c_int), ("b_zero", ctypes.c_void_p),
        ("b_zero_n", ctypes.c_int64), ("y", ctypes.c_void_p), ("y_scale", ctypes.c_void_p),
        ("y_scale_n", ctypes.c_int64), ("ep", ctypes.c_void_p), ("ep_args", ctypes.c_void_p),
        ("work", ctypes.c_void_p),
    ]  # fmt: skip


CONV_FIELDS = ["N", "C", "H", "W", "O", "OH", "OW", "KH", "KW", "SH", "SW", "PT", "PL", "DH",
               "DW", "G"]  # fmt: skip


class NkConv(ctypes.Structure):
    """``nk_conv`` of nk.h."""

    _fields_ = [(f, ctypes.c_int64) for f in CONV_FIELDS]


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    tc = find_toolchain()
    assert tc is not None
    handle = cache.kernel_library(tc).handle
    handle.nk_matmul_i8_workspace.restype = ctypes.c_int64
    handle.nk_conv2d_i8_workspace.restype = ctypes.c_int64
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    handle.nk_quantize.argtypes = [i32, i64, i64, i64, ptr, ptr, i64, ptr, i32, ptr]
    handle.nk_dequantize.argtypes = [i32, i64, i64, i64, ptr, i32, ptr, i64, ptr, ptr]
    return handle


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _wrap32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.int64).astype(np.int32)


def ref_matmul(a: np.ndarray, b: np.ndarray, za: np.ndarray | None, zb: np.ndarray | None
               ) -> np.ndarray:  # fmt: skip
    """(A - za) @ (B - zb) exactly; za per tensor or per row, zb per tensor or per column."""
    x, w = a.astype(np.int64), b.astype(np.int64)
    if za is not None:
        x = x - (za.astype(np.int64).reshape(-1, 1) if za.size > 1 else int(za.reshape(-1)[0]))
    if zb is not None:
        w = w - (zb.astype(np.int64).reshape(1, -1) if zb.size > 1 else int(zb.reshape(-1)[0]))
    return _wrap32(x @ w)


def ref_conv(x: np.ndarray, w: np.ndarray, zx: int, zw: np.ndarray | None, d: dict[str, int]
             ) -> np.ndarray:  # fmt: skip
    """ConvInteger by taps: (x - zx) zero-padded, times (w - zw[o]), summed exactly."""
    n, c, h, wd = x.shape
    o, cg = w.shape[:2]
    g = d["G"]
    xs = np.zeros((n, c, h + d["PT"] + d["PB"], wd + d["PL"] + d["PR"]), np.int64)
    xs[:, :, d["PT"] : d["PT"] + h, d["PL"] : d["PL"] + wd] = x.astype(np.int64) - zx
    ws = w.astype(np.int64)
    if zw is not None:
        ws = ws - zw.astype(np.int64).reshape(-1, 1, 1, 1)
    oh, ow = d["OH"], d["OW"]
    y = np.zeros((n, o, oh, ow), np.int64)
    og = o // g
    for gi in range(g):
        for ky in range(w.shape[2]):
            for kx in range(w.shape[3]):
                iy, ix = ky * d["DH"], kx * d["DW"]
                patch = xs[:, gi * cg : (gi + 1) * cg,
                           iy : iy + (oh - 1) * d["SH"] + 1 : d["SH"],
                           ix : ix + (ow - 1) * d["SW"] + 1 : d["SW"]]  # fmt: skip
                taps = ws[gi * og : (gi + 1) * og, :, ky, kx]
                y[:, gi * og : (gi + 1) * og] += np.einsum("nchw,oc->nohw", patch, taps)
    return _wrap32(y)


def quantize_ref(x: np.ndarray, scale: np.float32, zero: int, dtype: type) -> np.ndarray:
    """QuantizeLinear: round half to even of x / scale (float32), + zero, saturated; NaN -> 0."""
    info = np.iinfo(dtype)
    with np.errstate(all="ignore"):
        q = np.rint((x / scale).astype(np.float64)) + zero
    return np.clip(np.nan_to_num(q, nan=0.0), info.min, info.max).astype(dtype)


def run_matmul(lib: ctypes.CDLL, a: np.ndarray, b: np.ndarray, *, za: np.ndarray | None = None,
               zb: np.ndarray | None = None, isa: int = BEST, packed: bool = False,
               threads: int = 1, a_rows: int | None = None, quant: tuple[Any, ...] | None = None,
               y_scale: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """nk_matmul_i8 on 2-D a (uint8/int8, or float32 with quant = (scale, qtype dtype)) and b."""
    m, k = a.shape
    n = b.shape[1]
    g = NkI8(isa=isa, M=m, N=n, K=k, a_rows=a_rows or m, a=_ptr(a), a_type=T[a.dtype])
    keep: list[np.ndarray] = []
    if quant is not None:
        scale = np.array([quant[0]], np.float32)
        keep.append(scale)
        g.a_scale, g.a_qtype = scale.ctypes.data, T[np.dtype(quant[1])]
    else:
        g.a_qtype = g.a_type
    if za is not None:
        g.a_zero, g.a_zero_n = za.ctypes.data, za.size
    bb = pack_quad(b) if packed else np.ascontiguousarray(b)
    g.b, g.b_type, g.b_packed = bb.ctypes.data, T[b.dtype], int(packed)
    if zb is not None:
        g.b_zero, g.b_zero_n = zb.ctypes.data, zb.size
    y = np.empty((m, n), np.float32 if y_scale is not None else np.int32)
    g.y = y.ctypes.data
    if y_scale is not None:
        g.y_scale, g.y_scale_n = y_scale.ctypes.data, y_scale.size
    size = lib.nk_matmul_i8_workspace(ctypes.byref(g))
    step = Int8Step([], m=m, n=n, k=k, b_packed=packed)
    assert size == step.workspace()  # the lowering reserves exactly what the kernel uses
    work = np.empty(size, np.uint8)
    g.work = work.ctypes.data
    lib.nk_matmul_i8(threads, ctypes.byref(g))
    return y


def conv_geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], s: int, dil: int,
                  pads: tuple[int, int, int, int], g: int) -> dict[str, int]:  # fmt: skip
    n, c, h, wd = x_shape
    o, _, kh, kw = w_shape
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - ((kh - 1) * dil + 1)) // s + 1
    ow = (wd + pl + pr - ((kw - 1) * dil + 1)) // s + 1
    return dict(N=n, C=c, H=h, W=wd, O=o, OH=oh, OW=ow, KH=kh, KW=kw, SH=s, SW=s, PT=pt, PL=pl,
                PB=pb, PR=pr, DH=dil, DW=dil, G=g)  # fmt: skip


def run_conv(lib: ctypes.CDLL, x: np.ndarray, w: np.ndarray, d: dict[str, int], *,
             zx: np.ndarray | None = None, zw: np.ndarray | None = None, isa: int = BEST,
             packed: bool = False, threads: int = 1) -> np.ndarray:  # fmt: skip
    desc = NkConv(**{f: d[f] for f in CONV_FIELDS})
    g = NkI8(isa=isa, a=_ptr(x), a_type=T[x.dtype], a_qtype=T[x.dtype])
    if zx is not None:
        g.a_zero, g.a_zero_n = zx.ctypes.data, 1
    bb = pack_quad(w, d["G"]) if packed else np.ascontiguousarray(w)
    g.b, g.b_type, g.b_packed = bb.ctypes.data, T[w.dtype], int(packed)
    if zw is not None:
        g.b_zero, g.b_zero_n = zw.ctypes.data, zw.size
    y = np.empty((d["N"], d["O"], d["OH"], d["OW"]), np.int32)
    g.y = y.ctypes.data
    size = lib.nk_conv2d_i8_workspace(ctypes.byref(desc), ctypes.byref(g))
    step = Int8Step([], b_packed=packed, desc=tuple(d[f] for f in CONV_FIELDS))
    assert size == step.workspace()
    work = np.empty(size, np.uint8)
    g.work = work.ctypes.data
    lib.nk_conv2d_i8(threads, ctypes.byref(desc), ctypes.byref(g))
    return y


def _ints(rng: np.random.Generator, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


BYTES = st.sampled_from([np.uint8, np.int8])
SLOW = [HealthCheck.too_slow]


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=SLOW)
@given(m=st.integers(1, 70), k=st.integers(1, 150), n=st.integers(1, 70), at=BYTES, bt=BYTES,
       za=st.sampled_from(["none", "zero", "tensor", "row"]),
       zb=st.sampled_from(["none", "tensor", "column"]), packed=st.booleans(),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))  # fmt: skip
@example(m=1, k=3, n=1, at=np.uint8, bt=np.int8, za="tensor", zb="none", packed=True, threads=1,
         seed=0)  # fmt: skip
def test_matmul_integer_is_bit_exact(lib: ctypes.CDLL, m: int, k: int, n: int, at: type,
                                     bt: type, za: str, zb: str, packed: bool, threads: int,
                                     seed: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    a, b = _ints(rng, at, (m, k)), _ints(rng, bt, (k, n))
    a_zero = {"none": None, "zero": np.zeros(1, at), "tensor": _ints(rng, at, (1,)),
              "row": _ints(rng, at, (m,))}[za]  # fmt: skip
    b_zero = {"none": None, "tensor": _ints(rng, bt, (1,)), "column": _ints(rng, bt, (n,))}[zb]
    want = ref_matmul(a, b, a_zero, b_zero)
    for isa in sorted({PORTABLE, BEST}):
        got = run_matmul(lib, a, b, za=a_zero, zb=b_zero, isa=isa, packed=packed,
                         threads=threads)  # fmt: skip
        np.testing.assert_array_equal(got, want, err_msg=f"isa {isa}")


def test_matmul_integer_blocks_and_threads(lib: ctypes.CDLL) -> None:
    """Several column chunks and row chunks (the unit split), K over several 64-byte steps."""
    rng = np.random.default_rng(1)
    a, b = _ints(rng, np.uint8, (97, 333)), _ints(rng, np.int8, (333, 420))
    za, zb = np.array([17], np.uint8), _ints(rng, np.int8, (420,))
    want = ref_matmul(a, b, za, zb)
    for packed in (False, True):
        got = run_matmul(lib, a, b, za=za, zb=zb, packed=packed, threads=2)
        np.testing.assert_array_equal(got, want)


def test_per_row_zero_point_repeats_over_folded_batches(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(2)
    a, b = _ints(rng, np.uint8, (2, 5, 9)), _ints(rng, np.int8, (9, 7))
    za = _ints(rng, np.uint8, (5,))
    want = np.stack([ref_matmul(a[i], b, za, None) for i in range(2)]).reshape(10, 7)
    got = run_matmul(lib, a.reshape(10, 9), b, za=za, a_rows=5)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=SLOW)
@given(m=st.integers(1, 40), k=st.integers(1, 90), n=st.integers(1, 40), qt=BYTES,
       per_column=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
def test_fused_quantize_and_dequantize_equal_the_separate_ops(
    lib: ctypes.CDLL, m: int, k: int, n: int, qt: type, per_column: bool, seed: int
) -> None:
    """Quantizing float32 A while packing it, and scaling the int32 result, give exactly what
    QuantizeLinear -> MatMulInteger -> DequantizeLinear give (two float roundings)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    x[0, 0] = np.nan
    if k > 2:
        x[0, 1], x[0, 2] = np.inf, 0.5 * np.float32(0.037)  # saturates; a halfway value
    scale = np.float32(0.037)
    zero: np.ndarray = np.array([rng.integers(-20, 20) % 128], qt)
    b = _ints(rng, np.int8, (k, n))
    ys = (rng.random(n if per_column else 1) + 0.5).astype(np.float32) * np.float32(0.01)
    q = quantize_ref(x, scale, int(zero[0]), qt)
    want = ref_matmul(q, b, zero, None).astype(np.float32) * (ys if per_column else ys[0])
    for isa in sorted({PORTABLE, BEST}):
        got = run_matmul(lib, x, b, za=zero, quant=(scale, qt), y_scale=ys, isa=isa,
                         packed=True)  # fmt: skip
        np.testing.assert_array_equal(got, want, err_msg=f"isa {isa}")


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=SLOW)
@given(n=st.integers(1, 2), cg=st.integers(1, 5), og=st.integers(1, 20), g=st.integers(1, 2),
       hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), kernel=st.integers(1, 3),
       s=st.integers(1, 2), dil=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 2)] * 4),
       xt=BYTES, wt=BYTES, zw=st.sampled_from(["none", "tensor", "channel"]),
       packed=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
@example(
    n=1,
    cg=3,
    og=5,
    g=1,
    hw=(4, 3),
    kernel=1,
    s=1,
    dil=1,
    pads=(2, 2, 2, 2),
    xt=np.uint8,
    wt=np.int8,
    zw="none",
    packed=True,
    seed=1,
)  # padding wider than the kernel
@example(
    n=2,
    cg=1,
    og=2,
    g=3,
    hw=(6, 7),
    kernel=3,
    s=2,
    dil=1,
    pads=(1, 1, 1, 1),
    xt=np.int8,
    wt=np.uint8,
    zw="channel",
    packed=False,
    seed=2,
)  # depthwise (multiplier 2): direct
def test_conv_integer_is_bit_exact(lib: ctypes.CDLL, n: int, cg: int, og: int, g: int,
                                   hw: tuple[int, int], kernel: int, s: int, dil: int,
                                   pads: tuple[int, int, int, int], xt: type, wt: type, zw: str,
                                   packed: bool, seed: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    x_shape, w_shape = (n, cg * g, *hw), (og * g, cg, kernel, kernel)
    d = conv_geometry(x_shape, w_shape, s, dil, pads, g)
    if d["OH"] < 1 or d["OW"] < 1:
        return
    x, w = _ints(rng, xt, x_shape), _ints(rng, wt, w_shape)
    zx = _ints(rng, xt, (1,))
    w_zero = {"none": None, "tensor": _ints(rng, wt, (1,)), "channel": _ints(rng, wt, (og * g,))}
    want = ref_conv(x, w, int(zx[0]), w_zero[zw], d)
    for isa in sorted({PORTABLE, BEST}):
        got = run_conv(lib, x, w, d, zx=zx, zw=w_zero[zw], isa=isa, packed=packed, threads=2)
        np.testing.assert_array_equal(got, want, err_msg=f"isa {isa}")


def test_quantize_and_dequantize_kernels_equal_the_host(lib: ctypes.CDLL) -> None:
    from nerve.engines.host.kernels.quant import dequantize_linear, quantize_linear
    from nerve.ir import Node

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 4, 5)) * 300).astype(np.float32)
    x.flat[:6] = [np.nan, np.inf, -np.inf, 2.5, 3.5, -2.5]  # halves round to even
    for dtype, code in ((np.uint8, 0), (np.int8, 1)):
        for axis_scale in (False, True):
            n = 4 if axis_scale else 1
            scale = (rng.random(n) + 0.5).astype(np.float32)
            zero = _ints(rng, dtype, (n,))
            node = Node("QuantizeLinear", ["x", "s", "z"], ["y"], {"axis": 1})
            want = quantize_linear(node, x, scale if n > 1 else scale.reshape(()), zero)
            got = np.empty(x.shape, dtype)
            layout = (3, 4, 5) if n > 1 else (1, 1, x.size)
            lib.nk_quantize(2, *layout, _ptr(x), _ptr(scale), n, _ptr(zero), code, _ptr(got))
            np.testing.assert_array_equal(got, want)
    for dtype, code in ((np.uint8, 0), (np.int8, 1), (np.int32, 3)):
        q = (rng.integers(-(2**31), 2**31, (3, 4, 5)) if dtype == np.int32
             else _ints(rng, dtype, (3, 4, 5))).astype(dtype)  # fmt: skip
        scale, zero = (rng.random(4) + 0.5).astype(np.float32), (q[0, :, 0] // 3).astype(dtype)
        node = Node("DequantizeLinear", ["x", "s", "z"], ["y"], {"axis": 1})
        want = dequantize_linear(node, q, scale, zero)
        got = np.empty(q.shape, np.float32)
        lib.nk_dequantize(2, 3, 4, 5, _ptr(q), code, _ptr(scale), 4, _ptr(zero), _ptr(got))
        np.testing.assert_array_equal(got, want)


def test_the_machine_runs_the_best_variant_it_has(lib: ctypes.CDLL) -> None:
    """Asking for AMX runs AMX only where the CPU has it (and Linux permits it)."""
    assert lib.nk_int8_isa(PORTABLE) == PORTABLE
    assert lib.nk_int8_isa(VNNI) == (VNNI if HAS_VNNI else PORTABLE)
    assert lib.nk_int8_isa(AMX) in ((AMX, VNNI) if HAS_AMX else (BEST,))


def test_the_amx_variant_compiles(tmp_path: Path) -> None:
    """The AMX tile kernel builds with this compiler's normal flags (function-level target
    attributes); on machines without AMX this is all that can be checked."""
    tc = find_toolchain()
    assert tc is not None
    flags = [f for f in tc.cflags(kernels=True) if f != "-shared"]
    cmd = [tc.cc, *flags, "-c", str(CSRC / "nk_int8.c"), "-o", str(tmp_path / "i8.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not HAS_AMX, reason="the CPU has no AMX-INT8 (the AVX512-VNNI variant runs)")
def test_amx_tiles_are_bit_exact(lib: ctypes.CDLL) -> None:
    assert lib.nk_int8_isa(AMX) == AMX, "AMX present but the tile permission was refused"
    rng = np.random.default_rng(5)
    for m, k, n in ((1, 3, 1), (33, 65, 17), (64, 200, 50), (5, 64, 32)):
        a, b = _ints(rng, np.uint8, (m, k)), _ints(rng, np.int8, (k, n))
        za, zb = np.array([9], np.uint8), _ints(rng, np.int8, (n,))
        got = run_matmul(lib, a, b, za=za, zb=zb, isa=AMX, packed=True, threads=2)
        np.testing.assert_array_equal(got, ref_matmul(a, b, za, zb))
    x, w = _ints(rng, np.uint8, (1, 6, 7, 7)), _ints(rng, np.int8, (20, 6, 3, 3))
    d = conv_geometry(x.shape, w.shape, 1, 1, (1, 1, 1, 1), 1)
    zx = np.array([3], np.uint8)
    got = run_conv(lib, x, w, d, zx=zx, isa=AMX, packed=True, threads=2)
    np.testing.assert_array_equal(got, ref_conv(x, w, 3, None, d))


def test_kernels_built_without_avx512_flags_are_bit_exact() -> None:
    """The library built without -march flags: the plain-C quantization, depthwise loop and
    portable product (the VNNI/AMX functions carry their own target attributes)."""
    import dataclasses

    tc = find_toolchain()
    assert tc is not None
    plain = cache.kernel_library(dataclasses.replace(tc, arch_flags=())).handle
    plain.nk_matmul_i8_workspace.restype = ctypes.c_int64
    plain.nk_conv2d_i8_workspace.restype = ctypes.c_int64
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((7, 45)) * 2).astype(np.float32)
    b, zero = _ints(rng, np.int8, (45, 21)), np.array([131], np.uint8)
    ys = (rng.random(21) * 0.01).astype(np.float32)
    want = ref_matmul(quantize_ref(x, np.float32(0.05), 131, np.uint8), b, zero, None)
    got = run_matmul(plain, x, b, za=zero, quant=(np.float32(0.05), np.uint8), y_scale=ys,
                     isa=PORTABLE, packed=True)  # fmt: skip
    np.testing.assert_array_equal(got, want.astype(np.float32) * ys)
    for shape, w_shape, group, s in (((1, 4, 9, 8), (6, 4, 3, 3), 1, 1),
                                     ((2, 3, 9, 8), (6, 1, 3, 3), 3, 2)):  # fmt: skip
        xi, w = _ints(rng, np.uint8, shape), _ints(rng, np.int8, w_shape)
        d = conv_geometry(shape, w_shape, s, 1, (1, 1, 1, 1), group)
        zx = np.array([5], np.uint8)
        got = run_conv(plain, xi, w, d, zx=zx, isa=PORTABLE, threads=2)
        np.testing.assert_array_equal(got, ref_conv(xi, w, 5, None, d))


def test_pack_quad_layout() -> None:
    w = np.arange(2 * 3 * 1 * 2, dtype=np.int8).reshape(2, 3, 1, 2)  # O=2, C=3, 1x2 taps
    packed = pack_quad(w)
    # k runs over (tap, channel): column 0 holds taps 0 of channels 0..2, then taps 1.
    assert packed[:4].tolist() == [0, 2, 4, 1]
    assert packed[4:8].tolist() == [6, 8, 10, 7]
    assert packed[64:68].tolist() == [3, 5, 0, 0]  # next quad: k = 4, 5, then zero padding
    u = np.array([[0, 255]], np.uint8)  # K=1, N=2: stored minus 128
    assert pack_quad(u)[[0, 4]].tolist() == [-128, 127]


# ---- compiled programs ------------------------------------------------------------------------


def _integer_model(nodes: list[Any], inputs: list[tuple[str, int, list[int]]],
                   outputs: list[tuple[str, int, list[int]]], inits: dict[str, np.ndarray]
                   ) -> ModelProto:  # fmt: skip
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _codes(program: nerve.Program | Any) -> str:
    """The generated C of a program's (or one executable's) native parts."""
    texts = []
    executables = program._executables if isinstance(program, nerve.Program) else [program]
    for exe in executables:
        for part in getattr(exe, "parts", [exe]):
            code = getattr(part, "code", None)
            if code is not None:
                texts.append(code.code)
    return "\n".join(texts)


def _portable(host: nerve.Program) -> tuple[Any, Any]:
    """The host program's int8 graph as one native segment of a target without int8 features
    (the cpu target refuses precision="int8" there): the portable C variant runs."""
    from nerve.engines.native import NativeEngine, segment_plan

    segment, plan = segment_plan(host.plan.graph, threads=2)
    return NativeEngine().build(segment, plan), plan


needs_int8_isa = pytest.mark.skipif(
    BEST == PORTABLE, reason="no avx512_vnni / amx_int8: the cpu target refuses precision int8"
)


@pytest.fixture(scope="module")
def compiled() -> dict[str, Any]:
    """Every program of this section, compiled in one C compiler run."""
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {}
    # Where the CPU has no int8 instructions, only the portable and AMX-listing targets build.
    target_here = cpu.target() if BEST != PORTABLE else None
    amx = cpu.target(features=(*FEATURES, "amx_tile", "amx_int8"))
    with native.batch():
        for name in ("cnn", "transformer"):
            spec = MODELS[name]
            model, feeds = spec.build(seed=0), spec.inputs(seed=0)
            cal = nerve.calibrate(nerve.compile(model, cache=False), [feeds])
            options: dict[str, Any] = dict(precision="int8", calibration=cal, cache=False)
            host = nerve.compile(model, target="host", **options)
            here = target_here and nerve.compile(model, target=target_here, threads=2, **options)
            out[name] = (here, host, feeds)
        model, weights = cnn(rng)
        x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
        cal = nerve.calibrate(nerve.compile(model, cache=False), [{"x": x}])
        options = {"precision": "int8", "calibration": cal, "cache": False}
        host = nerve.compile(model, target="host", **options)
        out["small"] = {
            "here": target_here and nerve.compile(model, target=target_here, **options),
            "portable": _portable(host),
            "amx": nerve.compile(model, target=amx, **options),
            "host": host,
            "x": x, "model": model, "weights": weights, "options": options,
        }  # fmt: skip
        b = _ints(rng, np.int8, (9, 20))
        mm = _integer_model(
            [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])],
            [("a", TensorProto.UINT8, [2, 3, 9])],
            [("y", TensorProto.INT32, [2, 3, 20])],
            {"b": b, "za": np.array(200, np.uint8), "zb": _ints(rng, np.int8, (20,))},
        )
        out["mm"] = nerve.compile(mm, target=cpu.target(), cache=False)
        conv1d = _integer_model(
            [helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], pads=[1, 1],
                              strides=[2])],
            [("x", TensorProto.UINT8, [1, 4, 11])], [("y", TensorProto.INT32, [1, 5, 6])],
            {"w": _ints(rng, np.int8, (5, 4, 3)), "zx": np.array(9, np.uint8),
             "zw": _ints(rng, np.int8, (5,))})  # fmt: skip
        out["conv1d"] = nerve.compile(conv1d, target=cpu.target(), cache=False)
        qdq = _integer_model(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["acc", "t"], ["f"], axis=0)],
            [("x", TensorProto.FLOAT, [2, 3, 4]), ("acc", TensorProto.INT32, [3, 5])],
            [("q", TensorProto.INT8, [2, 3, 4]), ("f", TensorProto.FLOAT, [3, 5])],
            {"s": np.array([0.5, 0.25, 2.0], np.float32), "z": np.array([1, -3, 0], np.int8),
             "t": np.array([0.1, 0.2, 0.3], np.float32)})  # fmt: skip
        out["qdq"] = nerve.compile(qdq, target=cpu.target(), cache=False)
    return out


@needs_int8_isa
@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_int8_models_match_the_host_emulation(compiled: dict[str, Any], name: str) -> None:
    cpu_program, host, feeds = compiled[name]
    assert {s.engine for s in cpu_program.plan.segments} == {"native"}
    code = _codes(cpu_program)
    assert "nk_quantize(" not in code and "nk_dequantize(" not in code  # all fused
    got, want = cpu_program.run(feeds), host.run(feeds)
    for key in want:
        if name == "cnn":  # integer layers and exact float ops: the same bits
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        else:  # layer norms, softmax, GELU round differently: not the int8 layers
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_each_int8_layer_is_one_kernel_call_and_the_report_names_it(
    compiled: dict[str, Any],
) -> None:
    """Here (VNNI on this machine class) and on a target without int8 features (portable)."""
    small = compiled["small"]
    host, x = small["host"], small["x"]
    want = host.run({"x": x})["y"]
    exe, plan = small["portable"]
    runs = [(exe, plan.report.notes, PORTABLE)]
    if small["here"]:
        runs.append((small["here"], small["here"].report.notes, BEST))
    names = {PORTABLE: "portable C", VNNI: "avx512_vnni", AMX: "amx_int8"}
    for program, notes, variant in runs:
        code = _codes(program)
        assert code.count("nk_conv2d_i8(") == 1 and code.count("nk_matmul_i8(") == 1
        text = "\n".join(notes)
        assert f"int8 ConvInteger (+QuantizeLinear, DequantizeLinear fused) on {names[variant]}" \
            in text, text  # fmt: skip
        if isinstance(program, nerve.Program):
            got = program.run({"x": x})["y"]
        else:
            env = {**host._base_env, "x": x}
            program.run(env)
            got = env["y"]
        np.testing.assert_array_equal(got, want, err_msg=names[variant])


def test_an_amx_target_says_what_runs_where_amx_is_missing(compiled: dict[str, Any]) -> None:
    small = compiled["small"]
    notes = "\n".join(small["amx"].report.notes)
    if HAS_AMX:
        assert "on amx_int8 (tdpbusd tiles)" in notes, notes
    else:
        assert "the target lists amx_int8 (tdpbusd tiles), which this machine cannot run" in notes
    got = small["amx"].run({"x": small["x"]})["y"]
    np.testing.assert_array_equal(got, small["host"].run({"x": small["x"]})["y"])


@needs_int8_isa
def test_weight_updates_repack_the_int8_weights(compiled: dict[str, Any]) -> None:
    small = compiled["small"]
    program, x = small["here"], small["x"]
    rng = np.random.default_rng(11)
    new = {k: (v + rng.standard_normal(v.shape).astype(np.float32)) for k, v in
           small["weights"].items()}  # fmt: skip
    before = program.run({"x": x})["y"].copy()
    program.update_weights(new)
    with native.batch():
        fresh = nerve.compile(small["model"], target=cpu.target(), **small["options"])
    fresh.update_weights(new)
    got = program.run({"x": x})["y"]
    assert not np.array_equal(got, before)
    np.testing.assert_array_equal(got, fresh.run({"x": x})["y"])


def test_onnx_integer_and_qdq_nodes_run_natively(compiled: dict[str, Any]) -> None:
    rng = np.random.default_rng(8)
    mm = compiled["mm"]
    assert "nk_matmul_i8(" in _codes(mm)
    a = _ints(rng, np.uint8, (2, 3, 9))
    graph = mm.plan.graph
    b, zb = (graph.weights.get(n, graph.constants.get(n)) for n in ("b", "zb"))
    want = np.stack([ref_matmul(a[i], b, np.array([200], np.uint8), zb) for i in range(2)])
    np.testing.assert_array_equal(mm.run({"a": a})["y"], want)
    conv1d = compiled["conv1d"]
    assert "nk_conv2d_i8(" in _codes(conv1d) and conv1d.plan.graph.weights  # packed weights
    x1 = _ints(rng, np.uint8, (1, 4, 11))
    w1, zw1 = (conv1d.plan.graph.weights.get(n, conv1d.plan.graph.constants.get(n))
               for n in ("w", "zw"))  # fmt: skip
    d = conv_geometry((1, 4, 1, 11), (5, 4, 1, 3), 1, 1, (0, 1, 0, 1), 1)
    d["SW"] = 2
    d["OW"] = 6
    want1 = ref_conv(x1.reshape(1, 4, 1, 11), w1.reshape(5, 4, 1, 3), 9, zw1, d)
    np.testing.assert_array_equal(conv1d.run({"x": x1})["y"], want1.reshape(1, 5, 6))
    qdq = compiled["qdq"]
    assert "nk_quantize(" in _codes(qdq) and "nk_dequantize(" in _codes(qdq)
    x = (rng.standard_normal((2, 3, 4)) * 4).astype(np.float32)
    acc = rng.integers(-(2**31), 2**31, (3, 5)).astype(np.int32)
    got = qdq.run({"x": x, "acc": acc})
    scales = np.array([0.5, 0.25, 2.0], np.float32).reshape(1, 3, 1)
    q = np.clip(np.rint(x / scales) + np.array([1, -3, 0]).reshape(1, 3, 1), -128, 127)
    np.testing.assert_array_equal(got["q"], q.astype(np.int8))
    t = np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1)
    np.testing.assert_array_equal(got["f"], acc.astype(np.float32) * t)

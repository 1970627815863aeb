"""The native engine's bf16 path (csrc/nk_bf16.c, lower_bf16.py, packing_bf16.py).

The kernels must match an fp64 reference computed on the same bf16-rounded operands (only the
float32 summation differs: ~1e-6 relative); compiled programs must match the host engine's
emulation of the bf16 policy (the oracle) closely, through fusion, epilogues, weight updates
and the fp32 fallback. Kernels are driven through ctypes with many shapes (no C compile per
example); programs are compiled together, one compiler run for the module. AMX code is only
compiled here unless the machine has AMX (its execution test skips otherwise).
"""

from __future__ import annotations

import ctypes
import dataclasses
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import ModelProto, TensorProto, helper

import nerve
from nerve.compiler.targets import cpu
from nerve.engines import native
from nerve.engines.native import cache
from nerve.engines.native.executable import NativePart, SequenceExecutable
from nerve.engines.native.lower_bf16 import Bf16ConvStep, Bf16MatMulStep
from nerve.engines.native.packing_bf16 import (
    KALIGN,
    NR,
    pack_bf16_conv,
    pack_bf16_conv_cvec,
    pack_bf16_matmul,
)
from nerve.engines.native.toolchain import CSRC, find_toolchain
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16
from nerve.models import MODELS
from nerve.runtime.compile import build_executables
from tests.unit.quant.helpers import onnx_model

DETECTED = cpu.detect_features()
# The kernels run everywhere (a scalar loop stands in on CPUs without bf16 dot products), so
# the tests ask for avx512_bf16 on every machine; AMX only where the CPU has it.
BF16_TARGET = cpu.target(features=(*DETECTED, *(() if "avx512_bf16" in DETECTED else
                                                 ("avx512_bf16",))))
P = ctypes.c_void_p
I64 = ctypes.c_int64


def bits(x: np.ndarray) -> np.ndarray:
    return float32_to_bfloat16(np.asarray(x, np.float32))


def bf16(x: np.ndarray) -> np.ndarray:
    return bfloat16_to_float32(bits(x))


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    tc = find_toolchain()
    assert tc is not None
    handle = cache.kernel_library(tc).handle
    handle.nk_matmul_bf16_avx512.argtypes = [ctypes.c_int, I64, I64, I64, P, P, P, P, P]
    handle.nk_matmul_bf16_amx.argtypes = [ctypes.c_int, I64, I64, I64, P, P, P, P, P]
    handle.nk_conv2d_bf16_avx512.argtypes = [ctypes.c_int, P, P, P, P, P, P, P]
    handle.nk_conv2d_bf16_cvec.argtypes = [ctypes.c_int, P, P, P, P, P, P, P]
    handle.nk_bf16_round.argtypes = [ctypes.c_int, I64, P, P]
    handle.nk_bf16_limit.argtypes = [ctypes.c_int]
    return handle


def support(lib: ctypes.CDLL) -> int:
    return int(lib.nk_bf16_support())


# ---- packing ----------------------------------------------------------------------------------


def test_matmul_packing_interleaves_k_pairs_per_column_and_pads() -> None:
    w = np.arange(1, 5 * 35 + 1, dtype=np.uint16).reshape(5, 35)  # K=5, N=35: two tiles
    packed = pack_bf16_matmul(w, trans=False).reshape(2, KALIGN // 2, NR, 2)
    for k in range(KALIGN):
        for n in range(2 * NR):
            want = w[k, n] if k < 5 and n < 35 else 0
            assert packed[n // NR, k // 2, n % NR, k % 2] == want
    np.testing.assert_array_equal(pack_bf16_matmul(w.T.copy(), trans=True), packed.reshape(-1))
    assert packed.ctypes.data % 64 == 0
    again = pack_bf16_matmul(w + 1, trans=False, out=packed.reshape(-1))  # in place (updates)
    assert again.ctypes.data == packed.ctypes.data and again.reshape(packed.shape)[1, 2, 2, 1] == 0


def test_conv_packing_pairs_channels_per_tap() -> None:
    w = np.arange(1, 10 * 3 * 2 * 2 + 1, dtype=np.uint16).reshape(10, 3, 2, 2)
    packed = pack_bf16_conv(w, groups=2).reshape(2, 1, 2 * 2 * 2, 8, 2)  # Og=5, C/G=3 -> 2 pairs
    for g in range(2):
        for o in range(8):
            for c in range(4):
                for ky in range(2):
                    for kx in range(2):
                        want = w[g * 5 + o, c, ky, kx] if o < 5 and c < 3 else 0
                        pair = (c // 2) * 4 + ky * 2 + kx
                        assert packed[g, 0, pair, o, c % 2] == want


# ---- kernels through ctypes -------------------------------------------------------------------


def _matmul(lib: ctypes.CDLL, fn: str, a: np.ndarray, w: np.ndarray, nt: int,
            trans: bool = False) -> np.ndarray:
    m, k = a.shape
    n = w.shape[1]
    wb = bits(w)
    packed = pack_bf16_matmul(wb.T.copy() if trans else wb, trans)
    y = np.full((m, n), np.nan, np.float32)
    getattr(lib, fn)(nt, m, n, k, a.ctypes.data, packed.ctypes.data, y.ctypes.data, None, None)
    return y


def _assert_close_to_fp64(y: np.ndarray, a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> None:
    """fp32 sums of exact bf16 products: error ~1e-6 of the size of the summed terms."""
    scale = float((np.abs(a) @ np.abs(b)).max(initial=0.0)) + 1e-30
    assert np.abs(y - ref).max(initial=0.0) / scale < 2e-6


@settings(max_examples=30, deadline=None, derandomize=True)
@given(m=st.sampled_from([1, 2, 3, 4, 11, 12, 13, 37]),
       k=st.integers(1, 300).filter(lambda v: v % 32), n=st.integers(1, 90).filter(lambda v: v % 16),
       nt=st.sampled_from([1, 2]), trans=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_kernel_matches_fp64_on_rounded_operands(
    lib: ctypes.CDLL, m: int, k: int, n: int, nt: int, trans: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    y = _matmul(lib, "nk_matmul_bf16_avx512", a, w, nt, trans)
    ref = bf16(a).astype(np.float64) @ bf16(w).astype(np.float64)
    _assert_close_to_fp64(y, bf16(a), bf16(w), ref)


def test_matmul_kernel_large_k_blocks_and_threads(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((70, 1100)).astype(np.float32)  # several K blocks, row tails
    w = rng.standard_normal((1100, 300)).astype(np.float32)  # several column chunks
    ref = bf16(a).astype(np.float64) @ bf16(w).astype(np.float64)
    for nt in (1, 2):
        _assert_close_to_fp64(_matmul(lib, "nk_matmul_bf16_avx512", a, w, nt), bf16(a),
                              bf16(w), ref)


def test_amx_entry_point_gives_the_same_product_whatever_the_machine_runs(
    lib: ctypes.CDLL,
) -> None:
    """nk_matmul_bf16_amx runs tiles where AMX is permitted, else the avx512_bf16 kernel."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((45, 70)).astype(np.float32)
    w = rng.standard_normal((70, 50)).astype(np.float32)
    ref = bf16(a).astype(np.float64) @ bf16(w).astype(np.float64)
    _assert_close_to_fp64(_matmul(lib, "nk_matmul_bf16_amx", a, w, 2), bf16(a), bf16(w), ref)


@pytest.mark.skipif(not {"amx_bf16", "amx_tile"} <= set(DETECTED), reason="no AMX on this CPU")
@settings(max_examples=15, deadline=None, derandomize=True)
@given(m=st.sampled_from([4, 16, 31, 33, 64, 100]), k=st.integers(1, 200),
       n=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_amx_kernel_matches_fp64_on_rounded_operands(
    lib: ctypes.CDLL, m: int, k: int, n: int, seed: int
) -> None:
    assert support(lib) & 4, "the CPU has AMX but the tile permission was refused"
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    ref = bf16(a).astype(np.float64) @ bf16(w).astype(np.float64)
    _assert_close_to_fp64(_matmul(lib, "nk_matmul_bf16_amx", a, w, 2), bf16(a), bf16(w), ref)


def test_amx_source_compiles_to_tile_instructions() -> None:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("AMX and AVX512-BF16 are x86-64 instructions")
    tc = find_toolchain()
    assert tc is not None
    cmd = [tc.cc, *tc.cflags(kernels=True), "-S", "-o", "-", str(CSRC / "nk_bf16.c")]
    asm = subprocess.run([c for c in cmd if c != "-shared"], capture_output=True, text=True,
                         check=True).stdout
    for insn in ("ldtilecfg", "tileloadd", "tdpbf16ps", "tilestored", "tilerelease",
                 "vdpbf16ps"):
        assert insn in asm, insn


class NkConv(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in ("N", "C", "H", "W", "O", "OH", "OW", "KH", "KW",
                                              "SH", "SW", "PT", "PL", "DH", "DW", "G")]


def _conv_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray, s: int, p: int, d: int,
              g: int) -> np.ndarray:
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    oh = (h + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (wd + 2 * p - d * (kw - 1) - 1) // s + 1
    y = np.zeros((n, o, oh, ow)) + bias.reshape(1, o, 1, 1)
    og = o // g
    for gi in range(g):
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, gi * cg:(gi + 1) * cg, ky * d:ky * d + (oh - 1) * s + 1:s,
                           kx * d:kx * d + (ow - 1) * s + 1:s]
                y[:, gi * og:(gi + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, w[gi * og:(gi + 1) * og, :, ky, kx])
    return y


@settings(max_examples=30, deadline=None, derandomize=True)
@given(n=st.integers(1, 2), cg=st.integers(1, 9), og=st.integers(1, 19), g=st.integers(1, 2),
       hw=st.integers(1, 12), k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 2),
       d=st.integers(1, 2), nt=st.sampled_from([1, 2]), cvec=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv_kernels_match_fp64_on_rounded_operands(
    lib: ctypes.CDLL, n: int, cg: int, og: int, g: int, hw: int, k: int, s: int, p: int,
    d: int, nt: int, cvec: bool, seed: int,
) -> None:
    oh = (hw + 2 * p - d * (k - 1) - 1) // s + 1
    if oh < 1:
        return
    if cvec:  # the channel-vector kernel: one group, output channels across 32-lane tiles
        g, og = 1, og * 3
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cg * g, hw, hw + 3)).astype(np.float32)
    w = rng.standard_normal((og * g, cg, k, k)).astype(np.float32)
    bias = rng.standard_normal(og * g).astype(np.float32)
    ref = _conv_ref(bf16(x), bf16(w), bias, s, p, d, g)
    ow = ref.shape[3]
    desc = NkConv(n, cg * g, hw, hw + 3, og * g, oh, ow, k, k, s, s, p, p, d, d, g)
    y = np.full(ref.shape, np.nan, np.float32)
    if cvec:
        packed = pack_bf16_conv_cvec(bits(w))
        fn = lib.nk_conv2d_bf16_cvec
    else:
        packed = pack_bf16_conv(bits(w), g)
        fn = lib.nk_conv2d_bf16_avx512
    fn(nt, ctypes.byref(desc), x.ctypes.data, packed.ctypes.data, bias.ctypes.data,
       y.ctypes.data, None, None)
    terms = _conv_ref(np.abs(bf16(x)), np.abs(bf16(w)), np.abs(bias), s, p, d, g)
    assert np.abs(y - ref).max() / terms.max() < 2e-6


@pytest.mark.parametrize("mask", [0, 1], ids=["scalar", "avx512f-only"])
def test_guard_paths_without_bf16_instructions_compute_the_same(
    lib: ctypes.CDLL, mask: int
) -> None:
    """What the entry points run on a CPU without VDPBF16PS (or AMX): a scalar loop."""
    rng = np.random.default_rng(10)
    a = rng.standard_normal((13, 45)).astype(np.float32)
    w = rng.standard_normal((45, 37)).astype(np.float32)
    x = rng.standard_normal((1, 5, 6, 7)).astype(np.float32)
    k = rng.standard_normal((9, 5, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    desc = NkConv(1, 5, 6, 7, 9, 6, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1)
    try:
        lib.nk_bf16_limit(mask)
        products = [_matmul(lib, fn, a[:m], w, 2) for fn in ("nk_matmul_bf16_avx512",
                                                            "nk_matmul_bf16_amx") for m in (2, 13)]
        convs = []
        for fn, packed in (("nk_conv2d_bf16_avx512", pack_bf16_conv(bits(k), 1)),
                           ("nk_conv2d_bf16_cvec", pack_bf16_conv_cvec(bits(k)))):
            y = np.full((1, 9, 6, 7), np.nan, np.float32)
            getattr(lib, fn)(1, ctypes.byref(desc), x.ctypes.data, packed.ctypes.data,
                             bias.ctypes.data, y.ctypes.data, None, None)
            convs.append(y)
    finally:
        lib.nk_bf16_limit(-1)
    for y, m in zip(products, (2, 13, 2, 13)):
        ref = bf16(a[:m]).astype(np.float64) @ bf16(w).astype(np.float64)
        _assert_close_to_fp64(y, bf16(a[:m]), bf16(w), ref)
    ref = _conv_ref(bf16(x), bf16(k), bias, 1, 1, 1, 1)
    terms = _conv_ref(np.abs(bf16(x)), np.abs(bf16(k)), np.abs(bias), 1, 1, 1, 1)
    for y in convs:
        assert np.abs(y - ref).max() / terms.max() < 2e-6


def test_round_kernel_matches_float32_to_bfloat16(lib: ctypes.CDLL) -> None:
    special = [0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.4e38, 1.00390625,
               1.01171875, 1.0078125 + 2**-23, 65504.0, -2.5e-20]
    rng = np.random.default_rng(3)
    x = np.concatenate([np.asarray(special, np.float32),
                        rng.standard_normal(70000).astype(np.float32) * 1e3])
    y = np.empty_like(x)
    lib.nk_bf16_round(2, x.size, x.ctypes.data, y.ctypes.data)
    np.testing.assert_array_equal(y.view(np.uint32) >> 16, bits(x).astype(np.uint32))
    assert not (y.view(np.uint32) & 0xFFFF).any()


# ---- compiled programs ------------------------------------------------------------------------


def _gemm_model(rng: np.random.Generator) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """Gemm(transB, alpha, beta, bias) -> Gelu -> + residual; MatMul on a 3-D input; a
    depthwise and a grouped conv with odd channels, bias, Relu."""
    w = {"W": rng.standard_normal((37, 70)).astype(np.float32),
         "C": rng.standard_normal(37).astype(np.float32),
         "R": rng.standard_normal((5, 37)).astype(np.float32),
         "M": rng.standard_normal((37, 19)).astype(np.float32),
         "K1": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3,
         "B1": rng.standard_normal(6).astype(np.float32),
         "K2": rng.standard_normal((6, 1, 3, 3)).astype(np.float32),
         "K3": rng.standard_normal((4, 3, 1, 2)).astype(np.float32),
         "K4": rng.standard_normal((40, 64, 3, 3)).astype(np.float32) * 0.1,
         "B4": rng.standard_normal(40).astype(np.float32)}
    nodes = [
        helper.make_node("Gemm", ["x", "W", "C"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Gelu", ["g"], ["ge"]),
        helper.make_node("Add", ["ge", "R"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["h3"]),
        helper.make_node("MatMul", ["h3", "M"], ["y"]),
        helper.make_node("Conv", ["img", "K1", "B1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "K2"], ["c2"], group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "K3"], ["z"], group=2, dilations=[1, 2]),
        # a small map with a deep product: output channels in the vector lanes
        helper.make_node("Conv", ["deep", "K4", "B4"], ["c4"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c4"], ["v"]),
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 5, 37])
    model = onnx_model(nodes, [("x", TensorProto.FLOAT, [5, 70]),
                               ("img", TensorProto.FLOAT, [2, 3, 9, 11]),
                               ("deep", TensorProto.FLOAT, [1, 64, 6, 7])],
                       [("y", TensorProto.FLOAT, [1, 5, 19]), ("z", TensorProto.FLOAT, [2, 4, 5, 9]),
                        ("v", TensorProto.FLOAT, [1, 40, 6, 7])],
                       w)
    model.graph.initializer.append(shape)
    feeds = {"x": rng.standard_normal((5, 70)).astype(np.float32),
             "img": rng.standard_normal((2, 3, 9, 11)).astype(np.float32),
             "deep": rng.standard_normal((1, 64, 6, 7)).astype(np.float32)}
    return model, feeds


def _matmul_model(w: np.ndarray, m: int) -> ModelProto:
    k, n = w.shape
    return onnx_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                      [("x", TensorProto.FLOAT, [m, k])], [("y", TensorProto.FLOAT, [m, n])],
                      {"W": w})


def _trans_a_model(w: np.ndarray) -> ModelProto:
    return onnx_model([helper.make_node("Gemm", ["x", "W"], ["y"], transA=1)],
                      [("x", TensorProto.FLOAT, [6, 3])], [("y", TensorProto.FLOAT, [3, 4])],
                      {"W": w})


AMX_TARGET = cpu.target(features=(*BF16_TARGET.features, "amx_tile", "amx_bf16"))
W_AMX = np.random.default_rng(6).standard_normal((40, 24)).astype(np.float32)
W_TRANS_A = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)

Programs = dict[str, tuple[nerve.Program, nerve.Program | None, dict[str, np.ndarray]]]


@pytest.fixture(scope="module")
def programs() -> Programs:
    """name -> (cpu program, host bf16 emulation or None, feeds): every program of this module,
    compiled in one batch (one C compiler run)."""
    rng = np.random.default_rng(0)
    models = {name: (MODELS[name].build(seed=0), MODELS[name].inputs(seed=0))
              for name in ("cnn", "transformer")}
    models["layers"] = _gemm_model(rng)
    built: Programs = {}
    with native.batch():
        for name, (model, feeds) in models.items():
            built[name] = (
                nerve.compile(model, target=BF16_TARGET, precision="bf16", threads=2),
                nerve.compile(model, target="host", precision="bf16"),
                feeds,
            )
        layers, feeds = models["layers"]
        auto = nerve.compile(layers, target=BF16_TARGET, precision="auto", cache=False)
        built["auto"] = (auto, None, feeds)
        for name in ("updated", "fresh"):
            program = nerve.compile(layers, target=BF16_TARGET, precision="bf16", cache=False)
            built[name] = (program, None, feeds)
        # The layers on a CPU without bf16 dot products (the target's features say so).
        plan = nerve.compile(layers, target=BF16_TARGET, precision="bf16", cache=False).plan
        plan.target = dataclasses.replace(plan.target, features=("avx2", "avx512f"))
        built["fallback"] = (nerve.Program(plan, build_executables(plan)), None, feeds)
        amx = nerve.compile(_matmul_model(W_AMX, 20), target=AMX_TARGET, precision="bf16",
                            cache=False)
        built["amx"] = (amx, None, {})
        trans_a = nerve.compile(_trans_a_model(W_TRANS_A), target=BF16_TARGET, precision="bf16",
                                cache=False)
        built["trans_a"] = (trans_a, None, {})
    return built


def _steps(program: nerve.Program) -> list[object]:
    parts: list[object] = []
    for exe in program._executables:
        parts.extend(exe.parts if isinstance(exe, SequenceExecutable) else [exe])
    return [s for p in parts if isinstance(p, NativePart) for s in p.code.steps]


@pytest.mark.parametrize("name", ["cnn", "transformer", "layers"])
def test_programs_match_the_host_emulation(programs: Programs, name: str) -> None:
    cpu_program, host, feeds = programs[name]
    assert host is not None
    assert any(isinstance(s, (Bf16MatMulStep, Bf16ConvStep)) for s in _steps(cpu_program))
    got, want = cpu_program.run(feeds), host.run(feeds)
    for key in want:
        # Same bf16 operands, float32 products: only the order of the sums differs.
        scale = np.abs(want[key]).max()
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=key)


def test_report_names_the_kernel_and_the_fallbacks(programs: Programs) -> None:
    program = programs["layers"][0]
    note = next(n for n in program.report.notes if n.startswith("precision kernels:"))
    runs = "avx512_bf16 (vdpbf16ps)" if "avx512_bf16" in DETECTED else "a scalar loop"
    amx = {"amx_bf16", "amx_tile"} <= set(DETECTED)
    matmul = "amx_bf16 (tdpbf16ps tiles)" if amx else runs
    # Gemm + MatMul on the bf16 kernel, the grouped conv too; the depthwise conv falls back.
    assert f"2 MatMul on {matmul}" in note and f"3 Conv on {runs}" in note, note
    assert "1 fell back to float32" in note and "depthwise convolution" in note, note
    assert program.report.format().count("precision kernels:") == 1
    convs = [s for s in _steps(program) if isinstance(s, Bf16ConvStep)]
    assert sorted(s.cvec for s in convs) == [False, False, True]  # the 6x7 map, 576 deep


def test_auto_precision_picks_the_bf16_kernels_where_the_cpu_has_them(
    programs: Programs,
) -> None:
    auto, _, feeds = programs["auto"]
    assert any(isinstance(s, Bf16MatMulStep) for s in _steps(auto))
    got, want = auto.run(feeds), programs["layers"][0].run(feeds)
    for key in want:  # the same kernels: each output's sums run in the same order
        np.testing.assert_array_equal(got[key], want[key])


def test_weight_updates_repack_and_equal_a_fresh_compile(programs: Programs) -> None:
    program, _, feeds = programs["updated"]
    fresh = programs["fresh"][0]
    rng = np.random.default_rng(5)
    before = program.run(feeds)
    new = {k: (v * rng.uniform(0.5, 2.0)).astype(np.float32)
           for k, v in program.plan.graph.weights.items() if k in ("W", "M", "K1", "K3", "K4")}
    program.update_weights(new)
    fresh.update_weights(new)
    after, want = program.run(feeds), fresh.run(feeds)
    for key in want:
        np.testing.assert_array_equal(after[key], want[key])
        assert not np.array_equal(after[key], before[key])


def test_without_bf16_features_the_fp32_fallback_runs_the_same_products(
    programs: Programs,
) -> None:
    """A CPU without bf16 dot products: float32 GEMMs over bf16-rounded operands."""
    program, _, feeds = programs["fallback"]
    steps = _steps(program)
    assert not any(isinstance(s, (Bf16MatMulStep, Bf16ConvStep)) for s in steps)
    assert any(getattr(s, "kernel", "").startswith("bf16 MatMul as float32") for s in steps)
    note = next(n for n in program.report.notes if n.startswith("precision kernels:"))
    assert "6 fell back to float32" in note and "the CPU has no bf16 dot product" in note
    host = programs["layers"][1]
    assert host is not None
    got, want = program.run(feeds), host.run(feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5,
                                   atol=1e-5 * np.abs(want[key]).max(), err_msg=key)


def test_amx_features_select_the_amx_kernel_in_the_generated_code(programs: Programs) -> None:
    """The choice follows Target.features; the C entry point itself runs what the CPU has."""
    program = programs["amx"][0]
    (step,) = [s for s in _steps(program) if isinstance(s, Bf16MatMulStep)]
    assert step.variant == "amx_bf16"
    part = next(p for e in program._executables
                for p in (e.parts if isinstance(e, SequenceExecutable) else [e])
                if isinstance(p, NativePart))
    assert "nk_matmul_bf16_amx(" in part.code.code
    x = np.random.default_rng(8).standard_normal((20, 40)).astype(np.float32)
    ref = bf16(x).astype(np.float64) @ bf16(W_AMX).astype(np.float64)
    _assert_close_to_fp64(program.run({"x": x})["y"], bf16(x), bf16(W_AMX), ref)


def test_gemm_with_trans_a_keeps_the_cast_form_and_is_counted(programs: Programs) -> None:
    program = programs["trans_a"][0]
    assert "Cast" in [n.op_type for n in program.plan.graph.nodes]
    note = next(n for n in program.report.notes if n.startswith("precision kernels:"))
    assert "1 fell back" in note and "transA" in note
    x = np.random.default_rng(9).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_allclose(program.run({"x": x})["y"], bf16(x).T @ bf16(W_TRANS_A),
                               rtol=1e-6)


def test_kernel_library_exports_the_bf16_entry_points(lib: ctypes.CDLL) -> None:
    for symbol in ("nk_matmul_bf16_avx512", "nk_matmul_bf16_amx", "nk_bf16_amx_warm",
                   "nk_conv2d_bf16_avx512", "nk_conv2d_bf16_cvec", "nk_bf16_round",
                   "nk_bf16_support", "nk_bf16_limit"):
        assert hasattr(lib, symbol), symbol
    have = support(lib)
    assert bool(have & 2) == ("avx512_bf16" in DETECTED)
    lib.nk_bf16_amx_warm(2)  # a no-op without AMX; must never fault


def test_layout_constants_match_the_c_header() -> None:
    header = Path(CSRC / "nk.h").read_text()
    assert f"#define NK_BF16_NR {NR}\n" in header
    assert f"#define NK_BF16_KALIGN {KALIGN}\n" in header

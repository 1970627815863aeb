"""The native engine's machinery: toolchain, cache, errors, threads, run-time checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nerve
from nerve.engines import native
from nerve.engines.native import NativeEngine, cache, segment_plan, thread_count
from nerve.engines.native.executable import NativePart
from nerve.engines.native.toolchain import arch_candidates, find_toolchain
from nerve.errors import CompileError, KernelError
from nerve.runtime.compile import load_graph

from .models import make, node, rand


def _relu_softmax(rows: int = 3):  # type: ignore[no-untyped-def]
    feeds = {"x": rand(np.random.default_rng(rows), rows, 5)}
    return make([node("Relu", ["x"], "r"), node("Softmax", ["r"])], feeds, ["y"]), feeds


def _native_build(model):  # type: ignore[no-untyped-def]
    graph = load_graph(model)
    segment, plan = segment_plan(graph)
    exe = NativeEngine().build(segment, plan)
    assert isinstance(exe, NativePart)
    return graph, exe


def test_toolchain_flags_follow_cpu_features() -> None:
    v4 = frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})
    assert "-march=x86-64-v4" in arch_candidates(v4)[0] or arch_candidates(v4) == [[]]
    assert all("avx512" not in " ".join(c) for c in arch_candidates(frozenset({"sse2"})))
    tc = find_toolchain()
    assert tc is not None
    assert tc.identity and "-fPIC" in tc.cflags()


def test_second_build_hits_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    model, feeds = _relu_softmax(4)
    _, first = _native_build(model)

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compiler ran although the segment is cached")

    monkeypatch.setattr(cache, "run_compiler", no_compiler)
    _, second = _native_build(model)
    assert second.library == first.library
    env = {**feeds}
    second.run(env)
    assert env["y"].shape == (4, 5)


def test_corrupt_library_is_rebuilt_not_loaded() -> None:
    model, feeds = _relu_softmax(6)
    _, exe = _native_build(model)
    assert exe.library is not None
    library = exe.library
    # A new file (not rewritten in place: this process has the old one mapped).
    corrupt = library.with_suffix(".corrupt")
    corrupt.write_bytes(b"garbage" + library.read_bytes()[7:])
    corrupt.replace(library)
    cache._verified.clear()
    _, again = _native_build(model)
    assert again.library is not None
    meta = json.loads((again.library.parent / "meta.json").read_text())
    assert cache._sha256(again.library) == meta["sha256"]
    env = {**feeds}
    again.run(env)
    np.testing.assert_allclose(env["y"].sum(axis=-1), 1.0, rtol=1e-6)


def test_compile_errors_name_the_kept_source() -> None:
    tc = find_toolchain()
    assert tc is not None
    kernels = cache.kernel_library(tc)
    bad = cache.Unit("f" * 64, "nerve_seg_broken", "int64_t nerve_seg_broken(void) { oops }\n")
    with pytest.raises(CompileError, match=r"segments\.c") as info:
        cache.build_units(tc, kernels, [bad])
    kept = str(info.value).split("generated file ", 1)[1].split(" ", 1)[0]
    with open(kept) as source:
        assert "oops" in source.read()


def test_gather_index_out_of_range_names_the_node() -> None:
    feeds = {"x": rand(np.random.default_rng(0), 4, 3), "i": np.array([1, 4], np.int64)}
    model = make([node("Gather", ["x", "i"], "y", name="lookup")], feeds, ["y"])
    program = nerve.compile(model, target="cpu")
    ok = program.run({"x": feeds["x"], "i": np.array([3, -4], np.int64)})["y"]
    np.testing.assert_array_equal(ok, feeds["x"][[3, 0]])
    with pytest.raises(KernelError, match=r"'lookup'.*out of range"):
        program.run(feeds)


def test_threads_option_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _relu_softmax(2)
    graph = load_graph(model)
    _, plan = segment_plan(graph, threads=3)
    assert thread_count(plan) == 3
    monkeypatch.setenv("NERVE_THREADS", "1")
    assert thread_count(segment_plan(graph)[1]) == 1
    monkeypatch.setenv("NERVE_THREADS", "0")
    assert thread_count(segment_plan(graph)[1]) >= 1


def test_one_and_two_threads_agree() -> None:
    rng = np.random.default_rng(3)
    feeds = {"x": rand(rng, 1, 16, 20, 20)}
    weights = {"w": rand(rng, 32, 16, 3, 3, scale=0.2), "m": rand(rng, 400, 300)}
    shape = {"s": np.array([1, 32 * 400], np.int64)}
    nodes = [
        node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]),
        node("Relu", ["c"], "r"),
        node("Reshape", ["r", "s"], "flat"),
        node("Reshape", ["flat", "s2"], "rows"),
        node("MatMul", ["rows", "m"], "y"),
    ]
    weights["s2"] = np.array([32, 400], np.int64)
    model = make(nodes, feeds, ["y"], {**weights, **shape})
    with native.batch():
        one = nerve.compile(model, target="cpu", threads=1)
        two = nerve.compile(model, target="cpu", threads=2)
    np.testing.assert_allclose(one.run(feeds)["y"], two.run(feeds)["y"], rtol=1e-5, atol=1e-4)


def test_weights_can_be_rebound_between_runs() -> None:
    rng = np.random.default_rng(5)
    feeds = {"x": rand(rng, 2, 4)}
    w = rand(rng, 4, 3)
    model = make([node("MatMul", ["x", "w"])], feeds, ["y"], {"w": w})
    graph, exe = _native_build(model)
    name = next(iter(graph.weights))
    env = {**graph.weights, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], feeds["x"] @ w, rtol=1e-6)
    new = w * -2
    env = {name: new, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], feeds["x"] @ new, rtol=1e-6)


def test_reference_gemm_without_openblas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the OpenBLAS wheel the kernels use their own GEMM (slow but correct)."""
    import dataclasses

    tc = find_toolchain()
    assert tc is not None
    plain = dataclasses.replace(tc, blas=None)
    monkeypatch.setattr(native, "find_toolchain", lambda: plain)
    rng = np.random.default_rng(11)
    feeds = {"a": rand(rng, 3, 7, 5), "v": rand(rng, 1, 5)}
    weights = {"w": rand(rng, 5, 6), "cw": rand(rng, 4, 3, 3, 3)}
    x = {"x": rand(rng, 1, 3, 6, 6)}
    nodes = [
        node("MatMul", ["a", "w"], "y1"),
        node("MatMul", ["v", "w"], "y2"),
        node("Conv", ["x", "cw"], "y3", pads=[1, 1, 1, 1]),
    ]
    model = make(nodes, {**feeds, **x}, ["y1", "y2", "y3"], weights)
    graph = load_graph(model)
    segment, plan = segment_plan(graph)
    exe = NativeEngine().build(segment, plan)
    assert isinstance(exe, NativePart)
    assert cache.kernel_library(plain).handle.nk_has_blas() == 0
    env = {**graph.weights, **feeds, **x}
    exe.run(env)
    want = nerve.compile(model, target="host").run({**feeds, **x})
    for key in ("y1", "y2", "y3"):
        np.testing.assert_allclose(env[key], want[key], rtol=1e-5, atol=1e-5)


def test_packed_conv_weights_are_repacked_when_rebound() -> None:
    """A conv reads its weights packed into panels; a new weight array is packed again."""
    rng = np.random.default_rng(6)
    feeds = {"x": rand(rng, 1, 3, 7, 9)}
    w = rand(rng, 11, 3, 3, 3)
    model = make([node("Conv", ["x", "w"], pads=[1, 1, 1, 1])], feeds, ["y"], {"w": w})
    graph, exe = _native_build(model)
    assert exe.code.packed, "the conv did not take the packed-weight path"
    name = next(iter(graph.weights))
    host = nerve.compile(model, target="host")
    env = {**graph.weights, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], host.run(feeds)["y"], rtol=1e-5, atol=1e-5)
    new = w * -2
    env = {name: new, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], -2 * host.run(feeds)["y"], rtol=1e-5, atol=1e-4)


def test_pack_conv_layout() -> None:
    from nerve.engines.native.packing import MR, conv_packed_size, pack_conv

    w = np.arange(2 * 10 * 2 * 1 * 1, dtype=np.float32).reshape(20, 2, 1, 1)
    packed = pack_conv(w, groups=2)  # 10 rows per group: panels of 8 + 2 (padded)
    assert packed.size == conv_packed_size(w.shape, 2) == 2 * 2 * MR * 2
    panels = packed.reshape(2, 2, 2, MR)  # [group][panel][k][row]
    np.testing.assert_array_equal(panels[1, 0, :, 3], w[10 + 3].reshape(-1))
    np.testing.assert_array_equal(panels[0, 1, :, :2].T, w[8:10].reshape(2, 2))
    assert not panels[0, 1, :, 2:].any()


def test_pack_conv_cvec_layout_and_in_place_repack() -> None:
    from nerve.engines.native.packing import CV_NB, conv_cvec_packed_size, pack_conv_cvec

    rng = np.random.default_rng(3)
    w = rng.standard_normal((70, 3, 3, 3)).astype(np.float32)  # a full block of 64 + 6
    packed = pack_conv_cvec(w)
    assert packed.size == conv_cvec_packed_size(w.shape) == 2 * 27 * CV_NB
    assert packed.ctypes.data % 64 == 0
    blocks = packed.reshape(2, 27, CV_NB)  # [block][k][channel]
    np.testing.assert_array_equal(blocks[0, :, 5], w[5].reshape(-1))
    np.testing.assert_array_equal(blocks[1, :, 3], w[64 + 3].reshape(-1))
    assert not blocks[1, :, 6:].any()
    new = rng.standard_normal(w.shape).astype(np.float32)
    again = pack_conv_cvec(new, out=packed)
    assert again is packed
    np.testing.assert_array_equal(again, pack_conv_cvec(new))


@pytest.mark.parametrize(
    ("x", "w", "pads", "kernel"),
    [
        ((1, 64, 7, 7), (64, 64, 3, 3), 1, "nk_conv2d_cvec"),  # 3x3 on a 7x7 map, K = 576
        ((1, 512, 7, 7), (64, 512, 1, 1), 0, "nk_conv2d_cvec"),  # a deep 1x1 on 7x7
        ((1, 64, 7, 7), (80, 64, 3, 3), 1, "nk_conv2d_cvec"),  # 64 + a half-width block of 16
        ((1, 64, 7, 7), (100, 64, 3, 3), 1, "nk_conv2d_packed"),  # 28 of 128 lanes idle
        ((1, 8, 7, 7), (16, 8, 3, 3), 1, "nk_conv2d_packed"),  # K = 72: the store dominates
        ((1, 64, 28, 28), (64, 64, 3, 3), 1, "nk_conv2d_packed"),  # a large map
    ],
)
def test_conv_kernel_choice(x: tuple[int, ...], w: tuple[int, ...], pads: int, kernel: str) -> None:
    rng = np.random.default_rng(4)
    feeds = {"x": rand(rng, *x)}
    model = make([node("Conv", ["x", "w"], pads=[pads] * 4)], feeds, ["y"], {"w": rand(rng, *w)})
    graph, exe = _native_build(model)
    assert f"{kernel}(" in exe.code.code
    env = {**graph.weights, **feeds}
    exe.run(env)
    want = nerve.compile(model, target="host").run(feeds)["y"]
    np.testing.assert_allclose(env["y"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("x", "w", "attrs"),
    [
        ((1, 3, 5, 5), (5, 3, 3, 3), {"pads": [1, 1, 1, 1]}),  # one partial block, K = 27
        ((1, 3, 5, 5), (120, 3, 3, 3), {"pads": [1, 1, 1, 1]}),  # a last block of 56 (full tile)
        ((2, 4, 9, 17), (67, 4, 2, 3), {"strides": [2, 1], "dilations": [1, 2]}),  # odd geometry
        ((1, 2, 1, 23), (65, 2, 1, 1), {}),  # one row, tiles of 7 + a 2-pixel tail
    ],
)
def test_channel_vector_kernel_on_odd_shapes(
    monkeypatch: pytest.MonkeyPatch, x: tuple[int, ...], w: tuple[int, ...], attrs: dict
) -> None:
    """The channel-vector kernel itself on shapes its cost rule would not give it."""
    from nerve.engines.native import lower_gemm

    monkeypatch.setattr(lower_gemm, "CVEC_MIN_DEPTH", 1)
    monkeypatch.setattr(lower_gemm, "CVEC_MAX_IDLE", 1.0)
    rng = np.random.default_rng(5)
    feeds = {"x": rand(rng, *x)}
    weights = {"w": rand(rng, *w), "b": rand(rng, w[0])}
    model = make([node("Conv", ["x", "w", "b"], **attrs)], feeds, ["y"], weights)
    graph, exe = _native_build(model)
    assert "nk_conv2d_cvec(" in exe.code.code
    env = {**graph.weights, **feeds}
    exe.run(env)
    want = nerve.compile(model, target="host").run(feeds)["y"]
    np.testing.assert_allclose(env["y"], want, rtol=1e-4, atol=1e-4)


# Convolutions whose epilogue is one Relu or Clip clamp in registers as they store (no pass
# over the output). Bounds: none, literal, scalar weights, and a NaN bound (Clip is then NaN
# everywhere, which only the epilogue computes). Inputs carry NaNs, which must survive.
_CONV_KINDS = {
    "pixel_vector": ((1, 6, 11, 13), (10, 6, 3, 3), 1),
    "channel_vector": ((1, 6, 7, 7), (70, 6, 3, 3), 1),
    "depthwise": ((1, 6, 11, 13), (6, 1, 3, 3), 6),
    "depthwise_s2": ((1, 6, 11, 13), (6, 1, 3, 3), 6),
}
_ACTIVATIONS = {
    "relu": ([], {}),
    "clip_0_6": (["lo", "hi"], {"lo": 0.0, "hi": 6.0}),
    "clip_max_only": (["", "hi"], {"hi": 0.5}),
    "clip_nan_bound": (["lo", "hi"], {"lo": float("nan"), "hi": 6.0}),
}


@pytest.mark.parametrize("activation", sorted(_ACTIVATIONS))
@pytest.mark.parametrize("kind", sorted(_CONV_KINDS))
def test_conv_clamps_in_registers(
    monkeypatch: pytest.MonkeyPatch, kind: str, activation: str
) -> None:
    from nerve.engines.native import lower_gemm

    monkeypatch.setattr(lower_gemm, "CVEC_MIN_DEPTH", 1)
    monkeypatch.setattr(lower_gemm, "CVEC_MAX_IDLE", 1.0)
    xs, ws, group = _CONV_KINDS[kind]
    rng = np.random.default_rng(9)
    x = rand(rng, *xs)
    x[0, 0, 2, 3] = np.nan
    feeds = {"x": x}
    bounds, values = _ACTIVATIONS[activation]
    weights = {"w": rand(rng, *ws), "b": rand(rng, ws[0])}
    weights.update({k: np.array(v, np.float32) for k, v in values.items()})
    strides = [2, 2] if kind.endswith("_s2") else [1, 1]
    conv = node("Conv", ["x", "w", "b"], "c", pads=[1, 1, 1, 1], group=group, strides=strides)
    act = node("Relu", ["c"]) if activation == "relu" else node("Clip", ["c", *bounds])
    model = make([conv, act], feeds, ["y"], weights)
    graph, exe = _native_build(model)
    if activation == "clip_nan_bound":
        assert "if (cl.lo == cl.lo" in exe.code.code  # the kernel clamps unless a bound is NaN
    else:
        assert "const nk_clamp cl" in exe.code.code and ", &cl)" in exe.code.code
    env = {**graph.weights, **feeds}
    exe.run(env)
    want = nerve.compile(model, target="host").run(feeds)["y"]
    np.testing.assert_allclose(env["y"], want, rtol=1e-4, atol=1e-4)  # NaNs where host has them
    assert np.isnan(env["y"]).any()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("kind", "shape", "groups"),
    [("matmul", (70, 101), 1), ("matmul", (40, 96), 1), ("conv", (13, 6, 3, 3), 1),
     ("conv", (20, 3, 3, 3), 2), ("conv_cvec", (70, 5, 3, 3), 1)],
)
def test_c_packers_match_numpy(kind: str, shape: tuple[int, ...], groups: int, threads: int) -> None:
    """The C packers used for in-place re-packs write exactly numpy's layout (padding kept)."""
    from nerve.engines.native.packing import PackSpec, repack_natively

    tc = find_toolchain()
    assert tc is not None
    library = cache.kernel_library(tc).handle
    rng = np.random.default_rng(8)
    spec = PackSpec("w", kind, groups)
    old, new = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    packed = spec.pack(old)
    assert repack_natively(library, spec, new, packed, threads)
    np.testing.assert_array_equal(packed, spec.pack(new))
    # Transposed operands (Gemm transB) have no C packer: the caller falls back to numpy.
    assert not repack_natively(library, PackSpec("w", "matmul", trans=True), new, packed)


def test_portable_packed_kernel_without_avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built without AVX-512 flags, the packed layouts run through the portable loop."""
    import dataclasses

    from nerve.engines.native import lower_gemm

    monkeypatch.setattr(lower_gemm, "CVEC_MIN_DEPTH", 1)  # the channel-vector kernel too
    monkeypatch.setattr(lower_gemm, "CVEC_MAX_IDLE", 1.0)
    tc = find_toolchain()
    assert tc is not None
    plain = dataclasses.replace(tc, arch_flags=())
    monkeypatch.setattr(native, "find_toolchain", lambda: plain)
    rng = np.random.default_rng(12)
    x = {"x": rand(rng, 2, 6, 9, 7)}
    weights = {"w": rand(rng, 10, 3, 3, 3), "b": rand(rng, 10), "w2": rand(rng, 70, 10, 3, 3)}
    # A grouped conv (pixel-vector panels), then a 3x3 on the 9x7 map (channel-vector blocks).
    nodes = [
        node("Conv", ["x", "w", "b"], "c", pads=[1, 0, 1, 2], group=2),
        node("Relu", ["c"], "r"),
        node("Conv", ["r", "w2"], "y", pads=[1, 1, 1, 1]),
    ]
    model = make(nodes, x, ["y"], weights)
    graph = load_graph(model)
    segment, plan = segment_plan(graph)
    exe = NativeEngine().build(segment, plan)
    assert isinstance(exe, NativePart)
    assert cache.kernel_library(plain).handle.nk_packed_isa() == 0
    assert "nk_conv2d_cvec(" in exe.code.code and "nk_conv2d_packed(" in exe.code.code
    env = {**graph.weights, **x}
    exe.run(env)
    want = nerve.compile(model, target="host").run(x)
    np.testing.assert_allclose(env["y"], want["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("shape", "groups"), [((13, 3, 3, 3), 1), ((64, 8, 3, 3), 8), ((24, 5, 1, 1), 2)])
def test_pack_conv_in_place_equals_a_fresh_pack(shape: tuple[int, ...], groups: int) -> None:
    from nerve.engines.native.packing import pack_conv

    rng = np.random.default_rng(1)
    old, new = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    previous = pack_conv(old, groups)
    repacked = pack_conv(new, groups, out=previous)
    # Same buffer (the C side keeps its address), same bytes as packing from scratch,
    # padding rows of a partial panel still zero.
    assert repacked is previous
    np.testing.assert_array_equal(repacked, pack_conv(new, groups))


def test_packed_matmul_weights_are_repacked_when_rebound() -> None:
    """A product with a constant B (few rows) reads B packed into column tiles; a new weight
    array is packed again, and an in-place update goes through weights_changed."""
    rng = np.random.default_rng(7)
    feeds = {"x": rand(rng, 20, 70)}
    w = rand(rng, 70, 53)
    model = make([node("MatMul", ["x", "w"])], feeds, ["y"], {"w": w})
    graph, exe = _native_build(model)
    assert any(s.kind == "matmul" for s in exe.code.packed.values())
    name = next(iter(graph.weights))
    env = {**graph.weights, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], feeds["x"] @ w, rtol=1e-5, atol=1e-4)
    new = w * -2
    env = {name: new, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], feeds["x"] @ new, rtol=1e-5, atol=1e-4)
    new[:] = w  # in place: the part re-derives its packed tiles when told
    exe.weights_changed([name])
    env = {name: new, **feeds}
    exe.run(env)
    np.testing.assert_allclose(env["y"], feeds["x"] @ w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "trans"), [((70, 53), False), ((53, 70), True), ((5, 48), False)]
)
def test_pack_matmul_layout_and_in_place(shape: tuple[int, int], trans: bool) -> None:
    from nerve.engines.native.packing import NR, matmul_packed_size, pack_matmul

    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape).astype(np.float32)
    b = w.T if trans else w
    k, n = b.shape
    packed = pack_matmul(w, trans)
    assert packed.size == matmul_packed_size(k, n)
    assert packed.ctypes.data % 64 == 0
    tiles = packed.reshape(-1, k, NR)
    np.testing.assert_array_equal(tiles[0, :, : min(n, NR)], b[:, :NR])
    last = (tiles.shape[0] - 1) * NR
    np.testing.assert_array_equal(tiles[-1, :, : n - last], b[:, last:])
    assert not tiles[-1, :, n - last :].any()
    new = rng.standard_normal(shape).astype(np.float32)
    again = pack_matmul(new, trans, out=packed)
    assert again is packed
    np.testing.assert_array_equal(again, pack_matmul(new, trans))


@pytest.mark.parametrize("rows", [1, 2, 20])
def test_portable_packed_matmul_without_avx512(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Built without AVX-512 flags, packed products (gemv rows and panels) run portably."""
    import dataclasses

    tc = find_toolchain()
    assert tc is not None
    plain = dataclasses.replace(tc, arch_flags=())
    monkeypatch.setattr(native, "find_toolchain", lambda: plain)
    rng = np.random.default_rng(13)
    x = {"x": rand(rng, rows, 75)}
    w = rand(rng, 75, 61)
    model = make([node("MatMul", ["x", "w"], "m"), node("Relu", ["m"])], x, ["y"], {"w": w})
    graph, exe = _native_build(model)
    assert any(s.kind == "matmul" for s in exe.code.packed.values())
    env = {**graph.weights, **x}
    exe.run(env)
    np.testing.assert_allclose(env["y"], np.maximum(x["x"] @ w, 0), rtol=1e-5, atol=1e-4)

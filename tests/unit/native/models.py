"""Tiny ONNX models for the native engine tests, with their feeds.

Each :class:`Case` is one small model exercising one kernel path (a GEMM split, a convolution
variant, a copy pattern...). The tests compile every case for the ``cpu`` target inside one
``nerve.engines.native.batch()`` (one C compiler run for all of them) and compare the results
with the host engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 23  # RMSNormalization needs 23

_ELEM = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    options: dict[str, object] = field(default_factory=dict)
    rtol: float = 1e-5
    atol: float = 1e-5
    # Whether the planner gives the native engine any node (when the target keeps a mixed
    # fused node on host, nothing runs natively).
    native_when_fused: bool = True


def make(
    nodes: list[onnx.NodeProto],
    feeds: dict[str, np.ndarray],
    outputs: list[str],
    weights: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """A model over ``nodes``: ``feeds`` are its inputs, ``weights`` its initializers."""
    inputs = [helper.make_tensor_value_info(n, _ELEM[v.dtype], v.shape) for n, v in feeds.items()]
    inits = [numpy_helper.from_array(v, n) for n, v in (weights or {}).items()]
    graph = helper.make_graph(
        nodes, "case", inputs, [onnx.ValueInfoProto(name=o) for o in outputs], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return onnx.shape_inference.infer_shapes(model)


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def node(op: str, ins: list[str], outs: list[str] | str = "y", **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, ins, [outs] if isinstance(outs, str) else outs, **attrs)


Builder = Callable[[np.random.Generator], Case]
BUILDERS: list[Builder] = []


def case(fn: Builder) -> Builder:
    BUILDERS.append(fn)
    return fn


def const(
    name: str, values: list[int] | list[float], dtype: type = np.int64
) -> dict[str, np.ndarray]:
    return {name: np.asarray(values, dtype)}


# ---- GEMM --------------------------------------------------------------------------------------


@case
def matmul_2d(rng: np.random.Generator) -> Case:
    f = {"a": rand(rng, 5, 7), "b": rand(rng, 7, 3)}
    return Case("matmul_2d", make([node("MatMul", ["a", "b"])], f, ["y"]), f)


@case
def matmul_broadcast_batch(rng: np.random.Generator) -> Case:
    f = {"a": rand(rng, 2, 1, 4, 5), "b": rand(rng, 3, 5, 6)}
    return Case("matmul_broadcast_batch", make([node("MatMul", ["a", "b"])], f, ["y"]), f)


@case
def matmul_vectors(rng: np.random.Generator) -> Case:
    f = {"v": rand(rng, 5), "m": rand(rng, 2, 5, 3), "n": rand(rng, 2, 4, 5)}
    nodes = [node("MatMul", ["v", "m"], "y1"), node("MatMul", ["n", "v"], "y2")]
    return Case("matmul_vectors", make(nodes, f, ["y1", "y2"]), f)


@case
def matmul_bias_relu_folded(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 3, 8)}
    w = {"w": rand(rng, 8, 16), "b": rand(rng, 16)}
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), node("Relu", ["a"])]
    return Case("matmul_bias_relu_folded", make(nodes, f, ["y"], w), f)


@case
def gemv_split(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 1, 256)}
    w = {"w": rand(rng, 256, 520), "b": rand(rng, 520)}
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), node("Tanh", ["a"])]
    return Case("gemv_split", make(nodes, f, ["y"], w), f, {"threads": 2})


@case
def matmul_threads(rng: np.random.Generator) -> Case:
    f = {"a": rand(rng, 64, 128), "b": rand(rng, 128, 96), "c": rand(rng, 3, 40, 64)}
    nodes = [node("MatMul", ["a", "b"], "y1"), node("MatMul", ["c", "a"], "y2")]
    return Case("matmul_threads", make(nodes, f, ["y1", "y2"]), f, {"threads": 2}, rtol=1e-4)


@case
def gemm_variants(rng: np.random.Generator) -> Case:
    f = {"a": rand(rng, 6, 4), "at": rand(rng, 4, 6)}
    w = {"b": rand(rng, 4, 5), "bt": rand(rng, 5, 4), "c1": rand(rng, 5), "c2": rand(rng, 6, 1)}
    nodes = [
        node("Gemm", ["a", "b", "c1"], "y1"),
        node("Gemm", ["at", "bt", "c2"], "y2", transA=1, transB=1, alpha=0.5, beta=2.0),
        node("Gemm", ["a", "bt"], "y3", transB=1, alpha=-1.5),
    ]
    return Case("gemm_variants", make(nodes, f, ["y1", "y2", "y3"], w), f)


# ---- convolution -----------------------------------------------------------------------------


def _conv_case(name: str, rng: np.random.Generator, x: tuple[int, ...], w: tuple[int, ...],
               extra: list[onnx.NodeProto] | None = None, bias: bool = True,
               options: dict[str, object] | None = None,
               extra_weights: dict[str, np.ndarray] | None = None,
               **attrs: object) -> Case:  # fmt: skip
    f = {"x": rand(rng, *x)}
    weights = {"w": rand(rng, *w, scale=0.3), **(extra_weights or {})}
    ins = ["x", "w"]
    if bias:
        weights["b"] = rand(rng, w[0])
        ins.append("b")
    out = "c" if extra else "y"
    nodes = [node("Conv", ins, out, **attrs), *(extra or [])]
    return Case(name, make(nodes, f, ["y"], weights), f, options or {}, rtol=1e-4, atol=1e-4)


@case
def conv_3x3_relu(rng: np.random.Generator) -> Case:
    return _conv_case("conv_3x3_relu", rng, (1, 4, 9, 9), (6, 4, 3, 3),
                      [node("Relu", ["c"])], pads=[1, 1, 1, 1])  # fmt: skip


@case
def conv_strided_dilated(rng: np.random.Generator) -> Case:
    return _conv_case("conv_strided_dilated", rng, (2, 3, 11, 10), (5, 3, 3, 2),
                      strides=[2, 1], dilations=[2, 1], pads=[1, 0, 2, 1])  # fmt: skip


@case
def conv_pointwise(rng: np.random.Generator) -> Case:
    return _conv_case("conv_pointwise", rng, (1, 16, 7, 7), (8, 16, 1, 1), bias=False)


@case
def conv_grouped(rng: np.random.Generator) -> Case:
    return _conv_case("conv_grouped", rng, (1, 4, 6, 6), (6, 2, 3, 3), group=2, pads=[1, 1, 1, 1])


@case
def conv_depthwise_multiplier(rng: np.random.Generator) -> Case:
    return _conv_case("conv_depthwise_multiplier", rng, (2, 3, 8, 8), (6, 1, 3, 3), group=3,
                      strides=[2, 2], pads=[1, 1, 1, 1])  # fmt: skip


@case
def conv_depthwise_s1(rng: np.random.Generator) -> Case:
    return _conv_case("conv_depthwise_s1", rng, (1, 8, 10, 12), (8, 1, 3, 3), group=8,
                      pads=[1, 1, 1, 1], extra=[node("HardSwish", ["c"])],
                      bias=True, options={"threads": 2})  # fmt: skip


@case
def conv_depthwise_direct_asymmetric(rng: np.random.Generator) -> Case:
    # Stride-1 3x3 depthwise on rows of at most 32 reads the plane with masked loads (no padded
    # copy): asymmetric pads, two 16-lane strips (OW 20), a Clip fused into the store.
    return _conv_case("conv_depthwise_direct_asymmetric", rng, (1, 5, 9, 20), (5, 1, 3, 3),
                      [node("Clip", ["c", "lo", "hi"])], group=5, pads=[0, 2, 1, 0],
                      extra_weights={"lo": np.float32(-0.5), "hi": np.float32(0.5)})  # fmt: skip


@case
def conv_1d_same(rng: np.random.Generator) -> Case:
    return _conv_case("conv_1d_same", rng, (1, 3, 17), (4, 3, 4), auto_pad="SAME_UPPER",
                      strides=[2])  # fmt: skip


@case
def conv_same_lower(rng: np.random.Generator) -> Case:
    return _conv_case("conv_same_lower", rng, (1, 2, 7, 7), (3, 2, 2, 2), auto_pad="SAME_LOWER")


@case
def conv_threads_pixels(rng: np.random.Generator) -> Case:
    return _conv_case("conv_threads_pixels", rng, (1, 8, 32, 32), (16, 8, 3, 3),
                      pads=[1, 1, 1, 1], options={"threads": 2})  # fmt: skip


@case
def conv_threads_channels(rng: np.random.Generator) -> Case:
    return _conv_case("conv_threads_channels", rng, (1, 32, 4, 4), (64, 32, 3, 3),
                      pads=[1, 1, 1, 1], options={"threads": 2})  # fmt: skip


@case
def conv_bn_residual(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 1, 4, 6, 6)}
    w = {
        "w": rand(rng, 4, 4, 3, 3, scale=0.3),
        "s": rand(rng, 4), "bb": rand(rng, 4), "m": rand(rng, 4),
        "v": np.abs(rand(rng, 4)) + 0.5,
    }  # fmt: skip
    nodes = [
        node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", "s", "bb", "m", "v"], "n", epsilon=1e-3),
        node("Add", ["n", "x"], "r"),
        node("Relu", ["r"]),
    ]
    return Case("conv_bn_residual", make(nodes, f, ["y"], w), f, rtol=1e-4, atol=1e-4)


# The packed-panel kernel (nk_packed.c): 8-row weight panels, 48-pixel tiles, K blocks of
# up to 256. These cases hit the tails of each: rows (O % 8), pixels (P % 48 and P < 16),
# several K blocks with a fused epilogue, channel chunks over one input (few pixels, many
# channels, 2 threads), groups whose last panel is padded, and batches.


@case
def packed_tails_multi_kblock(rng: np.random.Generator) -> Case:
    # O = 13 (one full panel + 5 rows), P = 10 * 11 = 110 (2 full tiles + 14), K = 30 * 9 = 270.
    return _conv_case("packed_tails_multi_kblock", rng, (1, 30, 10, 11), (13, 30, 3, 3),
                      [node("Relu", ["c"])], pads=[1, 1, 1, 1])  # fmt: skip


@case
def packed_shared_input_threads(rng: np.random.Generator) -> Case:
    # P = 3 * 3 = 9 pixels, O = 70: channel chunks over one input (stride-2 phase planes).
    return _conv_case("packed_shared_input_threads", rng, (2, 40, 5, 5), (70, 40, 3, 3),
                      [node("Sigmoid", ["c"])], strides=[2, 2], pads=[1, 1, 1, 1],
                      options={"threads": 2})  # fmt: skip


@case
def packed_groups_padded_panels(rng: np.random.Generator) -> Case:
    # 3 groups of 5 output channels (each group's panel padded from 5 to 8 rows), dilation 2.
    return _conv_case("packed_groups_padded_panels", rng, (2, 6, 13, 9), (15, 2, 3, 3),
                      group=3, dilations=[2, 2], pads=[2, 1, 2, 1],
                      options={"threads": 2})  # fmt: skip


@case
def packed_stride3_asymmetric(rng: np.random.Generator) -> Case:
    # Stride 3, a 5x2 kernel, asymmetric padding, pixels far from a tile multiple.
    return _conv_case("packed_stride3_asymmetric", rng, (1, 5, 23, 31), (9, 5, 5, 2),
                      strides=[3, 3], pads=[2, 0, 1, 1], bias=False)  # fmt: skip


@case
def packed_pointwise_wide(rng: np.random.Generator) -> Case:
    # 1x1 over 60 x 50 pixels (63 tiles: several pixel chunks on 2 threads), K = 300.
    return _conv_case("packed_pointwise_wide", rng, (1, 300, 60, 50), (17, 300, 1, 1),
                      options={"threads": 2})  # fmt: skip


@case
def packed_single_column_tile(rng: np.random.Generator) -> Case:
    # P = 17 * 17 = 289 = 6 * 48 + 1: the last tile is one column (its own kernel), with 11
    # rows (a padded panel), bias, K = 263 (two K blocks, not a multiple of 4) and 2 threads.
    return _conv_case("packed_single_column_tile", rng, (2, 263, 17, 17), (11, 263, 1, 1),
                      [node("Relu", ["c"])], options={"threads": 2})  # fmt: skip


@case
def packed_single_column_staged(rng: np.random.Generator) -> Case:
    # 3x3 pad 1 on 7 x 67: padded pixel space (7 - 1) * 69 + 67 = 481 = 10 * 48 + 1, so the
    # one-column tile lands in the staged buffer (dropped columns) and is copied out.
    return _conv_case("packed_single_column_staged", rng, (1, 6, 7, 67), (9, 6, 3, 3),
                      pads=[1, 1, 1, 1])  # fmt: skip


# Small maps with a deep K (at least 512) run the channel-vector kernel (nk_conv2d_cvec):
# tiles of 7 pixels of a row x 64 output channels, partial sums over K blocks of 512, a
# transposed store. (tests/unit/native/test_engine.py runs it on odd shapes too.)
@case
def cvec_partial_block_two_kblocks(rng: np.random.Generator) -> Case:
    # 518 channels = eight blocks of 64 + 6 (zero-padded lanes), K = 64 * 9 = 576 (two K
    # blocks), 2 threads, bias and ReLU epilogue.
    return _conv_case("cvec_partial_block_two_kblocks", rng, (1, 64, 7, 7), (518, 64, 3, 3),
                      [node("Relu", ["c"])], pads=[1, 1, 1, 1],
                      options={"threads": 2})  # fmt: skip


@case
def cvec_strided_batch(rng: np.random.Generator) -> Case:
    # Stride 2 from phase planes onto a 7 x 7 map, a batch of 2, more units than blocks.
    return _conv_case("cvec_strided_batch", rng, (2, 64, 13, 14), (64, 64, 3, 3),
                      strides=[2, 2], pads=[1, 1, 1, 1], options={"threads": 2})  # fmt: skip


@case
def cvec_row_tails(rng: np.random.Generator) -> Case:
    # 30-pixel rows: four 7-pixel tiles and a 2-pixel tail per row; a 1x3 kernel, K = 540.
    return _conv_case("cvec_row_tails", rng, (1, 180, 2, 32), (64, 180, 1, 3), bias=False)


# The direct conv path reads B in place from phase planes (one per stride phase, padded); the
# cases below hit each layout: the input itself (stride 1, unpadded, incl. a valid 3x3),
# stride-2 phases of a 7x7 stem, 1x1 stride 2, dilation with stride, and staged tiles whose
# dropped columns cross tile and chunk boundaries with a fused epilogue on 2 threads.


@case
def direct_valid_3x3_in_place(rng: np.random.Generator) -> Case:
    return _conv_case("direct_valid_3x3_in_place", rng, (1, 7, 12, 53), (11, 7, 3, 3),
                      [node("Relu", ["c"])], options={"threads": 2})  # fmt: skip


@case
def direct_stem_7x7_s2(rng: np.random.Generator) -> Case:
    return _conv_case("direct_stem_7x7_s2", rng, (1, 3, 37, 41), (10, 3, 7, 7),
                      strides=[2, 2], pads=[3, 3, 3, 3], options={"threads": 2})  # fmt: skip


@case
def direct_pointwise_s2(rng: np.random.Generator) -> Case:
    return _conv_case("direct_pointwise_s2", rng, (2, 12, 15, 13), (9, 12, 1, 1),
                      strides=[2, 2], bias=False)  # fmt: skip


@case
def direct_dilated_strided_pad_end(rng: np.random.Generator) -> Case:
    return _conv_case("direct_dilated_strided_pad_end", rng, (1, 5, 19, 17), (6, 5, 3, 3),
                      strides=[2, 3], dilations=[2, 2], pads=[0, 2, 3, 1])  # fmt: skip


@case
def direct_staged_many_channels(rng: np.random.Generator) -> Case:
    # 28 x 28, 3x3 pad 1: padded rows of 30, tiles straddle rows; 300 channels in K blocks.
    return _conv_case("direct_staged_many_channels", rng, (1, 300, 28, 28), (21, 300, 3, 3),
                      [node("Sigmoid", ["c"])], pads=[1, 1, 1, 1],
                      options={"threads": 2})  # fmt: skip


@case
def depthwise_small_planes_epilogue_runs(rng: np.random.Generator) -> Case:
    # 2 images x 40 channels of 5x6 planes on 2 threads: one epilogue call covers a run of
    # planes, and runs must split at the image boundary.
    return _conv_case("depthwise_small_planes_epilogue_runs", rng, (2, 40, 5, 6), (40, 1, 3, 3),
                      [node("Sigmoid", ["c"])], group=40, pads=[1, 1, 1, 1],
                      options={"threads": 2})  # fmt: skip


# Products with a constant B on the packed-panel kernel (few rows, or K >= 2N): row tails
# (M % 8), column tails (N % 48), several K blocks, a bias + activation epilogue, Gemm's
# transB, and a batch folded into rows.


@case
def packed_matmul_tails_epilogue(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 21, 300)}
    w = {"w": rand(rng, 300, 100, scale=0.1), "b": rand(rng, 100)}
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), node("Relu", ["a"])]
    return Case("packed_matmul_tails_epilogue", make(nodes, f, ["y"], w), f, {"threads": 2},
                rtol=1e-4, atol=1e-4)  # fmt: skip


@case
def packed_gemm_trans_b(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 70, 130)}
    w = {"w": rand(rng, 50, 130, scale=0.1), "c": rand(rng, 50)}
    nodes = [node("Gemm", ["x", "w", "c"], transB=1, beta=0.5)]
    return Case("packed_gemm_trans_b", make(nodes, f, ["y"], w), f, {"threads": 2},
                rtol=1e-4, atol=1e-4)  # fmt: skip


@case
def packed_matmul_batch_folded(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 9, 40)}
    w = {"w": rand(rng, 40, 17)}
    return Case("packed_matmul_batch_folded", make([node("MatMul", ["x", "w"])], f, ["y"], w), f,
                rtol=1e-4, atol=1e-4)  # fmt: skip


@case
def packed_gemv_rows(rng: np.random.Generator) -> Case:
    # 1 and 3 rows stream the packed tiles (odd K, N = 2 tiles + 5), with bias and Relu fused.
    f = {"x": rand(rng, 1, 301), "x3": rand(rng, 3, 301)}
    w = {"w": rand(rng, 301, 101, scale=0.1), "b": rand(rng, 101)}
    nodes = [
        node("Gemm", ["x", "w", "b"], "g"), node("Relu", ["g"], "y"),
        node("MatMul", ["x3", "w"], "y3"),
    ]  # fmt: skip
    return Case("packed_gemv_rows", make(nodes, f, ["y", "y3"], w), f, {"threads": 2},
                rtol=1e-4, atol=1e-4)  # fmt: skip


@case
def depthwise_masked_rows_s2_asymmetric(rng: np.random.Generator) -> Case:
    # Rows wider than a vector (37, odd), stride 2 with asymmetric padding: the taps read the
    # unpadded plane through lane masks at both borders.
    return _conv_case("depthwise_masked_rows_s2_asymmetric", rng, (1, 6, 19, 37), (6, 1, 3, 3),
                      group=6, strides=[2, 2], pads=[1, 0, 0, 2])  # fmt: skip


@case
def depthwise_masked_rows_s1_wide_pads(rng: np.random.Generator) -> Case:
    return _conv_case("depthwise_masked_rows_s1_wide_pads", rng, (1, 4, 9, 33), (4, 1, 3, 3),
                      group=4, pads=[0, 2, 1, 1], options={"threads": 2})  # fmt: skip


# ---- pooling, normalisation, reductions -------------------------------------------------------


@case
def pools(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 3, 9, 8)}
    nodes = [
        node("MaxPool", ["x"], "p1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("MaxPool", ["x"], "p2", kernel_shape=[2, 3], ceil_mode=1, strides=[2, 2],
             dilations=[2, 1]),
        node("AveragePool", ["x"], "p3", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             count_include_pad=1),
        node("AveragePool", ["x"], "p4", kernel_shape=[3, 2], pads=[1, 0, 1, 1], strides=[2, 2],
             ceil_mode=1),
        node("GlobalAveragePool", ["x"], "p5"),
        node("GlobalMaxPool", ["x"], "p6"),
    ]  # fmt: skip
    outs = ["p1", "p2", "p3", "p4", "p5", "p6"]
    return Case("pools", make(nodes, f, outs), f)


@case
def pool_1d(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 1, 2, 13)}
    nodes = [node("MaxPool", ["x"], "p", kernel_shape=[3], strides=[2], auto_pad="SAME_UPPER")]
    return Case("pool_1d", make(nodes, f, ["p"]), f)


@case
def softmaxes(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 5, 7, scale=3.0)}
    nodes = [
        node("Softmax", ["x"], "s1"),
        node("Softmax", ["x"], "s2", axis=1),
        node("LogSoftmax", ["x"], "s3", axis=-1),
        node("LogSoftmax", ["x"], "s4", axis=0),
    ]
    return Case("softmaxes", make(nodes, f, ["s1", "s2", "s3", "s4"]), f)


@case
def norms(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 3, 16, scale=2.0)}
    w = {"g": rand(rng, 16), "b": rand(rng, 16), "g2": rand(rng, 3, 16)}
    nodes = [
        node("LayerNormalization", ["x", "g", "b"], "n1", epsilon=1e-4),
        node("LayerNormalization", ["x", "g2"], ["n2", "mean", "inv"], axis=1),
        node("RMSNormalization", ["x", "g"], "n3", epsilon=1e-6),
    ]
    return Case("norms", make(nodes, f, ["n1", "n2", "mean", "inv", "n3"], w), f, rtol=1e-4)


@case
def reductions(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 3, 4, 5)}
    c = {**const("a_last", [-1]), **const("a_mid", [1]), **const("a_tail", [1, 2])}
    nodes = [
        node("ReduceMean", ["x", "a_last"], "r1"),
        node("ReduceSum", ["x", "a_mid"], "r2", keepdims=0),
        node("ReduceMax", ["x"], "r3"),
        node("ReduceL2", ["x", "a_tail"], "r4"),
        node("ReduceLogSumExp", ["x", "a_mid"], "r5"),
        node("ReduceMin", ["x", "a_tail"], "r6", keepdims=0),
        node("ReduceSumSquare", ["x", "a_last"], "r7"),
    ]
    return Case("reductions", make(nodes, f, [f"r{i}" for i in range(1, 8)], c), f)


# ---- data movement --------------------------------------------------------------------------


@case
def transposes(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 40, 36, 3), "i": np.arange(24, dtype=np.int64).reshape(2, 3, 4)}
    nodes = [
        node("Transpose", ["x"], "t1", perm=[0, 3, 1, 2]),
        node("Transpose", ["x"], "t2", perm=[0, 2, 1, 3]),
        node("Transpose", ["i"], "t3"),
    ]
    return Case("transposes", make(nodes, f, ["t1", "t2", "t3"]), f, {"threads": 2})


@case
def slices(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 5, 6, 7)}
    c = {
        **const("s1", [1, -1]), **const("e1", [4, -100]), **const("ax1", [0, 2]),
        **const("st1", [2, -2]), **const("s2", [2]), **const("e2", [1000]),
    }  # fmt: skip
    nodes = [
        node("Slice", ["x", "s1", "e1", "ax1", "st1"], "y1"),
        node("Slice", ["x", "s2", "e2"], "y2"),
    ]
    return Case("slices", make(nodes, f, ["y1", "y2"], c), f)


@case
def concat_split_expand(rng: np.random.Generator) -> Case:
    f = {"a": rand(rng, 2, 3, 4), "b": rand(rng, 2, 1, 4), "c": rand(rng, 2, 5, 4)}
    c = {**const("sizes", [2, 7]), **const("shape", [3, 2, 6, 4])}
    nodes = [
        node("Concat", ["a", "b", "c"], "cat", axis=1),
        node("Split", ["cat", "sizes"], ["s1", "s2"], axis=1),
        node("Expand", ["b", "shape"], "e"),
    ]
    return Case("concat_split_expand", make(nodes, f, ["cat", "s1", "s2", "e"], c), f)


@case
def gathers(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 6, 5, 3), "i32": np.array([[1, -1], [0, 4]], np.int32)}
    c = {"i64": np.array([5, -6, 2], np.int64)}
    nodes = [
        node("Gather", ["x", "i64"], "g1"),
        node("Gather", ["x", "i32"], "g2", axis=1),
    ]
    return Case("gathers", make(nodes, f, ["g1", "g2"], c), f)


@case
def views(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 2, 3, 4)}
    c = {**const("shape", [6, 4]), **const("ax", [0])}
    nodes = [
        node("Reshape", ["x", "shape"], "r"),
        node("Flatten", ["x"], "fl", axis=2),
        node("Unsqueeze", ["r", "ax"], "u"),
        node("Relu", ["u"], "ru"),
        node("Squeeze", ["ru", "ax"], "sq"),
        node("Identity", ["sq"], "id"),
    ]
    return Case("views", make(nodes, f, ["r", "fl", "id"], c), f)


# ---- elementwise --------------------------------------------------------------------------


@case
def broadcast_chain(rng: np.random.Generator) -> Case:
    f = {
        "a": rand(rng, 2, 3, 4, 5),
        "b": rand(rng, 3, 1, 5),
        "c": rand(rng, 4, 1),
        "d": rand(rng, 1),
    }
    cond = {"k": np.asarray(rng.standard_normal((3, 4, 5)) > 0)}
    nodes = [
        node("Mul", ["a", "b"], "t1"),
        node("Sub", ["t1", "c"], "t2"),
        node("Div", ["t2", "d"], "t3"),
        node("Where", ["k", "t3", "a"], "t4"),
        node("Max", ["t4", "c", "b"], "t5"),
        node("Sigmoid", ["t5"]),
    ]
    return Case("broadcast_chain", make(nodes, f, ["y"], cond), f)


UNARY = [
    ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Exp", {}), ("Neg", {}), ("Abs", {}),
    ("Erf", {}), ("Floor", {}), ("Ceil", {}), ("Round", {}), ("Sign", {}), ("Sin", {}),
    ("Cos", {}), ("Softplus", {}), ("Softsign", {}), ("LeakyRelu", {"alpha": 0.2}),
    ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 1.5}), ("HardSigmoid", {}),
    ("HardSwish", {}), ("ThresholdedRelu", {"alpha": 0.5}), ("Mish", {}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Shrink", {"bias": 0.1, "lambd": 0.3}),
]  # fmt: skip


@case
def unary_ops(rng: np.random.Generator) -> Case:
    # A wide range, including tiny values where relative accuracy is hardest.
    x = np.concatenate(
        [np.linspace(-12, 12, 961), rng.standard_normal(300) * 1e-4, [0.0, -0.0]]
    ).astype(np.float32)
    f = {"x": x, "p": np.abs(x) + np.float32(0.01)}
    nodes = [node(op, ["x"], f"u{i}", **attrs) for i, (op, attrs) in enumerate(UNARY)]
    nodes += [node("Log", ["p"], "l"), node("Sqrt", ["p"], "s"), node("Reciprocal", ["p"], "r")]
    outs = [f"u{i}" for i in range(len(UNARY))] + ["l", "s", "r"]
    return Case("unary_ops", make(nodes, f, outs), f, {"fuse": False}, rtol=2e-6, atol=1e-6)


@case
def binary_ops(rng: np.random.Generator) -> Case:
    f = {"a": rand(rng, 3, 4), "b": rand(rng, 4), "lo": np.array(-0.5, np.float32),
         "hi": np.array(0.7, np.float32), "p": np.abs(rand(rng, 3, 4)) + 0.1}  # fmt: skip
    c = {"two": np.array(2.0, np.float32), "half": np.array(0.5, np.float32)}
    nodes = [
        node("Clip", ["a", "lo", "hi"], "c1"),
        node("Clip", ["a", "", "hi"], "c2"),
        node("PRelu", ["a", "b"], "pr"),
        node("Pow", ["a", "two"], "p2"),
        node("Pow", ["p", "half"], "p3"),
        node("Pow", ["p", "a"], "p4"),
        node("Min", ["a", "b", "lo"], "mn"),
        node("Sum", ["a", "b", "p"], "sm"),
        node("Mean", ["a", "b"], "me"),
    ]
    outs = ["c1", "c2", "pr", "p2", "p3", "p4", "mn", "sm", "me"]
    return Case("binary_ops", make(nodes, f, outs, c), f, rtol=1e-5)


# ---- mixed: partly unclaimed ------------------------------------------------------------------


@case
def with_host_fallback(rng: np.random.Generator) -> Case:
    f = {"x": rand(rng, 4, 6), "i": np.arange(24, dtype=np.int64).reshape(4, 6)}
    c = {"three": np.array(3, np.int64)}
    nodes = [
        node("Relu", ["x"], "r"),
        node("Mod", ["i", "three"], "m"),  # int Mod: not claimed, runs on host
        node("Cast", ["m"], "mf", to=TensorProto.FLOAT),
        node("Add", ["r", "mf"]),
    ]
    return Case("with_host_fallback", make(nodes, f, ["y"], c), f, native_when_fused=False)

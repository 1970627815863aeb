"""nn-family kernels and importers: convolution, pooling, normalization, Resize and friends.

Kernels are checked against naive loop references written here (slow but obviously right), and
the importers through ``nerve.compile`` on one-node models.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nerve
from nerve.engines.host.kernels import nn, nn_norm, nn_pool, nn_resize
from nerve.errors import UnsupportedAttributeError
from nerve.frontend.onnx.context import ImportContext
from nerve.frontend.onnx.registry import lookup
from nerve.ir import DType, Graph, Node, TensorType
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16

RNG = np.random.default_rng(1234)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def model_of(
    node: onnx.NodeProto,
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    opset: int = 22,
    initializers: dict[str, np.ndarray] | None = None,
    output_shapes: dict[str, tuple[int, ...]] | None = None,
) -> onnx.ModelProto:
    inits = initializers or {}
    declared = output_shapes or {}
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for n, v in inputs.items()
        ],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, declared.get(o)) for o in outputs],
        [onnx.numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # The model checker insists on output shapes: ONNX's inference fills in the undeclared.
    return model if output_shapes else onnx.shape_inference.infer_shapes(model)


def run_node(
    node: onnx.NodeProto,
    inputs: dict[str, np.ndarray],
    opset: int = 22,
    initializers: dict[str, np.ndarray] | None = None,
    output_shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[np.ndarray]:
    outputs = [o for o in node.output if o]
    model = model_of(node, inputs, outputs, opset, initializers, output_shapes)
    program = nerve.compile(model, shapes={n: v.shape for n, v in inputs.items()})
    got = program.run(inputs)
    return [got[o] for o in outputs]


# ---- naive references ----------------------------------------------------------------------


def naive_conv(
    x: np.ndarray,
    w: np.ndarray,
    group: int,
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: tuple[int, ...],
) -> np.ndarray:
    """Direct definition: one output pixel at a time, every tap checked against the bounds."""
    n, _, *size = x.shape
    m, cg, *kernel = w.shape
    rank = len(size)
    out = [
        (size[i] + pads[i] + pads[i + rank] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
        for i in range(rank)
    ]
    y = np.zeros((n, m, *out), dtype=np.float64)
    mg = m // group
    for b, oc in itertools.product(range(n), range(m)):
        g = oc // mg
        for pos in itertools.product(*(range(o) for o in out)):
            total = 0.0
            for ic in range(cg):
                for tap in itertools.product(*(range(k) for k in kernel)):
                    src = [
                        pos[i] * strides[i] - pads[i] + tap[i] * dilations[i] for i in range(rank)
                    ]
                    if all(0 <= s < size[i] for i, s in enumerate(src)):
                        x_at, w_at = (b, g * cg + ic, *src), (oc, ic, *tap)
                        total += x[x_at] * w[w_at]
            y_at = (b, oc, *pos)
            y[y_at] = total
    return y


def naive_conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    group: int,
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: tuple[int, ...],
    output_padding: tuple[int, ...],
) -> np.ndarray:
    """Scatter every input pixel times the kernel onto the output, then crop the pads."""
    n, c, *size = x.shape
    _, mg, *kernel = w.shape
    rank = len(size)
    cg = c // group
    full = [
        (size[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + output_padding[i]
        for i in range(rank)
    ]
    canvas = np.zeros((n, mg * group, *full))
    for b, ic in itertools.product(range(n), range(c)):
        g = ic // cg
        for pos in itertools.product(*(range(s) for s in size)):
            for oc, tap in itertools.product(range(mg), itertools.product(*map(range, kernel))):
                dst = [pos[i] * strides[i] + tap[i] * dilations[i] for i in range(rank)]
                y_at, x_at, w_at = (b, g * mg + oc, *dst), (b, ic, *pos), (ic, oc, *tap)
                canvas[y_at] += x[x_at] * w[w_at]
    crop = (
        slice(None),
        slice(None),
        *(slice(pads[i], full[i] - pads[i + rank]) for i in range(rank)),
    )
    return canvas[crop]


# ---- convolution ---------------------------------------------------------------------------


def test_conv_matches_naive_loop_with_groups_dilation_stride_and_asymmetric_pads() -> None:
    x, w, b = randn(2, 4, 7, 6), randn(6, 2, 3, 2), randn(6)
    attrs = {"group": 2, "strides": (2, 1), "dilations": (2, 1), "pads": (1, 0, 2, 1)}
    got = nn.conv(Node("Conv", ["x", "w", "b"], ["y"], attrs), x, w, b)
    want = naive_conv(x, w, 2, (2, 1), (2, 1), (1, 0, 2, 1)) + b.reshape(1, -1, 1, 1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "group", "strides", "dilations", "pads"),
    [
        ((1, 3, 9), (4, 3, 3), 1, (2,), (1,), (2, 0)),  # 1-D
        ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), 1, (1, 2, 1), (1, 1, 2), (0, 1, 1, 1, 0, 0)),  # 3-D
        ((2, 3, 6, 6), (6, 1, 3, 3), 3, (1, 1), (1, 1), (1, 1, 1, 1)),  # depthwise, multiplier 2
    ],
)
def test_conv_in_one_and_three_dimensions_and_depthwise(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    group: int,
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: tuple[int, ...],
) -> None:
    x, w = randn(*x_shape), randn(*w_shape)
    attrs = {"group": group, "strides": strides, "dilations": dilations, "pads": pads}
    got = nn.conv(Node("Conv", ["x", "w"], ["y"], attrs), x, w)
    want = naive_conv(x, w, group, strides, dilations, pads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_conv_same_lower_puts_the_odd_pad_first() -> None:
    x, w = randn(1, 1, 6), randn(1, 1, 4)
    node = Node("Conv", ["x", "w"], ["y"], {"auto_pad": "SAME_LOWER"})
    # total pad 3: SAME_LOWER pads 2 before and 1 after.
    np.testing.assert_allclose(
        nn.conv(node, x, w), naive_conv(x, w, 1, (1,), (1,), (2, 1)), rtol=1e-5, atol=1e-6
    )


def test_conv_float16_and_bfloat16_compute_in_float32_and_keep_their_dtype() -> None:
    x, w = randn(1, 2, 5, 5), randn(3, 2, 3, 3)
    node = Node("Conv", ["x", "w"], ["y"], {"pads": (1, 1, 1, 1)})
    want = naive_conv(x, w, 1, (1, 1), (1, 1), (1, 1, 1, 1))
    half = nn.conv(node, x.astype(np.float16), w.astype(np.float16))
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, want, rtol=2e-2, atol=2e-2)
    bits = nn.conv(node, float32_to_bfloat16(x), float32_to_bfloat16(w))
    assert bits.dtype == np.uint16
    np.testing.assert_allclose(bfloat16_to_float32(bits), want, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_matches_naive_scatter(group: int) -> None:
    x, w, b = randn(2, 4, 3, 4), randn(4, 3, 3, 2), randn(3 * group)
    attrs = {
        "group": group,
        "strides": (2, 3),
        "dilations": (1, 2),
        "pads": (1, 0, 0, 2),
        "output_padding": (1, 1),
    }
    got = nn.conv_transpose(Node("ConvTranspose", ["x", "w", "b"], ["y"], attrs), x, w, b)
    want = naive_conv_transpose(x, w, group, (2, 3), (1, 2), (1, 0, 0, 2), (1, 1))
    np.testing.assert_allclose(got, want + b.reshape(1, -1, 1, 1), rtol=1e-4, atol=1e-5)


def test_conv_transpose_output_shape_sets_the_pads() -> None:
    x, w = randn(1, 1, 3), randn(1, 1, 3)
    node = Node("ConvTranspose", ["x", "w"], ["y"], {"strides": (2,), "output_shape": (6,)})
    # full size 7, wanted 6: total padding 1, which NOTSET puts at the beginning.
    want = naive_conv_transpose(x, w, 1, (2,), (1,), (1, 0), (0,))
    np.testing.assert_allclose(nn.conv_transpose(node, x, w), want, rtol=1e-5, atol=1e-6)


def test_col2im_sums_overlapping_blocks_back() -> None:
    # Unfold an image with overlapping 2x2 blocks (stride 1, pad 1), fold it back: every pixel
    # comes back multiplied by the number of blocks that covered it.
    image = randn(1, 2, 3, 3)
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
    blocks = [padded[:, :, i : i + 2, j : j + 2] for i in range(4) for j in range(4)]
    cols = np.stack(blocks, axis=-1).reshape(1, 2 * 4, 16)
    node = Node("Col2Im", ["x", "s", "b"], ["y"], {"pads": (1, 1, 1, 1)})
    got = nn.col2im(node, cols, np.array([3, 3]), np.array([2, 2]))
    np.testing.assert_allclose(got, image * 4, rtol=1e-6)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_inverts_space_to_depth(mode: str) -> None:
    x = randn(2, 3, 4, 6)
    node = Node("X", ["x"], ["y"], {"blocksize": 2, "mode": mode})
    packed = nn.space_to_depth(node, x)
    assert packed.shape == (2, 12, 2, 3)
    np.testing.assert_array_equal(nn.depth_to_space(node, packed), x)


# ---- pooling -------------------------------------------------------------------------------


def test_max_pool_ceil_mode_keeps_the_partial_last_window() -> None:
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    node = Node(
        "MaxPool", ["x"], ["y"], {"kernel_shape": (3, 3), "strides": (2, 2), "ceil_mode": 1}
    )
    np.testing.assert_array_equal(nn_pool.max_pool(node, x), [[[[11, 12], [15, 16]]]])
    node.attrs["ceil_mode"] = 0
    np.testing.assert_array_equal(nn_pool.max_pool(node, x), [[[[11]]]])


@pytest.mark.parametrize(
    ("storage_order", "flat"), [(0, [[6, 8], [16, 18]]), (1, [[6, 16], [8, 18]])]
)
def test_max_pool_indices_in_row_and_column_major_order(
    storage_order: int, flat: list[list[int]]
) -> None:
    x = np.arange(1, 26, dtype=np.float32).reshape(1, 1, 5, 5)
    node = Node(
        "MaxPool",
        ["x"],
        ["y", "i"],
        {"kernel_shape": (2, 2), "strides": (2, 2), "storage_order": storage_order},
    )
    y, indices = nn_pool.max_pool(node, x)
    np.testing.assert_array_equal(y, [[[[7, 9], [17, 19]]]])
    np.testing.assert_array_equal(indices, [[flat]])
    assert indices.dtype == np.int64


def test_max_pool_indices_count_batch_and_channel_and_ignore_padding() -> None:
    x = -np.ones((2, 3, 3), np.float32)  # all equal: the first real tap of each window wins
    node = Node("MaxPool", ["x"], ["y", "i"], {"kernel_shape": (2,), "pads": (1, 0)})
    _, indices = nn_pool.max_pool(node, x)
    base = (np.arange(6) * 3).reshape(2, 3, 1)
    np.testing.assert_array_equal(indices, base + np.array([0, 0, 1]))


def test_average_pool_count_include_pad_counts_explicit_pads_not_the_ceil_overhang() -> None:
    x = np.ones((1, 1, 5), np.float32)
    attrs = {"kernel_shape": (3,), "strides": (2,), "pads": (1, 0), "ceil_mode": 1}
    node = Node("AveragePool", ["x"], ["y"], {**attrs, "count_include_pad": 1})
    # windows: [-1, 2) -> 2 real of 3 counted, [1, 4) -> 3 real, [3, 6) -> 2 real + 1 past
    # the end, which is not padding and does not count
    np.testing.assert_allclose(nn_pool.average_pool(node, x), [[[2 / 3, 1, 1]]], rtol=1e-6)
    node.attrs["count_include_pad"] = 0
    np.testing.assert_allclose(nn_pool.average_pool(node, x), [[[1, 1, 1]]], rtol=1e-6)


def test_lp_pool_and_global_pools() -> None:
    x = randn(2, 3, 4, 5)
    node = Node("LpPool", ["x"], ["y"], {"kernel_shape": (4, 5), "p": 3})
    want = (np.abs(x) ** 3).sum(axis=(2, 3), keepdims=True) ** (1 / 3)
    np.testing.assert_allclose(nn_pool.lp_pool(node, x), want, rtol=1e-5)
    np.testing.assert_allclose(
        nn_pool.global_lp_pool(Node("GlobalLpPool", [], [], {"p": 3}), x), want, rtol=1e-5
    )
    np.testing.assert_allclose(
        nn_pool.global_average_pool(node, x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-6
    )
    assert nn_pool.global_max_pool(node, x).shape == (2, 3, 1, 1)


def test_max_unpool_output_shape_pads_the_natural_image_at_the_end() -> None:
    node = helper.make_node(
        "MaxUnpool", ["x", "i", "shape"], ["y"], kernel_shape=[2, 2], strides=[2, 2]
    )
    x = np.array([[[[5, 6], [7, 8]]]], np.float32)
    idx = np.array([[[[5, 7], [13, 15]]]], np.int64)
    shape = np.array([1, 1, 5, 5], np.int64)
    (y,) = run_node(
        node, {"x": x, "i": idx}, initializers={"shape": shape}, output_shapes={"y": (1, 1, 5, 5)}
    )
    want = np.zeros((1, 1, 5, 5), np.float32)
    want[0, 0, 1, 1], want[0, 0, 1, 3], want[0, 0, 3, 1], want[0, 0, 3, 3] = 5, 6, 7, 8
    np.testing.assert_array_equal(y, want)


# ---- normalization ----------------------------------------------------------------------------


def test_batch_normalization_inference_and_training_mode() -> None:
    x, s, b = randn(4, 3, 2, 2), randn(3), randn(3)
    mean, var = randn(3), np.abs(randn(3)) + 0.5
    node = Node("BatchNormalization", [], ["y"], {"epsilon": 1e-3})
    want = (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + 1e-3)
    want = want * s.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(
        nn_norm.batch_normalization(node, x, s, b, mean, var), want, rtol=1e-5, atol=1e-6
    )
    node = Node("BatchNormalization", [], ["y", "m", "v"], {"training_mode": 1, "momentum": 0.8})
    _, running_mean, running_var = nn_norm.batch_normalization(node, x, s, b, mean, var)
    np.testing.assert_allclose(running_mean, 0.8 * mean + 0.2 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(running_var, 0.8 * var + 0.2 * x.var(axis=(0, 2, 3)), rtol=1e-5)


def test_batch_normalization_9_imports_as_inference_and_refuses_saved_statistics() -> None:
    inputs = ["x", "s", "b", "m", "v"]
    x, ones, zeros = randn(3, 2, 4), np.ones(2, np.float32), np.zeros(2, np.float32)
    feeds = {"x": x, "s": ones, "b": zeros, "m": zeros, "v": ones}
    (y,) = run_node(helper.make_node("BatchNormalization", inputs, ["y"]), feeds, opset=13)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)
    training = helper.make_node(
        "BatchNormalization", inputs, ["y", "rm", "rv", "sm", "sv"], momentum=0.5
    )
    shapes = {"y": (3, 2, 4), "rm": (2,), "rv": (2,), "sm": (2,), "sv": (2,)}
    with pytest.raises(UnsupportedAttributeError, match="saved_mean"):
        run_node(training, feeds, opset=13, output_shapes=shapes)


def test_layer_normalization_float16_keeps_float32_statistics() -> None:
    x = randn(2, 3, 4).astype(np.float16)
    scale, bias = np.full(4, 2, np.float16), np.ones(4, np.float16)
    node = Node("LayerNormalization", [], ["y", "m", "r"], {"axis": -1, "epsilon": 1e-5})
    y, mean, inv_std = nn_norm.layer_normalization(node, x, scale, bias)
    xf = x.astype(np.float32)
    assert y.dtype == np.float16 and mean.dtype == inv_std.dtype == np.float32
    assert mean.shape == (2, 3, 1)
    np.testing.assert_allclose(mean, xf.mean(axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
    want = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-5) * 2 + 1
    np.testing.assert_allclose(y, want, rtol=1e-2, atol=1e-2)


def test_group_normalization_18_scale_per_group_becomes_per_channel() -> None:
    # onnx's checker rejects GroupNormalization-18 models (deprecated), so drive the importer
    # directly, as the loader would for a model that gets past the checker.
    graph = Graph("g")
    graph.add_input("x", TensorType(DType.FLOAT32, (2, 4, 3)))
    scale, bias = np.array([1, 3], np.float32), np.array([0, -1], np.float32)
    graph.add_param("s", scale)
    graph.add_param("b", bias)
    node = helper.make_node(
        "GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-5
    )
    importer = lookup("GroupNormalization", "", 18)
    assert importer is not None
    importer.fn(ImportContext(graph, 18), node)
    assert [n.op_type for n in graph.nodes] == ["Gather", "Gather", "GroupNormalization"]
    gathered = {n.outputs[0]: n.inputs[0] for n in graph.nodes[:2]}
    group_node = graph.nodes[-1]
    x = randn(2, 4, 3)
    per_channel = [np.repeat(graph.weights[gathered[name]], 2) for name in group_node.inputs[1:]]
    y = nn_norm.group_normalization(group_node, x, *per_channel)
    groups = x.reshape(2, 2, 6)
    normalized = (groups - groups.mean(-1, keepdims=True)) / np.sqrt(
        groups.var(-1, keepdims=True) + 1e-5
    )
    want = normalized * scale.reshape(1, 2, 1) + bias.reshape(1, 2, 1)
    np.testing.assert_allclose(y, want.reshape(2, 4, 3), rtol=1e-4, atol=1e-5)


def test_lrn_matches_the_channel_window_definition() -> None:
    x = randn(1, 5, 2, 2)
    node = Node("LRN", [], [], {"size": 3, "alpha": 0.1, "beta": 0.5, "bias": 2.0})
    square_sum = np.stack(
        [(x[:, max(0, c - 1) : c + 2] ** 2).sum(axis=1) for c in range(5)], axis=1
    )
    want = x / (2.0 + 0.1 / 3 * square_sum) ** 0.5
    np.testing.assert_allclose(nn_norm.lrn(node, x), want, rtol=1e-5)


def test_lp_normalization_leaves_zero_vectors_zero() -> None:
    x = np.array([[3, 4], [0, 0]], np.float32)
    got = nn_norm.lp_normalization(Node("LpNormalization", [], [], {"axis": 1, "p": 2}), x)
    np.testing.assert_allclose(got, np.array([[0.6, 0.8], [0, 0]]), rtol=1e-6)


# ---- Resize ---------------------------------------------------------------------------------


def resize_node(**attrs: object) -> Node:
    return Node("Resize", ["x", "roi", "scales", "sizes"], ["y"], attrs)


def test_resize_linear_align_corners_hits_the_corners_exactly() -> None:
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    node = resize_node(mode="linear", coordinate_transformation_mode="align_corners")
    y = nn_resize.resize(node, x, None, None, np.array([1, 1, 3, 3], np.int64))
    np.testing.assert_allclose(y, [[[[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]]]], rtol=1e-6)


@pytest.mark.parametrize(
    ("nearest_mode", "want"),
    [
        ("round_prefer_floor", [0, 0, 1, 1, 2, 2]),
        ("round_prefer_ceil", [0, 1, 1, 2, 2, 2]),
        ("floor", [0, 0, 1, 1, 2, 2]),
        ("ceil", [0, 1, 1, 2, 2, 2]),
    ],
)
def test_resize_nearest_modes_with_asymmetric_coordinates(
    nearest_mode: str, want: list[int]
) -> None:
    x = np.arange(3, dtype=np.int64).reshape(1, 3)
    node = resize_node(coordinate_transformation_mode="asymmetric", nearest_mode=nearest_mode)
    y = nn_resize.resize(node, x, None, np.array([1, 2], np.float32), None)
    np.testing.assert_array_equal(y, [want])
    assert y.dtype == np.int64


def test_resize_antialias_averages_when_downsampling() -> None:
    x = np.tile(np.array([0, 4], np.float32), 16).reshape(1, 32)
    node = resize_node(mode="linear", coordinate_transformation_mode="asymmetric")
    scales = np.array([1, 0.25], np.float32)
    # Plain linear samples the even (zero) pixels; the stretched filter averages 0s and 4s.
    np.testing.assert_array_equal(nn_resize.resize(node, x, None, scales, None), np.zeros((1, 8)))
    node.attrs["antialias"] = 1
    y = nn_resize.resize(node, x, None, scales, None)
    np.testing.assert_allclose(y[0, 1:-1], 2, rtol=1e-6)  # away from the clamped edges


def test_resize_tf_crop_and_resize_extrapolates_outside_the_roi() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    node = resize_node(
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-1.0,
        axes=(1,),
    )
    roi = np.array([0.5, 1.5], np.float32)
    y = nn_resize.resize(node, x, roi, None, np.array([3], np.int64))
    np.testing.assert_allclose(y, [[1.5, 3, -1]], rtol=1e-6)


def test_resize_scales_from_a_weight_initializer_are_static() -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    x = randn(1, 1, 2, 3)
    scales = np.array([1, 1, 2, 2], np.float32)
    (y,) = run_node(node, {"x": x}, opset=19, initializers={"scales": scales})
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))


# ---- refusals -------------------------------------------------------------------------------


def refused(node: onnx.NodeProto, inputs: dict[str, np.ndarray], opset: int = 22) -> str:
    with pytest.raises(UnsupportedAttributeError) as err:
        run_node(node, inputs, opset)
    return str(err.value)


def test_window_larger_than_the_padded_input_is_refused() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[5])
    assert "window spans 5" in refused(node, {"x": randn(1, 1, 4)})


def test_conv_transpose_same_where_onnx_inference_and_spec_disagree_is_refused() -> None:
    node = helper.make_node(
        "ConvTranspose",
        ["x", "w"],
        ["y"],
        auto_pad="SAME_UPPER",
        strides=[2],
        output_padding=[1],
    )
    assert "auto_pad" in refused(node, {"x": randn(1, 1, 3), "w": randn(1, 1, 3)})


def test_resize_unknown_coordinate_mode_is_refused() -> None:
    node = helper.make_node(
        "Resize", ["x", "", "s"], ["y"], coordinate_transformation_mode="tf_half_pixel_for_nn"
    )
    with pytest.raises(UnsupportedAttributeError, match="coordinate_transformation_mode"):
        nerve.compile(
            model_of(node, {"x": randn(1, 2)}, ["y"], 19, {"s": np.ones(2, np.float32)}),
            shapes={"x": (1, 2)},
        )

"""Reduce and linalg families: importers (canonical forms, refusals) and host kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nerve
from nerve.engines.host.registry import get_kernel, wants_types
from nerve.errors import ModelFormatError, ShapeError, UnsupportedAttributeError
from nerve.frontend.onnx import load_onnx
from nerve.frontend.onnx.importers.linalg import normalize_einsum
from nerve.ir import DType, Node, TensorType
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16


def run_kernel(op: str, *inputs: np.ndarray | None, **attrs: Any) -> Any:
    fn = get_kernel(op)
    assert fn is not None, op
    return fn(Node(op, [f"in{i}" for i in range(len(inputs))], ["out"], attrs, "n"), *inputs)


def one_node_model(
    node: onnx.NodeProto,
    inputs: list[tuple[str, int, list[int | str]]],
    outputs: list[tuple[str, int, list[int | str]]],
    initializers: list[onnx.TensorProto] | None = None,
    opset: int = 28,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializers or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X3 = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10


# ---- reductions: kernels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("ReduceSum", lambda x, ax: x.sum(axis=ax, keepdims=True)),
        ("ReduceMean", lambda x, ax: x.mean(axis=ax, keepdims=True)),
        ("ReduceMax", lambda x, ax: x.max(axis=ax, keepdims=True)),
        ("ReduceMin", lambda x, ax: x.min(axis=ax, keepdims=True)),
        ("ReduceProd", lambda x, ax: x.prod(axis=ax, keepdims=True)),
        ("ReduceL1", lambda x, ax: np.abs(x).sum(axis=ax, keepdims=True)),
        ("ReduceL2", lambda x, ax: np.sqrt((x * x).sum(axis=ax, keepdims=True))),
        ("ReduceSumSquare", lambda x, ax: (x * x).sum(axis=ax, keepdims=True)),
        ("ReduceLogSumExp", lambda x, ax: np.log(np.exp(x).sum(axis=ax, keepdims=True))),
    ],
)
def test_reductions_over_given_axes_keep_float32(op: str, expected: Any) -> None:
    x = X3 / 10
    got = run_kernel(op, x, np.array([0, -1], np.int64), keepdims=1, noop_with_empty_axes=0)
    assert got.dtype == np.float32 and got.shape == (1, 3, 1)
    np.testing.assert_allclose(got, expected(x.astype(np.float64), (0, 2)), rtol=1e-5)


def test_keepdims_zero_drops_the_reduced_axes() -> None:
    got = run_kernel("ReduceSum", X3, np.array([1], np.int64), keepdims=0)
    np.testing.assert_array_equal(got, X3.sum(axis=1))


def test_absent_or_empty_axes_reduce_everything_unless_noop() -> None:
    for axes in (None, np.array([], np.int64)):
        got = run_kernel("ReduceMax", X3, axes, keepdims=1, noop_with_empty_axes=0)
        assert got.shape == (1, 1, 1) and got.item() == X3.max()


@pytest.mark.parametrize(
    ("op", "elementwise"),
    [
        ("ReduceSum", lambda x: x),
        ("ReduceMax", lambda x: x),
        ("ReduceL1", np.abs),
        ("ReduceL2", np.abs),
        ("ReduceSumSquare", np.square),
        ("ReduceLogSumExp", lambda x: x),
    ],
)
def test_noop_with_empty_axes_still_applies_the_elementwise_steps(
    op: str, elementwise: Any
) -> None:
    # ONNX: with noop_with_empty_axes the reduction is the identity, but composite reductions
    # still apply their elementwise steps (ReduceSumSquare squares, ReduceL1 takes abs).
    got = run_kernel(op, X3, np.array([], np.int64), keepdims=1, noop_with_empty_axes=1)
    np.testing.assert_allclose(got, elementwise(X3), rtol=1e-6)


@pytest.mark.parametrize(
    ("op", "dtype", "identity"),
    [
        ("ReduceSum", np.float32, 0.0),
        ("ReduceProd", np.float32, 1.0),
        ("ReduceMax", np.float32, -np.inf),
        ("ReduceMin", np.float32, np.inf),
        ("ReduceMax", np.int32, np.iinfo(np.int32).min),
        ("ReduceMin", np.uint8, 255),
        ("ReduceMax", np.bool_, False),
        ("ReduceMin", np.bool_, True),
        ("ReduceL1", np.float32, 0.0),
        ("ReduceL2", np.float32, 0.0),
        ("ReduceSumSquare", np.float32, 0.0),
        ("ReduceLogSum", np.float32, -np.inf),
        ("ReduceLogSumExp", np.float32, -np.inf),
    ],
)
def test_reduction_over_an_empty_set_gives_the_identity(
    op: str, dtype: type, identity: float
) -> None:
    x: np.ndarray = np.zeros((2, 0, 3), dtype)
    got = run_kernel(op, x, np.array([1], np.int64), keepdims=1)
    assert got.dtype == np.dtype(dtype) and got.shape == (2, 1, 3)
    np.testing.assert_array_equal(got, np.full((2, 1, 3), identity, dtype))


def test_integer_reductions_keep_their_dtype() -> None:
    x = np.array([[-7, 2], [3, 4]], np.int32)
    mean = run_kernel("ReduceMean", x, np.array([1], np.int64), keepdims=0)
    assert mean.dtype == np.int32
    np.testing.assert_array_equal(mean, [-2, 3])  # truncated toward zero, like C
    total = run_kernel("ReduceSum", x, None, keepdims=0)
    assert total.dtype == np.int32 and total.item() == 2


def test_log_sum_exp_does_not_overflow() -> None:
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf]], np.float32)
    got = run_kernel("ReduceLogSumExp", x, np.array([1], np.int64), keepdims=0)
    np.testing.assert_allclose(got, [1000 + np.log(2), -np.inf], rtol=1e-6)


def test_bfloat16_reductions_compute_on_the_values_not_the_bits() -> None:
    x = float32_to_bfloat16(np.array([[-1.5, 2.0], [4.0, -8.0]], np.float32))
    got = run_kernel("ReduceMax", x, np.array([1], np.int64), keepdims=0)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(bfloat16_to_float32(got), [2.0, 4.0])


def test_float16_sum_accumulates_wider_than_float16() -> None:
    x = np.full(4096, 1.0, np.float16)  # float16 stops counting at 2048
    assert run_kernel("ReduceSum", x, None, keepdims=0).item() == 4096


# ---- reductions: importers ------------------------------------------------------------------


def test_opset13_axes_attribute_becomes_a_constant_input() -> None:
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1], keepdims=0)
    model = one_node_model(node, [("x", TensorProto.FLOAT, [2, 3])], [("y", 1, [2])], opset=13)
    graph = load_onnx(model)
    (ir,) = graph.nodes
    assert ir.attrs == {"keepdims": 0, "noop_with_empty_axes": 0}
    np.testing.assert_array_equal(graph.constants[ir.inputs[1]], [-1])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(nerve.compile(model).run({"x": x})["y"], x.mean(axis=1))


def test_runtime_axes_are_refused_naming_the_attribute() -> None:
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum0")
    model = one_node_model(
        node,
        [("x", TensorProto.FLOAT, [2, 3]), ("axes", TensorProto.INT64, [1])],
        [("y", 1, ["a", "b"])],
    )
    with pytest.raises(UnsupportedAttributeError, match="'axes' of node 'sum0'"):
        load_onnx(model)


def test_out_of_range_and_repeated_axes_are_shape_errors() -> None:
    for axes in ([2], [0, -2]):
        node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="bad")
        model = one_node_model(
            node,
            [("x", TensorProto.FLOAT, [2, 3])],
            [("y", 1, ["a", "b"])],
            [numpy_helper.from_array(np.array(axes, np.int64), "axes")],
        )
        with pytest.raises(ShapeError, match="'bad'"):
            load_onnx(model)


def test_integer_log_sum_from_an_older_opset_is_refused() -> None:
    node = helper.make_node("ReduceLogSum", ["x"], ["y"], name="ls")
    model = one_node_model(node, [("x", TensorProto.INT32, [2, 3])], [("y", 6, [1, 1])], opset=18)
    with pytest.raises(UnsupportedAttributeError, match="Cast the input to float"):
        load_onnx(model)


# ---- ArgMax / ArgMin --------------------------------------------------------------------------


def test_argmax_first_or_last_index_of_ties_as_int64() -> None:
    x = np.array([[3, 1, 3], [0, 0, -1]], np.float32)
    first = run_kernel("ArgMax", x, axis=1, keepdims=1, select_last_index=0)
    last = run_kernel("ArgMax", x, axis=-1, keepdims=0, select_last_index=1)
    assert first.dtype == np.int64 and last.dtype == np.int64
    np.testing.assert_array_equal(first, [[0], [0]])
    np.testing.assert_array_equal(last, [2, 1])
    np.testing.assert_array_equal(
        run_kernel("ArgMin", x, axis=0, keepdims=0, select_last_index=1), [1, 1, 1]
    )


def test_argmax_over_an_empty_axis_is_refused_at_import() -> None:
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, name="am")
    model = one_node_model(node, [("x", TensorProto.FLOAT, [2, 0])], [("y", 7, [2, 1])])
    with pytest.raises(ShapeError, match="empty"):
        load_onnx(model)


# ---- Softmax family -------------------------------------------------------------------------


def test_softmax_and_log_softmax_are_stable_for_large_inputs() -> None:
    x = np.array([[1000.0, 1001.0, 1002.0]], np.float32)
    soft = run_kernel("Softmax", x, axis=-1)
    e = np.exp(np.array([-2.0, -1.0, 0.0]))
    np.testing.assert_allclose(soft, [e / e.sum()], rtol=1e-6)
    log = run_kernel("LogSoftmax", x, axis=1)
    np.testing.assert_allclose(log, np.log([e / e.sum()]), rtol=1e-6)
    assert soft.dtype == np.float32 and log.dtype == np.float32


def test_softmax_normalizes_along_one_axis_only() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float16)
    got = run_kernel("Softmax", x, axis=1)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32).sum(axis=1), np.ones((2, 4)), rtol=1e-3)


def test_hardmax_marks_the_first_maximum() -> None:
    x = np.array([[1, 5, 5], [2, 0, 1]], np.float32)
    np.testing.assert_array_equal(run_kernel("Hardmax", x, axis=-1), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(run_kernel("Hardmax", x, axis=0), [[0, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("axis", [None, 0, 2])
def test_hardmax_from_before_opset13_keeps_its_flattened_meaning(axis: int | None) -> None:
    # Opset < 13: Hardmax flattens to 2-D at axis (default 1): one 1 per trailing block.
    node = helper.make_node("Hardmax", ["x"], ["y"], name="hm")
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    model = one_node_model(node, [("x", 1, [2, 3, 4])], [("y", 1, [2, 3, 4])], opset=11)
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    split = 1 if axis is None else axis
    flat = x.reshape(int(np.prod(x.shape[:split])), -1)
    want = np.zeros_like(flat)
    want[np.arange(flat.shape[0]), flat.argmax(axis=1)] = 1
    got = nerve.compile(model).run({"x": x})["y"]
    np.testing.assert_array_equal(got, want.reshape(x.shape))


# ---- CumSum / CumProd -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exclusive", "reverse", "expected"),
    [(0, 0, [1, 3, 6, 10]), (1, 0, [0, 1, 3, 6]), (0, 1, [10, 9, 7, 4]), (1, 1, [9, 7, 4, 0])],
)
def test_cumsum_modes(exclusive: int, reverse: int, expected: list[int]) -> None:
    x = np.array([1, 2, 3, 4], np.int32)
    got = run_kernel("CumSum", x, np.array(0, np.int32), exclusive=exclusive, reverse=reverse)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_cumprod_exclusive_starts_at_one_along_a_negative_axis() -> None:
    x = np.array([[2.0, 3.0, 4.0]], np.float64)
    got = run_kernel("CumProd", x, np.array(-1, np.int64), exclusive=1, reverse=0)
    np.testing.assert_array_equal(got, [[1.0, 2.0, 6.0]])


# ---- TopK -----------------------------------------------------------------------------------


def test_topk_ties_put_the_lower_index_first() -> None:
    x = np.array([[1, 3, 3, 2, 3]], np.int64)
    values, indices = run_kernel("TopK", x, np.array([3]), axis=-1, largest=1, sorted=1)
    np.testing.assert_array_equal(values, [[3, 3, 3]])
    np.testing.assert_array_equal(indices, [[1, 2, 4]])
    assert indices.dtype == np.int64
    values, indices = run_kernel("TopK", x, np.array([2]), axis=1, largest=0, sorted=1)
    np.testing.assert_array_equal(values, [[1, 2]])
    np.testing.assert_array_equal(indices, [[0, 3]])


def test_topk_on_extreme_unsigned_values_and_a_leading_axis() -> None:
    big = np.iinfo(np.uint64).max
    x = np.array([[0, big], [big, 1], [5, 0]], np.uint64)
    values, indices = run_kernel("TopK", x, np.array([2]), axis=0, largest=1, sorted=1)
    np.testing.assert_array_equal(values, np.array([[big, big], [5, 1]], np.uint64))
    np.testing.assert_array_equal(indices, [[1, 0], [2, 1]])


def test_topk_k_must_be_a_constant_within_the_axis() -> None:
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="tk")
    dynamic = one_node_model(
        node,
        [("x", TensorProto.FLOAT, [2, 3]), ("k", TensorProto.INT64, [1])],
        [("v", 1, [2, "k"]), ("i", 7, [2, "k"])],
    )
    with pytest.raises(UnsupportedAttributeError, match="'K' of node 'tk'"):
        load_onnx(dynamic)
    too_big = one_node_model(
        node,
        [("x", TensorProto.FLOAT, [2, 3])],
        [("v", 1, [2, "k"]), ("i", 7, [2, "k"])],
        [numpy_helper.from_array(np.array([4], np.int64), "k")],
    )
    with pytest.raises(ShapeError, match="K=4"):
        load_onnx(too_big)


# ---- MatMul / Gemm / Det / MatMulInteger ----------------------------------------------------


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((3,), (3,)), ((4,), (2, 4, 5)), ((2, 3, 4), (4,)), ((3, 1, 2, 4), (1, 5, 4, 2))],
)
def test_matmul_broadcasts_and_promotes_vectors(a_shape: tuple, b_shape: tuple) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    got = run_kernel("MatMul", a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5)


def test_matmul_on_bfloat16_bits() -> None:
    a = float32_to_bfloat16(np.array([[1.0, 2.0]], np.float32))
    b = float32_to_bfloat16(np.array([[3.0], [-4.0]], np.float32))
    got = run_kernel("MatMul", a, b)
    assert got.dtype == np.uint16 and bfloat16_to_float32(got).item() == -5.0


def test_gemm_transposes_scales_and_broadcasts_the_bias() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal((1, 5)).astype(np.float32)
    got = run_kernel("Gemm", a, b, c, transA=1, transB=1, alpha=0.25, beta=0.35)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 0.25 * a.T @ b.T + 0.35 * c, rtol=1e-5)


def test_gemm_with_zero_beta_ignores_the_bias() -> None:
    a, b = np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32)
    c = np.full((2, 2), np.nan, np.float32)
    np.testing.assert_array_equal(run_kernel("Gemm", a, b, c, beta=0.0), b)
    np.testing.assert_array_equal(run_kernel("Gemm", a, b, None), b)


def test_gemm_bias_that_does_not_broadcast_is_refused() -> None:
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], name="g0")
    model = one_node_model(
        node,
        [("a", 1, [2, 3]), ("b", 1, [3, 4]), ("c", 1, [3, 4])],
        [("y", 1, [2, 4])],
    )
    with pytest.raises(ShapeError, match="'g0'"):
        load_onnx(model)


def test_matmul_integer_zero_points_per_row_and_per_column() -> None:
    a = np.array([[10, 11], [20, 22], [30, 33]], np.uint8)
    b = np.array([[1, 2], [3, 4]], np.int8)
    a_zero = np.array([10, 20, 30], np.uint8)  # one per row of A
    b_zero = np.array([1, 2], np.int8)  # one per column of B
    got = run_kernel("MatMulInteger", a, b, a_zero, b_zero)
    want = (a.astype(np.int32) - a_zero[:, None]) @ (b.astype(np.int32) - b_zero)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_det_of_a_batch() -> None:
    x = np.array([[[1, 2], [3, 4]], [[2, 0], [0, 3]]], np.float32)
    got = run_kernel("Det", x)
    assert got.dtype == np.float32 and got.shape == (2,)
    np.testing.assert_allclose(got, [-2.0, 6.0], rtol=1e-6)


# ---- Einsum ---------------------------------------------------------------------------------


def test_einsum_equation_is_stripped_of_whitespace_and_runs() -> None:
    eq = normalize_einsum(" ...ii -> ...i", [(3, 2, 2)])
    assert eq == "...ii->...i"
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    got = run_kernel("Einsum", x, equation=eq)
    np.testing.assert_array_equal(got, np.einsum("...ii->...i", x))


@pytest.mark.parametrize(
    ("equation", "shapes", "why"),
    [
        ("ij,jk->ik", [(2, 3)], "names 2 operands"),
        ("ij->i->j", [(2, 3)], "more than once"),
        ("i.j->i", [(2, 3)], "characters"),
        ("ijk->i", [(2, 3)], "rank 2 but 3 labels"),
        ("ij->k", [(2, 3)], "appear in no operand"),
        ("ij->ii", [(2, 3)], "repeats a label"),
        ("ij,jk->ik", [(2, 3), (4, 5)], "sizes 3 and 4"),
        ("...ij->ij", [(5, 2, 3)], "drops them"),
        ("......i->i", [(5, 2, 3)], "more than one"),
    ],
)
def test_malformed_einsum_equations_say_why(equation: str, shapes: list, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        normalize_einsum(equation, shapes)


def test_malformed_einsum_is_a_model_format_error_naming_the_node() -> None:
    node = helper.make_node("Einsum", ["x"], ["y"], equation="ij->k", name="es")
    model = one_node_model(node, [("x", 1, [2, 3])], [("y", 1, ["k"])])
    with pytest.raises(ModelFormatError, match="'es'"):
        load_onnx(model)


# ---- bfloat16 where uint16 is also a valid type (typed kernels) ------------------------------


def bf16_types(*shapes: tuple[int, ...]) -> list[TensorType | None]:
    return [TensorType(DType.BFLOAT16, s) for s in shapes]


def run_typed(op: str, *inputs: np.ndarray, types: list[TensorType | None], **attrs: Any) -> Any:
    fn = get_kernel(op)
    assert fn is not None and wants_types(op), op
    node = Node(op, [f"in{i}" for i in range(len(inputs))], ["out"], attrs, "n")
    return fn(node, *inputs, input_types=types)


def test_argmax_and_topk_order_bfloat16_by_value_not_by_bits() -> None:
    values = np.array([[-2.0, 1.0, -0.5, 3.0]], np.float32)
    bits = float32_to_bfloat16(values)  # as uint16, -2.0 would compare largest
    types = bf16_types(bits.shape)
    assert run_typed("ArgMax", bits, types=types, axis=1, keepdims=0).tolist() == [3]
    assert run_typed("ArgMin", bits, types=types, axis=1, keepdims=0).tolist() == [0]
    top, index = run_typed(
        "TopK", bits, np.array([2]), types=[*types, None], axis=-1, largest=1, sorted=1
    )
    assert top.dtype == np.uint16
    np.testing.assert_array_equal(bfloat16_to_float32(top), [[3.0, 1.0]])
    np.testing.assert_array_equal(index, [[3, 1]])
    # True uint16 data (no types, or uint16 types) orders by the integers themselves.
    assert run_kernel("ArgMax", bits, axis=1, keepdims=0).tolist() == [0]


def test_einsum_on_bfloat16_accumulates_in_float32_and_rounds_once() -> None:
    a = float32_to_bfloat16(np.full((1, 300), 1.0, np.float32))
    b = float32_to_bfloat16(np.full((300, 1), 1.0, np.float32))
    got = run_typed("Einsum", a, b, types=bf16_types(a.shape, b.shape), equation="ij,jk->ik")
    assert got.dtype == np.uint16
    assert bfloat16_to_float32(got).item() == 300.0  # bfloat16 sums would stall at 256

"""Elementwise family: host kernels and their ONNX importers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nerve
from nerve.engines.host.kernels import elementwise as ew
from nerve.engines.host.registry import get_kernel
from nerve.errors import ShapeError, UnsupportedAttributeError
from nerve.frontend.onnx import load_onnx
from nerve.ir import Node
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16


def one_op_model(
    op: str,
    inputs: dict[str, tuple[int, tuple[int, ...]]],
    out: tuple[int, tuple[int, ...]],
    opset: int = 28,
    **attrs: Any,
) -> onnx.ModelProto:
    node = helper.make_node(op, list(inputs), ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info("y", *out)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_kernel(op: str, *inputs: np.ndarray | None, **attrs: object) -> np.ndarray:
    fn = get_kernel(op)
    assert fn is not None, f"no host kernel for {op}"
    return np.asarray(fn(Node(op, [], ["y"], dict(attrs)), *inputs))


# ---- erf --------------------------------------------------------------------------------------


def test_erf_matches_math_erf_to_double_precision() -> None:
    x: np.ndarray = np.concatenate(
        [np.linspace(-7, 7, 4001), [1e-300, -1e-12, 2.4999999, 2.5, -2.5]]
    )
    want = np.array([math.erf(v) for v in x])
    got = ew.erf(x)
    np.testing.assert_allclose(got, want, rtol=4e-15, atol=1e-300)


def test_erf_special_values() -> None:
    got = ew.erf(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 40.0, -1e300]))
    np.testing.assert_array_equal(got[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(got[1])
    assert np.isnan(got[4])
    np.testing.assert_array_equal(got[5:], [1.0, -1.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_erf_kernel_keeps_the_input_dtype(dtype: type) -> None:
    x: np.ndarray = np.linspace(-3, 3, 25).astype(dtype)
    got = run_kernel("Erf", x)
    assert got.dtype == dtype
    want = np.array([math.erf(float(v)) for v in x])
    # One rounding to the dtype (float64: the series' few-ulp error) away from math.erf.
    rtol = max(float(np.finfo(dtype).eps), 4e-15)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol)


def test_gelu_exact_and_tanh_forms() -> None:
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0], np.float32)
    exact = run_kernel("Gelu", x, approximate="none")
    want = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(float)]
    np.testing.assert_allclose(exact, want, rtol=1e-6)
    approx = run_kernel("Gelu", x, approximate="tanh")
    assert approx.dtype == np.float32
    assert not np.array_equal(approx, exact)
    np.testing.assert_allclose(approx, exact, atol=2e-3)


# ---- integer division and modulo --------------------------------------------------------------


def test_integer_div_truncates_toward_zero() -> None:
    a = np.array([7, -7, 7, -7, 6, -6], np.int32)
    b = np.array([2, 2, -2, -2, 3, 3], np.int32)
    got = run_kernel("Div", a, b)
    np.testing.assert_array_equal(got, [3, -3, -3, 3, 2, -2])
    assert got.dtype == np.int32


def test_integer_div_is_exact_beyond_float64_precision() -> None:
    a = np.array([2**62 + 1, -(2**62) - 3], np.int64)
    b = np.array([1, 1], np.int64)
    np.testing.assert_array_equal(run_kernel("Div", a, b), a)


def test_mod_follows_the_divisor_sign_and_fmod_the_dividend_sign() -> None:
    a = np.array([-4, 7, 5, 4, -7, 8], np.int64)
    b = np.array([3, -3, 8, -3, 3, 5], np.int64)
    np.testing.assert_array_equal(run_kernel("Mod", a, b, fmod=0), [2, -2, 5, -2, 2, 3])
    np.testing.assert_array_equal(run_kernel("Mod", a, b, fmod=1), [-1, 1, 5, 1, -1, 3])


def test_float_mod_fmod0_signed_zero_takes_the_divisor_sign() -> None:
    got = run_kernel("Mod", np.array([0.0, -0.0], np.float32), np.array([-2.0, 2.0], np.float32))
    np.testing.assert_array_equal(np.signbit(got), [True, False])


def test_integer_pow_with_negative_exponents_truncates() -> None:
    x = np.array([2, 1, -1, -1, 3], np.int64)
    y = np.array([-1, -5, -3, -2, 2], np.int64)
    np.testing.assert_array_equal(run_kernel("Pow", x, y), [0, 1, -1, 1, 9])


# ---- broadcasting -----------------------------------------------------------------------------


def test_prelu_slope_broadcasts_onto_x() -> None:
    x = np.array([[[-1.0, 2.0], [-3.0, 4.0]]], np.float32)  # (1, 2, 2)
    slope = np.array([[0.5], [0.25]], np.float32)  # (2, 1): one slope per row
    got = nerve.compile(
        one_op_model(
            "PRelu",
            {"x": (TensorProto.FLOAT, (1, 2, 2)), "s": (TensorProto.FLOAT, (2, 1))},
            (TensorProto.FLOAT, (1, 2, 2)),
        )
    ).run({"x": x, "s": slope})["y"]
    np.testing.assert_array_equal(got, [[[-0.5, 2.0], [-0.75, 4.0]]])


def test_prelu_slope_that_would_grow_x_is_refused() -> None:
    model = one_op_model(
        "PRelu",
        {"x": (TensorProto.FLOAT, (3,)), "s": (TensorProto.FLOAT, (2, 3))},
        (TensorProto.FLOAT, (2, 3)),
    )
    with pytest.raises(ShapeError, match="slope"):
        load_onnx(model)


def test_variadic_max_and_mean_broadcast() -> None:
    a = np.array([[1.0], [5.0]], np.float32)
    b = np.array([2.0, 3.0, 4.0], np.float32)
    c = np.float32(3.5).reshape(())
    np.testing.assert_array_equal(run_kernel("Max", a, b, c), [[3.5, 3.5, 4.0], [5.0, 5.0, 5.0]])
    mean = run_kernel("Mean", a, b)
    np.testing.assert_allclose(mean, [[1.5, 2.0, 2.5], [3.5, 4.0, 4.5]])
    assert mean.dtype == np.float32


# ---- dtypes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("Sigmoid", {}),
        ("Celu", {"alpha": 2.0}),
        ("Selu", {"alpha": 1.6732632, "gamma": 1.050701}),
        ("HardSwish", {}),
        ("Mish", {}),
        ("Softplus", {}),
        ("Sum", {}),
    ],
)
def test_float16_results_stay_float16(op: str, attrs: dict[str, object]) -> None:
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], np.float16)
    got = run_kernel(op, x, **attrs)
    assert got.dtype == np.float16
    wide = run_kernel(op, x.astype(np.float32), **attrs)
    np.testing.assert_allclose(got.astype(np.float32), wide, rtol=1e-3, atol=1e-3)


def test_bfloat16_bits_are_decoded_by_float_only_kernels() -> None:
    x = float32_to_bfloat16(np.array([-2.0, -0.5, 0.0, 1.5], np.float32))
    relu = run_kernel("Relu", x)
    assert relu.dtype == np.uint16
    np.testing.assert_array_equal(bfloat16_to_float32(relu), [0.0, 0.0, 0.0, 1.5])
    neg = run_kernel("Neg", x)
    np.testing.assert_array_equal(bfloat16_to_float32(neg), [2.0, 0.5, -0.0, -1.5])


def test_bfloat16_arithmetic_is_imported_through_float32() -> None:
    model = one_op_model(
        "Add",
        {"a": (TensorProto.BFLOAT16, (2,)), "b": (TensorProto.BFLOAT16, (2,))},
        (TensorProto.BFLOAT16, (2,)),
    )
    graph = load_onnx(model)
    assert [n.op_type for n in graph.nodes] == ["Cast", "Cast", "Add", "Cast"]
    add = graph.nodes[2]
    assert all(graph.types[name].dtype.value == "float32" for name in add.inputs + add.outputs)
    assert graph.types["y"].dtype.value == "bfloat16"


def test_uint16_arithmetic_is_not_mistaken_for_bfloat16() -> None:
    model = one_op_model(
        "Max",
        {"a": (TensorProto.UINT16, (2,)), "b": (TensorProto.UINT16, (2,))},
        (TensorProto.UINT16, (2,)),
    )
    program = nerve.compile(model)
    got = program.run({"a": np.array([65535, 1], np.uint16), "b": np.array([2, 3], np.uint16)})
    np.testing.assert_array_equal(got["y"], [65535, 3])


def test_shrink_on_unsigned_integers() -> None:
    got = run_kernel("Shrink", np.array([0, 1, 5], np.uint16), lambd=1.5, bias=1.0)
    np.testing.assert_array_equal(got, [0, 0, 4])
    assert got.dtype == np.uint16


def test_clip_integer_bounds_and_omitted_min() -> None:
    x = np.array([-128, -5, 0, 7, 127], np.int8)
    np.testing.assert_array_equal(run_kernel("Clip", x, None, np.int8(5)), [-128, -5, 0, 5, 5])
    both = run_kernel("Clip", x, np.array(-3, np.int8), np.array(3, np.int8))
    np.testing.assert_array_equal(both, [-3, -3, 0, 3, 3])
    assert both.dtype == np.int8


def test_bitshift_out_of_range_amounts_give_the_sign_fill() -> None:
    x = np.array([-16, 16, -16, 1], np.int8)
    y = np.array([9, 9, -1, 7], np.int8)
    np.testing.assert_array_equal(run_kernel("BitShift", x, y, direction="RIGHT"), [-1, 0, -1, 0])
    np.testing.assert_array_equal(run_kernel("BitShift", x, y, direction="LEFT"), [0, 0, 0, -128])


def test_isinf_detects_only_the_requested_sign() -> None:
    x = np.array([np.inf, -np.inf, 1.0, np.nan], np.float32)
    np.testing.assert_array_equal(
        run_kernel("IsInf", x, detect_negative=0, detect_positive=1), [True, False, False, False]
    )
    np.testing.assert_array_equal(
        run_kernel("IsInf", x, detect_negative=1, detect_positive=0), [False, True, False, False]
    )


# ---- import-time refusals ---------------------------------------------------------------------


def test_unknown_gelu_approximation_is_refused_by_name() -> None:
    model = one_op_model(
        "Gelu", {"x": (TensorProto.FLOAT, (2,))}, (TensorProto.FLOAT, (2,)), approximate="erf"
    )
    model.ir_version = 10
    with pytest.raises(UnsupportedAttributeError, match="approximate"):
        load_onnx(model)


def test_bitshift_direction_must_be_left_or_right() -> None:
    model = one_op_model(
        "BitShift",
        {"x": (TensorProto.UINT8, (2,)), "s": (TensorProto.UINT8, (2,))},
        (TensorProto.UINT8, (2,)),
        direction="UP",
    )
    with pytest.raises(UnsupportedAttributeError, match="direction"):
        load_onnx(model)

"""QDQ ops: kernels against integer references (bit-exact), importer checks, QDQ weights."""

from __future__ import annotations

import itertools
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from onnx import ModelProto, TensorProto, helper

import nerve
from nerve.engines.host import evaluate
from nerve.errors import ShapeError, UnsupportedAttributeError
from nerve.frontend.onnx import load_onnx
from nerve.ir import Node
from tests.unit.quant.helpers import onnx_model


def run(op: str, *inputs: np.ndarray | None, **attrs: object) -> list[np.ndarray]:
    names = [f"i{k}" if x is not None else "" for k, x in enumerate(inputs)]
    return evaluate(Node(op, names, ["y", "s", "z"][: 3 if op.startswith("Dyn") else 1],
                         dict(attrs)), *inputs)


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0, np.nan], np.float32)
    (y,) = run("QuantizeLinear", x, np.array(1.0, np.float32), np.array(0, np.int8))
    assert y.dtype == np.int8
    assert y.tolist() == [0, 2, 2, 0, -2, 127, -128, 0]
    (u,) = run("QuantizeLinear", x[:5], np.array(0.5, np.float32), np.array(10, np.uint8))
    assert u.tolist() == [11, 13, 15, 9, 7]


def test_quantize_per_axis_and_blocked_match_an_integer_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5)).astype(np.float32) * 4
    scale = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    zero = np.array([0, 1, -2, 3, 4], np.int8)
    (y,) = run("QuantizeLinear", x, scale, zero, axis=1)
    want = np.clip(np.rint(x / scale) + zero, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(y, want)
    blocked = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)  # blocks of 3 on axis 1
    (b,) = run("QuantizeLinear", x, blocked, None, axis=1, block_size=3)
    full = np.repeat(blocked, 3, axis=1)[:, :5]
    np.testing.assert_array_equal(b, np.clip(np.rint(x / full), 0, 255).astype(np.uint8))


def test_quantize_to_int4_and_float8_and_back() -> None:
    x = np.array([-9.0, -3.5, 2.5, 7.6], np.float32)
    (q,) = run("QuantizeLinear", x, np.array(1.0, np.float32),
               np.array(0, ml_dtypes.int4))
    assert q.dtype == ml_dtypes.int4 and q.astype(int).tolist() == [-8, -4, 2, 7]
    (d,) = run("DequantizeLinear", q, np.array(0.5, np.float32), np.array(1, ml_dtypes.int4))
    np.testing.assert_array_equal(d, [-4.5, -2.5, 0.5, 3.0])
    (f8,) = run("QuantizeLinear", np.array([1e6, 0.3], np.float32), np.array(1.0, np.float32),
                np.array(0, ml_dtypes.float8_e4m3fn), saturate=1)
    assert f8.astype(np.float32).tolist() == [448.0, 0.3125]


def test_dequantize_is_exact_and_honours_output_dtype() -> None:
    x = np.array([0, 255, 128], np.uint8)
    (y,) = run("DequantizeLinear", x, np.array(0.25, np.float32), np.array(128, np.uint8))
    np.testing.assert_array_equal(y, [-32.0, 31.75, 0.0])
    (h,) = run("DequantizeLinear", x, np.array(0.25, np.float32), np.array(128, np.uint8),
               output_dtype=TensorProto.FLOAT16)
    assert h.dtype == np.float16
    acc = np.array([[100000, -7]], np.int32)  # int32 accumulators, per-column scales
    (s,) = run("DequantizeLinear", acc, np.array([0.5, 2.0], np.float32), axis=1)
    np.testing.assert_array_equal(s, [[50000.0, -14.0]])


def test_dynamic_quantize_linear_covers_zero() -> None:
    x = np.array([1.0, 2.0, 3.0], np.float32)  # range widened to [0, 3]
    y, scale, zero = run("DynamicQuantizeLinear", x)
    assert float(scale) == np.float32(3) / np.float32(255) and int(zero) == 0
    assert y.tolist() == [85, 170, 255]


def _conv_reference(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Direct 2-D integer convolution, one output at a time (int64)."""
    n, _, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, m, h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1), np.int64)
    for b, o, i, j in itertools.product(*(range(s) for s in out.shape)):
        out[b, o, i, j] = np.sum(xp[b, :, i:i + kh, j:j + kw] * w[o])
    return out


def test_conv_integer_and_qlinear_conv_match_an_integer_reference() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (1, 2, 4, 4)).astype(np.uint8)
    w = rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    xz, wz = np.array(7, np.uint8), np.array([1, -2, 0], np.int8)
    (acc,) = run("ConvInteger", x, w, xz, wz, pads=(1, 1, 1, 1))
    shifted_w = w.astype(np.int64) - wz.reshape(3, 1, 1, 1)
    want = _conv_reference(x.astype(np.int64) - 7, shifted_w, 1)
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, want)
    scales = (np.array(0.02, np.float32), np.array([0.01, 0.02, 0.03], np.float32),
              np.array(4.0, np.float32))
    bias = np.array([100, -50, 0], np.int32)
    (q,) = run("QLinearConv", x, scales[0], xz, w, scales[1], wz, scales[2],
               np.array(5, np.uint8), bias, pads=(1, 1, 1, 1))
    mult = (scales[0] * scales[1] / scales[2]).astype(np.float32).reshape(1, 3, 1, 1)
    expect = np.clip(np.rint((want + bias.reshape(1, 3, 1, 1)) * mult.astype(np.float64)) + 5,
                     0, 255)
    np.testing.assert_array_equal(q, expect.astype(np.uint8))


def _dq_model(scale_shape: list[int], **attrs: Any) -> ModelProto:
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    return onnx_model(nodes, [("q", TensorProto.INT8, [4, 6]),
                              ("s", TensorProto.FLOAT, scale_shape),
                              ("z", TensorProto.INT8, scale_shape)],
                      [("y", TensorProto.FLOAT, [4, 6])], {})


def test_importer_refuses_scales_of_the_wrong_granularity() -> None:
    load_onnx(_dq_model([6], axis=1))  # per axis: fine
    load_onnx(_dq_model([4, 2], axis=1, block_size=3))  # blocked: fine
    with pytest.raises(ShapeError, match="one value per element of axis 0"):
        load_onnx(_dq_model([6], axis=0))
    with pytest.raises(ShapeError, match="block_size 2"):
        load_onnx(_dq_model([4, 2], axis=1, block_size=2))


def test_importer_refuses_output_dtype_that_contradicts_the_zero_point() -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"],
                              output_dtype=TensorProto.UINT8)]
    m = onnx_model(nodes, [("x", TensorProto.FLOAT, [3])], [("y", TensorProto.INT8, [3])],
                   {"s": np.array(1.0, np.float32), "z": np.array(0, np.int8)})
    with pytest.raises(UnsupportedAttributeError, match="output_dtype"):
        load_onnx(m)


def _qdq_matmul(wq: np.ndarray) -> ModelProto:
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    return onnx_model(nodes, [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 4])],
                      {"wq": wq, "ws": np.array([0.5, 1, 2, 4], np.float32),
                       "wz": np.zeros(4, np.int8)})


def test_quantized_weights_are_params_not_structure() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (3, 4)).astype(np.int8)
    b = rng.integers(-128, 128, (3, 4)).astype(np.int8)
    graph = load_onnx(_qdq_matmul(a))
    assert "wq" in graph.params and "wz" in graph.constants  # zero points stay structural
    pa, pb = nerve.compile(_qdq_matmul(a), cache=False), nerve.compile(_qdq_matmul(b), cache=False)
    assert pa.key == pb.key
    x = rng.standard_normal((2, 3)).astype(np.float32)
    scales = np.array([0.5, 1, 2, 4], np.float32)
    np.testing.assert_allclose(pa.run({"x": x})["y"], x @ (a * scales), rtol=1e-6)
    pa.update_weights({"wq": b})
    np.testing.assert_array_equal(pa.run({"x": x})["y"], pb.run({"x": x})["y"])

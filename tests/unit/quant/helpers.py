"""Tiny models and numpy emulations shared by the quantization tests."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (round to nearest even), as float32."""
    return bfloat16_to_float32(float32_to_bfloat16(np.asarray(x, np.float32)))


def onnx_model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray],
               opset: int = 21) -> ModelProto:
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp(rng: np.random.Generator, m: int = 3, k: int = 20, h: int = 24, n: int = 10
        ) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """x (m, k) -> MatMul W1 + b1 -> Relu -> MatMul W2 + b2 -> y (m, n)."""
    w = {"W1": rng.standard_normal((k, h)).astype(np.float32),
         "b1": rng.standard_normal(h).astype(np.float32),
         "W2": rng.standard_normal((h, n)).astype(np.float32),
         "b2": rng.standard_normal(n).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"], name="fc1"),
             helper.make_node("Add", ["a", "b1"], ["ab"], name="add1"),
             helper.make_node("Relu", ["ab"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "W2"], ["c"], name="fc2"),
             helper.make_node("Add", ["c", "b2"], ["y"], name="add2")]
    model = onnx_model(nodes, [("x", TensorProto.FLOAT, [m, k])],
                       [("y", TensorProto.FLOAT, [m, n])], w)
    return model, w


def cnn(rng: np.random.Generator) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """x (2, 3, 5, 5) -> Conv 3x3 pad 1 + bias -> Relu -> Flatten -> Gemm(transB) -> y (2, 7)."""
    w = {"Wc": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
         "bc": rng.standard_normal(6).astype(np.float32),
         "Wf": rng.standard_normal((7, 6 * 25)).astype(np.float32),
         "bf": rng.standard_normal(7).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "Wc", "bc"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1, name="fc")]
    model = onnx_model(nodes, [("x", TensorProto.FLOAT, [2, 3, 5, 5])],
                       [("y", TensorProto.FLOAT, [2, 7])], w)
    return model, w


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 (values, scales), written out independently of nerve."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=others) / np.float32(127)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_activation(x: np.ndarray, low: float, high: float
                        ) -> tuple[np.ndarray, np.float32, int]:
    """Asymmetric uint8 (values, scale, zero point) of x over [low, high] widened to 0."""
    lo, hi = np.float32(min(low, 0.0)), np.float32(max(high, 0.0))
    scale = np.float32((hi - lo) / np.float32(255)) if hi > lo else np.float32(1)
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(x.astype(np.float32) / scale) + zero, 0, 255).astype(np.uint8)
    return q, scale, zero


def int8_matmul_reference(x: np.ndarray, w: np.ndarray, low: float, high: float) -> np.ndarray:
    """What int8 hardware computes for x @ w: u8 x s8 products summed in int32, scaled in f32."""
    xq, sx, zx = quantize_activation(x, low, high)
    wq, sw = quantize_weight(w, 1)
    acc = (xq.astype(np.int64) - zx) @ wq.astype(np.int64)
    assert np.abs(acc).max(initial=0) < 2**31
    return acc.astype(np.int32).astype(np.float32) * (sw * np.float32(sx)).astype(np.float32)

"""Precision policies on compile: bf16 and int8 operands computed exactly as the hardware does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import ModelProto, TensorProto, helper

import nerve
from nerve.compiler.targets import cpu
from nerve.errors import CompileError, TargetError
from tests.unit.quant.helpers import bf16, cnn, int8_matmul_reference, mlp, onnx_model

RNG = np.random.default_rng(7)


def test_bf16_mlp_is_bit_exact_against_a_numpy_emulation() -> None:
    model, w = mlp(RNG)
    x = RNG.standard_normal((3, 20)).astype(np.float32)
    got = nerve.compile(model, precision="bf16", cache=False).run({"x": x})["y"]
    # bf16-rounded operands, float32 products and sums, float32 bias and ReLU.
    h = np.maximum(np.matmul(bf16(x), bf16(w["W1"])) + w["b1"], np.float32(0))
    want = np.matmul(bf16(h), bf16(w["W2"])) + w["b2"]
    np.testing.assert_array_equal(got, want)
    fp32 = nerve.compile(model, cache=False).run({"x": x})["y"]
    assert not np.array_equal(got, fp32)  # the policy really rounds


def test_bf16_cnn_stays_within_bf16_error_of_fp32() -> None:
    model, _ = cnn(RNG)
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    fp32 = nerve.compile(model, cache=False).run({"x": x})["y"]
    got = nerve.compile(model, precision="bf16", cache=False).run({"x": x})["y"]
    err = np.abs(got - fp32).max() / np.abs(fp32).max()
    assert 0 < err < 2e-2  # bf16 keeps 8 bits: ~0.4% per operand, sums of ~150 terms


def test_bf16_weights_are_baked_bf16_slots_and_updates_rebake_them() -> None:
    model, w = mlp(RNG)
    program = nerve.compile(model, precision="bf16", cache=False)
    slots = [s for s in program.plan.bake_recipes if s.startswith("W1@")]
    assert slots and program.plan.graph.types[slots[0]].dtype.value == "bfloat16"
    x = RNG.standard_normal((3, 20)).astype(np.float32)
    new = {k: v * 2 for k, v in w.items()}
    program.update_weights(new)
    fresh = nerve.compile(model, precision="bf16", cache=False)
    fresh.update_weights(new)
    np.testing.assert_array_equal(program.run({"x": x})["y"], fresh.run({"x": x})["y"])


def test_int8_mlp_is_bit_exact_against_an_integer_reference() -> None:
    model, w = mlp(RNG)
    x = RNG.standard_normal((3, 20)).astype(np.float32)
    ranges = {"x": (-2.5, 2.0), "h": (0.0, 6.0)}
    got = nerve.compile(model, precision="int8", calibration=ranges, cache=False).run({"x": x})
    h = np.maximum(int8_matmul_reference(x, w["W1"], *ranges["x"]) + w["b1"], np.float32(0))
    want = int8_matmul_reference(h, w["W2"], *ranges["h"]) + w["b2"]
    np.testing.assert_array_equal(got["y"], want)


def test_int8_needs_calibration_and_says_so() -> None:
    model, _ = mlp(RNG)
    with pytest.raises(CompileError, match="calibrated range of its input 'x'"):
        nerve.compile(model, precision="int8", cache=False)


def test_int8_cnn_with_gemm_trans_b_is_close_to_fp32() -> None:
    model, _ = cnn(RNG)
    x = RNG.standard_normal((4, 2, 3, 5, 5)).astype(np.float32)
    cal = nerve.calibrate(model, {"x": x})
    program = nerve.compile(model, precision="int8", calibration=cal, cache=False)
    ops = [n.op_type for n in program.plan.graph.nodes]
    assert "ConvInteger" in ops and "MatMulInteger" in ops
    fp32 = nerve.compile(model, cache=False)
    for sample in x:
        ref = fp32.run({"x": sample})["y"]
        err = np.abs(program.run({"x": sample})["y"] - ref).max() / np.abs(ref).max()
        assert err < 5e-2


def test_overrides_by_op_type_and_node_name() -> None:
    model, w = mlp(RNG)
    x = RNG.standard_normal((3, 20)).astype(np.float32)
    fp32 = nerve.compile(model, cache=False).run({"x": x})["y"]
    all_fp32 = nerve.compile(model, precision="bf16", precision_overrides={"MatMul": "fp32"},
                             cache=False)
    np.testing.assert_array_equal(all_fp32.run({"x": x})["y"], fp32)
    assert any("override: MatMul -> fp32" in n for n in all_fp32.report.notes)
    one = nerve.compile(model, precision="fp32", precision_overrides={"fc2": "bf16"},
                        cache=False)
    h = np.maximum(np.matmul(x, w["W1"]) + w["b1"], np.float32(0))
    want = np.matmul(bf16(h), bf16(w["W2"])) + w["b2"]
    np.testing.assert_array_equal(one.run({"x": x})["y"], want)
    assert one.key != all_fp32.key != nerve.compile(model, cache=False).key


def test_auto_follows_the_target_features_and_the_report_names_them() -> None:
    with_bf16 = cpu.target(features=("avx2", "avx512f", "avx512_bf16"))
    assert with_bf16.precision("auto").operands is not None
    assert with_bf16.precision("auto").uses == ("avx512_bf16",)
    plain = cpu.target(features=("avx2", "avx512f"))
    assert plain.precision("auto").operands is None
    with pytest.raises(TargetError, match="avx512_bf16"):
        plain.precision("bf16")
    model, _ = mlp(RNG)
    program = nerve.compile(model, precision="auto", cache=False)  # host: no features -> fp32
    assert program.report.notes[0].startswith("precision policy: auto (compute float32")


def _matmul_model(m: int, k: int, n: int, w: np.ndarray) -> ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    return onnx_model(nodes, [("x", TensorProto.FLOAT, [m, k])],
                      [("y", TensorProto.FLOAT, [m, n])], {"W": w})


@settings(max_examples=20, deadline=None)
@given(m=st.sampled_from([1, 2, 5]), k=st.integers(1, 70).filter(lambda v: v % 32),
       n=st.integers(1, 40).filter(lambda v: v % 16), seed=st.integers(0, 2**16))
def test_quantized_matmul_odd_shapes_are_bit_exact(m: int, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    model = _matmul_model(m, k, n, w)
    low, high = float(x.min()), float(x.max())
    int8 = nerve.compile(model, precision="int8", calibration={"x": (low, high)}, cache=False)
    np.testing.assert_array_equal(int8.run({"x": x})["y"], int8_matmul_reference(x, w, low, high))
    b16 = nerve.compile(model, precision="bf16", cache=False)
    np.testing.assert_array_equal(b16.run({"x": x})["y"], np.matmul(bf16(x), bf16(w)))

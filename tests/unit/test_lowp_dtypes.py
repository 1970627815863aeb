"""Low-precision element types: float8 (four kinds), float8 E8M0, float4 E2M1, int4/uint4, int2/uint2.

Covers the DType table, ONNX Cast into and out of them (saturate, rounding, E8M0 round modes),
importing them (packed raw data and int32_data), and running them through compiled programs.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nerve
from nerve.compiler.context import PassContext
from nerve.compiler.passes.precision import precision
from nerve.compiler.targets import get_target
from nerve.engines.host.kernels import tensor as k
from nerve.errors import KernelError, UnsupportedAttributeError
from nerve.frontend.onnx import load_onnx
from nerve.frontend.onnx.context import tensor_to_array
from nerve.ir import DType, Graph, Node, TensorType
from nerve.ir.dtypes import to_low_precision, widen_low_precision

FLOAT8 = (DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ)
LOW_PRECISION = (*FLOAT8, DType.FLOAT8E8M0, DType.FLOAT4E2M1, DType.INT4, DType.UINT4,
                 DType.INT2, DType.UINT2)  # fmt: skip
INF, NAN = np.inf, np.nan


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence[int]]],
    outputs: Sequence[tuple[str, int, Sequence[int]]],
    initializers: Sequence[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        list(initializers),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])


def cast(x: np.ndarray, source: DType, target: DType, **attrs: object) -> np.ndarray:
    node = Node("Cast", ["x"], ["y"], {"to": target.onnx, **attrs}, "cast")
    return k.cast(node, x, input_types=[TensorType(source, x.shape)])


def codes(x: np.ndarray) -> list[int]:
    return [int(b) for b in x.view(np.uint8).reshape(-1)]


# ---- the DType table ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: d.value)
def test_low_precision_dtypes_map_to_onnx_and_ml_dtypes(dtype: DType) -> None:
    onnx_name = dtype.name  # the enum names are ONNX's
    assert dtype.onnx == getattr(TensorProto, onnx_name)
    assert dtype.numpy == helper.tensor_dtype_to_np_dtype(dtype.onnx)
    assert DType.from_onnx(dtype.onnx) is dtype
    assert DType.from_numpy(dtype.numpy) is dtype
    assert dtype.itemsize == 1  # unpacked: one element per byte, even for 4-bit and 2-bit types
    assert dtype.is_low_precision


def test_low_precision_classification() -> None:
    for dtype in (*FLOAT8, DType.FLOAT8E8M0, DType.FLOAT4E2M1):
        assert dtype.is_float and not dtype.is_integer
    for dtype in (DType.INT4, DType.UINT4, DType.INT2, DType.UINT2):
        assert dtype.is_integer and not dtype.is_float
    for dtype in (DType.FLOAT32, DType.BFLOAT16, DType.INT8, DType.BOOL):
        assert not dtype.is_low_precision
    assert DType.BFLOAT16.numpy == np.uint16  # bfloat16 stays uint16 bit patterns


# ---- Cast into float8 --------------------------------------------------------------------------

_SPECIAL = np.array([0.0, -0.0, NAN, INF, -INF, 1e6, -1e6], np.float32)


def test_float8_saturate_clamps_to_the_largest_finite_value() -> None:
    for dtype in FLOAT8:
        top = float(ml_dtypes.finfo(dtype.numpy).max)
        got = to_low_precision(_SPECIAL, dtype, saturate=True).astype(np.float32)
        np.testing.assert_array_equal(got, [0, 0, NAN, top, -top, top, -top])
        assert np.signbit(got[1]) == (dtype in (DType.FLOAT8E4M3FN, DType.FLOAT8E5M2))


def test_float8_without_saturate_follows_the_onnx_table() -> None:
    # x:        0, -0,  NaN, Inf,  -Inf, 1e6 (beyond), -1e6
    want = {
        DType.FLOAT8E4M3FN: [0, -0.0, NAN, NAN, NAN, NAN, NAN],
        DType.FLOAT8E4M3FNUZ: [0, 0, NAN, NAN, NAN, NAN, NAN],
        DType.FLOAT8E5M2: [0, -0.0, NAN, INF, -INF, INF, -INF],
        DType.FLOAT8E5M2FNUZ: [0, 0, NAN, NAN, NAN, NAN, NAN],
    }
    for dtype, expected in want.items():
        got = to_low_precision(_SPECIAL, dtype, saturate=False).astype(np.float32)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(np.signbit(got[:2]), np.signbit(np.array(expected[:2])))
    # -NaN keeps its sign in E4M3FN: 0xFF; the FNUZ types have one NaN, 0x80.
    neg_nan = -np.array([NAN], np.float32)
    assert codes(to_low_precision(neg_nan, DType.FLOAT8E4M3FN, saturate=False)) == [0xFF]
    assert codes(to_low_precision(neg_nan, DType.FLOAT8E4M3FNUZ, saturate=False)) == [0x80]


def test_float8_rounds_to_nearest_even() -> None:
    # E4M3 has 3 mantissa bits: 1.0625 is halfway between 1.0 and 1.125 (odd) -> 1.0;
    # 1.1875 is halfway between 1.125 (odd) and 1.25 -> 1.25. E5M2 has 2 bits: steps of 0.25.
    x = np.array([1.0625, 1.1875, 1.07], np.float32)
    np.testing.assert_array_equal(
        to_low_precision(x, DType.FLOAT8E4M3FN).astype(np.float32), [1.0, 1.25, 1.125]
    )
    y = np.array([1.125, 1.375, -1.125], np.float64)
    np.testing.assert_array_equal(
        to_low_precision(y, DType.FLOAT8E5M2).astype(np.float32), [1.0, 1.5, -1.0]
    )


def test_float8_values_near_the_top_round_before_they_overflow() -> None:
    # 460 rounds down to E4M3FN's max 448 (the next step would be 480), so it is no overflow
    # even without saturate; 470 rounds past it.
    x = np.array([460.0, 470.0], np.float32)
    got = to_low_precision(x, DType.FLOAT8E4M3FN, saturate=False).astype(np.float32)
    np.testing.assert_array_equal(got, [448.0, NAN])
    got = to_low_precision(x, DType.FLOAT8E4M3FN, saturate=True).astype(np.float32)
    np.testing.assert_array_equal(got, [448.0, 448.0])


@pytest.mark.parametrize("dtype", FLOAT8, ids=lambda d: d.value)
def test_float8_matches_onnx_saturate_cast_on_random_values(dtype: DType) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * np.exp2(rng.integers(-20, 20, 2000))).astype(np.float32)
    want = numpy_helper.saturate_cast(x, dtype.numpy)
    assert codes(to_low_precision(x, dtype, saturate=True)) == codes(want)
    assert codes(to_low_precision(x, dtype, saturate=False)) == codes(x.astype(dtype.numpy))


def test_integers_and_bools_cast_to_float8() -> None:
    got = to_low_precision(np.array([3, -1000, 17], np.int64), DType.FLOAT8E4M3FN)
    np.testing.assert_array_equal(got.astype(np.float32), [3, -448, 16])  # 17 -> 16 (even)
    got = to_low_precision(np.array([True, False]), DType.FLOAT8E5M2)
    np.testing.assert_array_equal(got.astype(np.float32), [1, 0])


# ---- Cast into E8M0 ----------------------------------------------------------------------------


def test_e8m0_round_modes() -> None:
    x = np.array([1.0, 3.0, 5.0, 6.0, 0.124, 0.25], np.float32)
    expected = {
        "up": [1, 4, 8, 8, 0.125, 0.25],
        "down": [1, 2, 4, 4, 0.0625, 0.25],
        "nearest": [1, 4, 4, 8, 0.125, 0.25],  # 3 and 6 are ties (1.5 * 2^k): they go up
    }
    for mode, want in expected.items():
        got = to_low_precision(x, DType.FLOAT8E8M0, round_mode=mode).astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=mode)


def test_e8m0_matches_onnx_reference_on_normal_values() -> None:
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(500) * np.exp2(rng.integers(-60, 60, 500))).astype(np.float32)
    for mode in ("up", "down", "nearest"):
        want = numpy_helper.to_float8e8m0(x, saturate=True, round_mode=mode)
        assert codes(to_low_precision(x, DType.FLOAT8E8M0, round_mode=mode)) == codes(want), mode


def test_e8m0_range_and_special_values() -> None:
    x = np.array([0.0, INF, 3e38, 1e-45, NAN], np.float32)  # 3e38 rounds up past 2^127
    # saturate: zero and tiny values clamp to 2^-127 (code 0), infinity and huge to 2^127 (254).
    assert codes(to_low_precision(x, DType.FLOAT8E8M0, saturate=True)) == [0, 254, 254, 0, 255]
    # without saturate they are NaN (255), as ONNX's E8M0 table says.
    assert codes(to_low_precision(x, DType.FLOAT8E8M0, saturate=False)) == [255] * 5
    assert float(np.array([0], np.uint8).view(DType.FLOAT8E8M0.numpy)[0]) == 2.0**-127


def test_e8m0_rejects_an_unknown_round_mode() -> None:
    with pytest.raises(ValueError, match="round_mode"):
        to_low_precision(np.ones(2, np.float32), DType.FLOAT8E8M0, round_mode="sideways")
    with pytest.raises(KernelError, match="round_mode"):
        cast(np.ones(2, np.float32), DType.FLOAT32, DType.FLOAT8E8M0, round_mode="sideways")


# ---- Cast into float4 and the small integers ---------------------------------------------------


def test_float4_rounds_to_nearest_even_and_clamps() -> None:
    x = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 5.0, 9.0, -INF, INF, -0.0], np.float32)
    got = to_low_precision(x, DType.FLOAT4E2M1).astype(np.float32)
    np.testing.assert_array_equal(got, [0, 1, 1, 2, 2, 4, 6, -6, 6, 0])
    assert np.signbit(got[-1])


def test_small_integers_wrap_integers_and_truncate_floats() -> None:
    ints = np.array([200, -9, 7, 8, -1, 15, 16], np.int32)
    np.testing.assert_array_equal(to_low_precision(ints, DType.INT4).astype(np.int32),
                                  [-8, 7, 7, -8, -1, -1, 0])  # fmt: skip
    np.testing.assert_array_equal(to_low_precision(ints, DType.UINT4).astype(np.int32),
                                  [8, 7, 7, 8, 15, 15, 0])  # fmt: skip
    np.testing.assert_array_equal(to_low_precision(ints, DType.INT2).astype(np.int32),
                                  [0, -1, -1, 0, -1, -1, 0])  # fmt: skip
    np.testing.assert_array_equal(to_low_precision(ints, DType.UINT2).astype(np.int32),
                                  [0, 3, 3, 0, 3, 3, 0])  # fmt: skip
    floats = np.array([-7.6, 7.9, 2.5, -0.5, 1e30, NAN, INF], np.float32)
    np.testing.assert_array_equal(to_low_precision(floats, DType.INT4).astype(np.int32),
                                  [-7, 7, 2, 0, 0, 0, 0])  # fmt: skip
    big = np.array([2**63 + 5], np.uint64)  # low bits survive even past int64
    assert to_low_precision(big, DType.UINT4).astype(np.int32).tolist() == [5]


# ---- Cast out of them, and the kernel's dispatch -----------------------------------------------


def test_widening_is_exact() -> None:
    every_code = np.arange(256, dtype=np.uint8)
    for dtype in (*FLOAT8, DType.FLOAT8E8M0):
        x = every_code.view(dtype.numpy)
        wide = widen_low_precision(x, dtype)
        assert wide.dtype == np.float32
        back = wide.astype(dtype.numpy)
        finite = ~np.isnan(wide)  # E5M2's NaN payloads need not survive, NaN-ness does
        assert codes(back[finite]) == codes(x[finite])  # back to the same codes
        assert np.isnan(back.astype(np.float32)[~finite]).all()
    x4 = np.arange(-8, 8).astype(DType.INT4.numpy)
    assert widen_low_precision(x4, DType.INT4).tolist() == list(range(-8, 8))
    assert (
        widen_low_precision(np.arange(4).astype(DType.UINT2.numpy), DType.UINT2).dtype == np.uint8
    )


def test_cast_kernel_between_low_precision_and_other_types() -> None:
    f8 = np.array([1.5, -448.0, NAN], np.float32).astype(DType.FLOAT8E4M3FN.numpy)
    np.testing.assert_array_equal(cast(f8, DType.FLOAT8E4M3FN, DType.FLOAT16), [1.5, -448, NAN])
    bits = cast(f8, DType.FLOAT8E4M3FN, DType.BFLOAT16)  # bfloat16 bit patterns, exact
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32)[:2], [1.5, -448])
    assert cast(f8, DType.FLOAT8E4M3FN, DType.BOOL).tolist() == [True, True, True]
    assert cast(f8[:2], DType.FLOAT8E4M3FN, DType.STRING).tolist() == ["1.5", "-448.0"]
    # E5M2 -> E4M3FN saturates by default, and gives NaN without saturate.
    e5 = np.array([1000.0], np.float32).astype(DType.FLOAT8E5M2.numpy)
    assert float(cast(e5, DType.FLOAT8E5M2, DType.FLOAT8E4M3FN)[0]) == 448.0
    assert np.isnan(float(cast(e5, DType.FLOAT8E5M2, DType.FLOAT8E4M3FN, saturate=0)[0]))
    # bfloat16 bits in, int4 out; strings in, float4 out.
    bf = np.array([0x4040, 0xC100], np.uint16)  # 3.0, -8.0
    assert cast(bf, DType.BFLOAT16, DType.INT4).astype(np.int32).tolist() == [3, -8]
    text = np.array(["2.5", "-INF"], dtype=object)
    assert cast(text, DType.STRING, DType.FLOAT4E2M1).astype(np.float32).tolist() == [2.0, -6.0]


# ---- importing -----------------------------------------------------------------------------------


def test_packed_4bit_and_2bit_tensors_unpack() -> None:
    values = np.array([[-8, 7, 3], [1, -1, 0], [5, -2, 6]], np.int8)  # 9 elements: odd
    tensor = helper.make_tensor("t", TensorProto.INT4, values.shape,
                                numpy_helper._pack_4bitx2(values).tobytes(), raw=True)  # fmt: skip
    assert len(tensor.raw_data) == 5
    array, dtype = tensor_to_array(tensor)
    assert dtype is DType.INT4 and array.dtype == DType.INT4.numpy
    np.testing.assert_array_equal(array.astype(np.int8), values)
    # The same values in int32_data (onnx packs two per entry there as well).
    listed = helper.make_tensor("t", TensorProto.INT4, values.shape, values.reshape(-1))
    assert not listed.raw_data
    np.testing.assert_array_equal(tensor_to_array(listed)[0].astype(np.int8), values)

    twos = np.array([0, 1, 2, 3, 3, 1], np.uint8)
    packed = helper.make_tensor("u", TensorProto.UINT2, [6],
                                numpy_helper._pack_2bitx4(twos).tobytes(), raw=True)  # fmt: skip
    assert len(packed.raw_data) == 2
    np.testing.assert_array_equal(tensor_to_array(packed)[0].astype(np.uint8), twos)


def test_float8_tensors_import_from_raw_and_int32_data() -> None:
    x = np.array([0.5, -3.0, 448.0], np.float32).astype(ml_dtypes.float8_e4m3fn)
    raw = numpy_helper.from_array(x, "r")
    listed = helper.make_tensor("l", TensorProto.FLOAT8E4M3FN, [3], [0.5, -3.0, 448.0])
    assert raw.raw_data and not listed.raw_data
    for tensor in (raw, listed):
        array, dtype = tensor_to_array(tensor)
        assert dtype is DType.FLOAT8E4M3FN
        assert codes(array) == codes(x)


def test_low_precision_initializers_import_float_as_params_integers_as_constants() -> None:
    w8 = numpy_helper.from_array(np.ones((4, 4), np.float32).astype(ml_dtypes.float8_e5m2), "w8")
    w4 = numpy_helper.from_array(np.arange(-3, 3).astype(ml_dtypes.int4), "w4")
    nodes = [
        helper.make_node("Cast", ["w8"], ["a"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w4"], ["b"], to=TensorProto.INT8),
    ]
    graph = load_onnx(model(nodes, [], [("a", TensorProto.FLOAT, [4, 4]),
                                        ("b", TensorProto.INT8, [6])], [w8, w4]))  # fmt: skip
    assert "w8" in graph.params and graph.types["w8"].dtype is DType.FLOAT8E5M2
    # Integer initializers are constants, as int8 ones are (the folded Cast leaves its result).
    assert "w4" not in graph.params


# ---- compiled programs -------------------------------------------------------------------------


def test_program_casts_in_and_out_of_float8_and_moves_it() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["q"], to=TensorProto.FLOAT8E4M3FN, saturate=0),
        helper.make_node("Reshape", ["q", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
        helper.make_node("CastLike", ["t", "x"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([2, 2], np.int64), "shape")
    m = model(nodes, [("x", TensorProto.FLOAT, [4])],
              [("y", TensorProto.FLOAT, [2, 2]), ("t", TensorProto.FLOAT8E4M3FN, [2, 2])],
              [shape])  # fmt: skip
    for target in ("host", "cpu"):
        out = nerve.compile(m, target=target).run({"x": np.array([1.07, 500, -2, 0.3], np.float32)})
        np.testing.assert_array_equal(out["y"], [[1.125, -2.0], [NAN, 0.3125]], err_msg=target)
        assert out["t"].dtype == ml_dtypes.float8_e4m3fn


def test_program_takes_low_precision_inputs() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)]
    m = model(nodes, [("x", TensorProto.UINT4, [3])], [("y", TensorProto.FLOAT, [3])])
    program = nerve.compile(m)
    x = np.array([0, 9, 15], np.uint8).astype(ml_dtypes.uint4)
    np.testing.assert_array_equal(program.run({"x": x})["y"], [0, 9, 15])


def test_folded_constant_cast_honours_saturate() -> None:
    # A Cast of a constant is folded at import: it must apply Cast's rules, not plain astype.
    value = numpy_helper.from_array(np.array([1000.0, INF, -1e6, 0.3], np.float32))
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT8E4M3FN),
        helper.make_node("Cast", ["c"], ["z"], to=TensorProto.FLOAT8E8M0, round_mode="down"),
    ]
    m = model(nodes, [], [("y", TensorProto.FLOAT8E4M3FN, [4]), ("z", TensorProto.FLOAT8E8M0, [4])])
    out = nerve.compile(m).run({})
    np.testing.assert_array_equal(out["y"].astype(np.float32), [448, 448, -448, 0.3125])
    np.testing.assert_array_equal(out["z"].astype(np.float32), [512, 2.0**127, 2.0**19, 0.25])


def test_cast_with_an_unknown_round_mode_is_refused_at_import() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0, round_mode="odd")]
    m = model(nodes, [("x", TensorProto.FLOAT, [2])], [("y", TensorProto.FLOAT8E8M0, [2])])
    with pytest.raises(UnsupportedAttributeError, match="round_mode"):
        nerve.compile(m)


def test_precision_pass_leaves_low_precision_tensors_alone() -> None:
    # The cpu target's fp32 policy converts float inputs of every op to float32; float8 data
    # is storage, moved as it is (no Cast pair around the Reshape).
    t = TensorType(DType.FLOAT8E5M2, (2, 2))
    g = Graph("g")
    g.add_input("x", TensorType(DType.FLOAT8E5M2, (4,)))
    g.add_constant("shape", np.array([2, 2], np.int64))
    g.add_node(Node("Reshape", ["x", "shape"], ["y"]), {"y": t})
    g.set_outputs(["y"])
    ctx = PassContext.new(g, get_target("cpu"), {"precision": "fp32"})
    assert [n.op_type for n in precision(g, ctx).nodes] == ["Reshape"]

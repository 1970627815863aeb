"""Tensor-family kernels and importers: slicing, padding, scatter, casts, and compile constants."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nerve
from nerve.engines.host import evaluate
from nerve.engines.host.kernels import tensor as k
from nerve.errors import InputError, KernelError, UnsupportedAttributeError
from nerve.ir import DType, Node, TensorType
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16


def one_node_model(
    node: onnx.NodeProto,
    inputs: Sequence[tuple[str, int, Sequence[int | str]]],
    outputs: Sequence[tuple[str, int, Sequence[int | str]]],
    opset: int = 21,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# ---- Slice -------------------------------------------------------------------------------------


def test_slice_negative_steps_walk_backwards_and_clamp() -> None:
    x = np.arange(10, dtype=np.float32)
    node = Node("Slice", ["x", "s", "e", "a", "st"], ["y"])
    # From past the end (clamped to the last index) down to the very first element.
    got = k.slice_(node, x, i64(100), i64(-100), i64(0), i64(-1))
    np.testing.assert_array_equal(got, x[::-1])
    # Step -3 from index -2 (8) down to, not including, index 1.
    got = k.slice_(node, x, i64(-2), i64(1), i64(0), i64(-3))
    np.testing.assert_array_equal(got, [8.0, 5.0, 2.0])


def test_slice_out_of_range_bounds_and_int64_extremes() -> None:
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    node = Node("Slice", ["x", "s", "e", "a"], ["y"])
    big = np.iinfo(np.int64).max
    got = k.slice_(node, x, i64(1, -1000), i64(big, 2), i64(0, -1))
    np.testing.assert_array_equal(got, x[1:, :2])
    assert k.slice_(node, x, i64(5), i64(9), i64(0)).shape == (0, 4)  # start past the end


def test_slice_of_matches_python_for_every_bound_and_step() -> None:
    dim = 5
    for step in (-3, -2, -1, 1, 2, 3):
        for start in range(-8, 9):
            for end in range(-8, 9):
                got = list(range(dim))[k.slice_of(start, end, step, dim)]
                # Reference from the ONNX rule, written as an explicit loop.
                s = start + dim if start < 0 else start
                e = end + dim if end < 0 else end
                if step > 0:
                    s, e = min(max(s, 0), dim), min(max(e, 0), dim)
                    want = list(range(s, e, step))
                else:
                    s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
                    want = list(range(s, e, step))
                assert got == want, (start, end, step)


# ---- Pad ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "want"),
    [
        ("constant", [9, 9, 1, 2, 3, 9]),
        ("reflect", [3, 2, 1, 2, 3, 2]),
        ("edge", [1, 1, 1, 2, 3, 3]),
        ("wrap", [2, 3, 1, 2, 3, 1]),
    ],
)
def test_pad_modes(mode: str, want: list[int]) -> None:
    node = Node("Pad", ["x", "p", "v"], ["y"], {"mode": mode})
    got = k.pad(node, np.array([1, 2, 3], np.int32), i64(2, 1), np.array(9, np.int32))
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32


def test_pad_with_axes_and_negative_pads_crops() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    node = Node("Pad", ["x", "p", "", "a"], ["y"], {"mode": "reflect"})
    # Only axis -1: crop one element at the start, reflect-pad two at the end.
    got = k.pad(node, x, i64(-1, 2), None, i64(-1))
    np.testing.assert_array_equal(got, np.pad(x[:, 1:], [(0, 0), (0, 2)], mode="reflect"))


def test_pad_import_needs_constant_pads_and_names_the_node() -> None:
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="pad0", mode="edge")
    model = one_node_model(
        node, [("x", TensorProto.FLOAT, [2, 3]), ("pads", TensorProto.INT64, [4])],
        [("y", TensorProto.FLOAT, ["a", "b"])],
    )
    with pytest.raises(UnsupportedAttributeError, match="pad0"):
        nerve.compile(model)
    program = nerve.compile(model, constants={"pads": [0, 1, 1, 0]})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(
        program.run({"x": x})["y"], np.pad(x, [(0, 1), (1, 0)], mode="edge")
    )


# ---- scatter and gather -----------------------------------------------------------------------


def test_scatter_nd_reductions_count_duplicate_indices() -> None:
    data = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    indices = np.array([[1], [1], [3]], np.int64)
    updates = np.array([10.0, 20.0, -5.0], np.float32)
    expect = {
        "add": [1.0, 32.0, 3.0, -1.0],
        "mul": [1.0, 400.0, 3.0, -20.0],
        "max": [1.0, 20.0, 3.0, 4.0],
        "min": [1.0, 2.0, 3.0, -5.0],
    }
    for reduction, want in expect.items():
        node = Node("ScatterND", ["d", "i", "u"], ["y"], {"reduction": reduction})
        got = k.scatter_nd(node, data, indices, updates)
        np.testing.assert_array_equal(got, want, err_msg=reduction)
        assert got.dtype == np.float32
    np.testing.assert_array_equal(data, [1.0, 2.0, 3.0, 4.0])  # the input is untouched


def test_scatter_nd_on_bfloat16_reduces_values_not_bits() -> None:
    data = float32_to_bfloat16(np.array([1.5, 2.0], np.float32))
    updates = float32_to_bfloat16(np.array([0.25], np.float32))
    node = Node("ScatterND", ["d", "i", "u"], ["y"], {"reduction": "add"})
    bf16 = TensorType(DType.BFLOAT16, (2,))
    got = k.scatter_nd(
        node, data, np.array([[0]], np.int64), updates, input_types=[bf16, None, bf16]
    )
    np.testing.assert_array_equal(bfloat16_to_float32(got), [1.75, 2.0])


def test_scatter_elements_negative_indices_and_mul() -> None:
    node = Node("ScatterElements", ["d", "i", "u"], ["y"], {"axis": 1, "reduction": "mul"})
    data = np.ones((2, 3), np.float32)
    got = k.scatter_elements(
        node, data, np.array([[-1, -1], [0, 2]], np.int64), np.full((2, 2), 3.0, np.float32)
    )
    np.testing.assert_array_equal(got, [[1, 1, 9], [3, 1, 3]])


def test_gather_nd_with_batch_dims() -> None:
    data = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    indices = np.array([[[0, 1], [2, 3]], [[1, -1], [0, 0]]], np.int64)
    node = Node("GatherND", ["d", "i"], ["y"], {"batch_dims": 1})
    got = k.gather_nd(node, data, indices)
    want = [[data[0, 0, 1], data[0, 2, 3]], [data[1, 1, 3], data[1, 0, 0]]]
    np.testing.assert_array_equal(got, want)


def test_gather_out_of_range_index_is_an_error_not_garbage() -> None:
    node = Node("Gather", ["d", "i"], ["y"], {"axis": 0})
    with pytest.raises(IndexError):
        k.gather(node, np.arange(3), np.array([3], np.int64))


# ---- casts -------------------------------------------------------------------------------------


def test_cast_to_bfloat16_rounds_to_nearest_even() -> None:
    ulp = 2.0**-7  # bfloat16 spacing just above 1.0
    flt_max = np.finfo(np.float32).max
    x = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), flt_max, np.nan], np.float32)
    node = Node("Cast", ["x"], ["y"], {"to": TensorProto.BFLOAT16})
    bits = k.cast(node, x, input_types=[TensorType(DType.FLOAT32, x.shape)])
    assert bits.dtype == np.uint16
    back = bfloat16_to_float32(bits)
    # Halfway cases go to the even neighbour: 1.0 (even) and 1 + 2 ulp (even); FLT_MAX is past
    # the halfway point between bfloat16's largest finite value and 2**128, so it becomes inf.
    np.testing.assert_array_equal(back[:4], [1.0, 1 + 2 * ulp, -1.0, np.inf])
    assert np.isnan(back[4])


def test_cast_tells_bfloat16_from_uint16_by_the_ir_type() -> None:
    bits = float32_to_bfloat16(np.array([2.5, -0.75], np.float32))
    node = Node("Cast", ["x"], ["y"], {"to": TensorProto.FLOAT})
    as_bf16 = k.cast(node, bits, input_types=[TensorType(DType.BFLOAT16, (2,))])
    as_uint16 = k.cast(node, bits, input_types=[TensorType(DType.UINT16, (2,))])
    np.testing.assert_array_equal(as_bf16, [2.5, -0.75])
    np.testing.assert_array_equal(as_uint16, bits.astype(np.float32))
    # evaluate() passes the types to typed kernels too.
    (got,) = evaluate(node, bits, input_types=[TensorType(DType.BFLOAT16, (2,))])
    np.testing.assert_array_equal(got, [2.5, -0.75])


def test_bfloat16_cast_round_trip_through_a_compiled_program() -> None:
    to_bf16 = helper.make_node("Cast", ["x"], ["h"], to=TensorProto.BFLOAT16)
    back = helper.make_node("CastLike", ["h", "x"], ["y"])
    graph = helper.make_graph(
        [to_bf16, back], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    program = nerve.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    x = np.array([1.0, 1.00390625, 3.14159], np.float32)  # 1 + 2**-8 is a tie: rounds to 1.0
    np.testing.assert_array_equal(program.run({"x": x})["y"], [1.0, 1.0, 3.140625])


def test_cast_strings_parse_and_print() -> None:
    node = Node("Cast", ["x"], ["y"], {"to": TensorProto.FLOAT})
    got = k.cast(node, np.array(["1.5", "-INF", "1e-5", "NaN"], dtype=object))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[:3], np.array([1.5, -np.inf, 1e-5], np.float32))
    assert np.isnan(got[3])
    node = Node("Cast", ["x"], ["y"], {"to": TensorProto.STRING})
    assert k.cast(node, np.array([2, -7], np.int64)).tolist() == ["2", "-7"]


# ---- Range, Dropout, OneHot, EyeLike, Trilu, ReverseSequence ----------------------------------


def test_range_counts_like_onnx_and_keeps_the_type() -> None:
    node = Node("Range", ["s", "l", "d"], ["y"])
    got = k.range_(node, np.int32(10), np.int32(4), np.int32(-3))
    np.testing.assert_array_equal(got, [10, 7])
    assert got.dtype == np.int32
    half = k.range_(node, np.float16(1), np.float16(2), np.float16(0.25))
    np.testing.assert_array_equal(half, np.array([1.0, 1.25, 1.5, 1.75], np.float16))
    assert k.range_(node, np.float32(5), np.float32(1), np.float32(1)).shape == (0,)


def test_range_of_bfloat16_constants_imports_as_a_constant() -> None:
    node = helper.make_node("Range", ["s", "l", "d"], ["y"])
    scalar: list[tuple[str, int, Sequence[int | str]]] = [
        (name, TensorProto.BFLOAT16, []) for name in ("s", "l", "d")
    ]
    model = one_node_model(node, scalar, [("y", TensorProto.BFLOAT16, ["n"])], opset=27)
    program = nerve.compile(model, constants={"s": 1.0, "l": 5.0, "d": 1.5})
    got = program.run({})["y"]
    np.testing.assert_array_equal(bfloat16_to_float32(got), [1.0, 2.5, 4.0])


def test_dropout_is_identity_at_inference_and_seeded_in_training() -> None:
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    node = Node("Dropout", ["x", "r", "t"], ["y", "m"], {"seed": 7})
    y, mask = k.dropout(node, x, np.float32(0.5), np.bool_(False))
    assert y is x and mask.all() and mask.dtype == np.bool_
    y1, m1 = k.dropout(node, x, np.float32(0.5), np.bool_(True))
    y2, m2 = k.dropout(node, x, np.float32(0.5), np.bool_(True))
    np.testing.assert_array_equal(m1, m2)  # the seed makes the mask reproducible
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, np.where(m1, x * 2, 0))
    assert y1.dtype == np.float32 and not m1.all() and m1.any()
    unseeded = Node("Dropout", ["x", "r", "t"], ["y"], {}, name="drop0")
    with pytest.raises(KernelError, match="drop0"):
        k.dropout(unseeded, x, np.float32(0.5), np.bool_(True))


def test_dropout_in_training_without_seed_is_refused_at_import() -> None:
    node = helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop1")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [helper.make_tensor("r", TensorProto.FLOAT, [], [0.3]),
         helper.make_tensor("t", TensorProto.BOOL, [], [True])],
    )  # fmt: skip
    with pytest.raises(UnsupportedAttributeError, match=r"drop1.*seed"):
        nerve.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]))


def test_one_hot_negative_and_out_of_range_indices() -> None:
    node = Node("OneHot", ["i", "d", "v"], ["y"], {"axis": 0})
    got = k.one_hot(node, np.array([-1, 0, 5], np.int64), np.float32(3), np.array([0, 9], np.int32))
    np.testing.assert_array_equal(got, [[0, 9, 0], [0, 0, 0], [9, 0, 0]])
    assert got.dtype == np.int32


def test_eye_like_bfloat16_has_the_bits_of_one() -> None:
    node = Node("EyeLike", ["x"], ["y"], {"dtype": TensorProto.BFLOAT16, "k": 1})
    got = k.eye_like(node, np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(bfloat16_to_float32(got), np.eye(2, 3, 1))


def test_trilu_with_k_on_a_stack() -> None:
    x = np.ones((2, 3, 3), np.int64)
    lower = k.trilu(Node("Trilu", ["x", "k"], ["y"], {"upper": 0}), x, np.int64(-1))
    np.testing.assert_array_equal(lower[1], np.tril(np.ones((3, 3)), -1))


def test_reverse_sequence_reverses_only_the_prefix() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)  # batch_axis 0, time_axis 1
    node = Node("ReverseSequence", ["x", "l"], ["y"], {"batch_axis": 0, "time_axis": 1})
    got = k.reverse_sequence(node, x, np.array([3, 0], np.int64))
    np.testing.assert_array_equal(got, [[2, 1, 0, 3], [4, 5, 6, 7]])


# ---- import forms ------------------------------------------------------------------------------


def test_split_num_outputs_uneven_and_opset13_equal_parts() -> None:
    for opset, outs in ((18, 3), (13, 2)):
        node = helper.make_node("Split", ["x"], [f"y{i}" for i in range(outs)], axis=0)
        if opset == 18:
            node.attribute.append(helper.make_attribute("num_outputs", outs))
        model = one_node_model(
            node, [("x", TensorProto.FLOAT, [8])],
            [(f"y{i}", TensorProto.FLOAT, ["n"]) for i in range(outs)], opset=opset,
        )
        got = nerve.compile(model).run({"x": np.arange(8, dtype=np.float32)})
        sizes = [len(got[f"y{i}"]) for i in range(outs)]
        assert sizes == ([3, 3, 2] if outs == 3 else [4, 4])


def test_compress_with_constant_condition_becomes_a_gather() -> None:
    node = helper.make_node("Compress", ["x", "c"], ["y"], axis=1)
    model = one_node_model(
        node, [("x", TensorProto.FLOAT, [2, 3]), ("c", TensorProto.BOOL, [3])],
        [("y", TensorProto.FLOAT, [2, "n"])],
    )
    program = nerve.compile(model, constants={"c": [True, False, True]})
    assert [n.op_type for n in program.graph.nodes] == ["Gather"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(program.run({"x": x})["y"], x[:, [0, 2]])


# ---- nerve.compile(constants=...) --------------------------------------------------------------


def reshape_model() -> onnx.ModelProto:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape0")
    return one_node_model(
        node, [("x", TensorProto.FLOAT, [2, 3]), ("shape", TensorProto.INT64, [2])],
        [("y", TensorProto.FLOAT, ["a", "b"])],
    )


def test_constants_bind_a_shape_input_at_compile_time() -> None:
    with pytest.raises(UnsupportedAttributeError, match="reshape0"):
        nerve.compile(reshape_model())  # the target shape is a run-time input
    program = nerve.compile(reshape_model(), constants={"shape": [3, -1]})
    assert [i.name for i in program.inputs] == ["x"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(program.run({"x": x})["y"], x.reshape(3, 2))


def test_constants_are_checked_against_the_input() -> None:
    with pytest.raises(InputError, match="not inputs"):
        nerve.compile(reshape_model(), constants={"nope": [1]})
    with pytest.raises(InputError, match="shape"):
        nerve.compile(reshape_model(), constants={"shape": [6]})  # declared as [2]
    with pytest.raises(InputError, match="exactly"):
        nerve.compile(reshape_model(), constants={"shape": [3.5, 2.0]})
    graph = nerve.runtime.load_graph(reshape_model(), constants={"shape": [6, 1]})
    with pytest.raises(InputError, match=r"ir\.Graph"):
        nerve.compile(graph, constants={"shape": [6, 1]})

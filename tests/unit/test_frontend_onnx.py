"""ONNX import: parsing, external data, opset upgrade, symbolic dims, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nerve
from nerve.errors import (
    ModelFormatError,
    ShapeError,
    UnboundDimensionError,
    UnsupportedOperatorError,
)
from nerve.frontend.onnx import load_onnx


def relu_add_model(
    dims: list = ["n", 3],  # noqa: B006 - read-only default
    opset: int = 17,
    nodes: list | None = None,
) -> onnx.ModelProto:
    bias = numpy_helper.from_array(np.array([1, 2, 3], np.float32), "bias")
    graph = helper.make_graph(
        nodes
        or [
            helper.make_node("Relu", ["x"], ["t"], name="relu0"),
            helper.make_node("Add", ["t", "bias"], ["y"], name="add0"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_path_bytes_and_proto_give_the_same_graph(tmp_path: Path) -> None:
    model = relu_add_model([2, 3])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    keys = {
        nerve.ir.structural_key(load_onnx(src))
        for src in (model, model.SerializeToString(), str(path), path)
    }
    assert len(keys) == 1


def test_float_initializers_are_params_integer_ones_constants() -> None:
    shape = numpy_helper.from_array(np.array([3, -1], np.int64), "shape")
    model = relu_add_model(
        [2, 3],
        nodes=[
            helper.make_node("Add", ["x", "bias"], ["t"]),
            helper.make_node("Reshape", ["t", "shape"], ["r"]),
            helper.make_node("Reshape", ["r", "back"], ["y"]),
        ],
    )
    model.graph.initializer.extend(
        [shape, numpy_helper.from_array(np.array([2, 3], np.int64), "back")]
    )
    g = load_onnx(model)
    assert list(g.params) == ["bias"]
    assert set(g.constants) >= {"shape", "back"}
    assert g.types["r"].shape == (3, 2)


def test_symbolic_dims_bind_by_symbol_or_by_input() -> None:
    assert load_onnx(relu_add_model(), shapes={"n": 5}).inputs[0].shape == (5, 3)
    assert load_onnx(relu_add_model(), shapes={"x": (4, 3)}).inputs[0].shape == (4, 3)


def test_unbound_dimension_names_input_axis_and_symbol() -> None:
    with pytest.raises(UnboundDimensionError) as err:
        load_onnx(relu_add_model())
    msg = str(err.value)
    assert "input 'x' axis 0 ('n')" in msg and "shapes=" in msg


def test_shape_contradicting_a_fixed_dim_is_refused() -> None:
    with pytest.raises(ShapeError, match=r"input 'x' axis 1 is fixed at 3"):
        load_onnx(relu_add_model(), shapes={"x": (2, 4)})
    with pytest.raises(ShapeError, match="rank 2"):
        load_onnx(relu_add_model(), shapes={"x": (2, 3, 1)})


def test_unknown_shape_key_is_refused() -> None:
    with pytest.raises(ShapeError, match="not inputs of the model"):
        load_onnx(relu_add_model([2, 3]), shapes={"nope": (1,)})


def test_malformed_bytes_file_and_truncation(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        load_onnx(b"\x08\x07garbage that is not protobuf\xff\xff")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(relu_add_model([2, 3]).SerializeToString()[:40])
    with pytest.raises(ModelFormatError, match=str(truncated.name)):
        load_onnx(truncated)
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelFormatError, match="cannot read a model from int"):
        load_onnx(42)  # type: ignore[arg-type]


def test_inconsistent_model_is_a_format_error() -> None:
    model = relu_add_model([2, 3])
    model.graph.node[1].input[0] = "never_defined"
    with pytest.raises(ModelFormatError, match="never_defined"):
        load_onnx(model)


def test_unsupported_ops_are_all_listed_with_node_names() -> None:
    model = relu_add_model(
        [2, 3],
        nodes=[
            helper.make_node("Relu", ["x"], ["a"], name="fine"),
            helper.make_node("NonMaxSuppression", ["a", "a"], ["b"], name="nms_1"),
            helper.make_node("Unique", ["x"], ["c"], name="uniq_1"),
            helper.make_node("Unique", ["x"], ["d"], name="uniq_2"),
            helper.make_node("Add", ["x", "bias"], ["y"], name="add"),
        ],
    )
    with pytest.raises(UnsupportedOperatorError) as err:
        load_onnx(model, shapes={})
    e = err.value
    assert e.unsupported == {"NonMaxSuppression": ["nms_1"], "Unique": ["uniq_1", "uniq_2"]}
    assert "'nms_1'" in str(e) and "'uniq_2'" in str(e)


def test_custom_domain_op_is_unsupported() -> None:
    model = relu_add_model(
        [2, 3],
        nodes=[
            helper.make_node("FusedGelu", ["x"], ["t"], name="g0", domain="com.microsoft"),
            helper.make_node("Add", ["t", "bias"], ["y"]),
        ],
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOperatorError, match=r"com\.microsoft\.FusedGelu \(nodes 'g0'\)"):
        load_onnx(model)


def test_old_opset_is_upgraded() -> None:
    model = relu_add_model([2, 3], opset=9)
    x = np.array([[-1, 0, 1], [2, -3, 4]], np.float32)
    got = nerve.compile(model).run({"x": x})["y"]
    np.testing.assert_array_equal(got, np.maximum(x, 0) + np.array([1, 2, 3], np.float32))


def test_external_data_is_loaded(tmp_path: Path) -> None:
    big = np.arange(3 * 4096, dtype=np.float32).reshape(4096, 3)[:1].reshape(3) + 0.5
    model = relu_add_model([2, 3])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(big, "bias"))
    path = tmp_path / "ext.onnx"
    onnx.save(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location="ext.data", size_threshold=0,
    )
    assert (tmp_path / "ext.data").exists()
    g = load_onnx(path)
    np.testing.assert_array_equal(g.weights["bias"], big)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelFormatError, match="external data"):
        load_onnx(path)


def test_declared_output_shape_conflict_is_reported() -> None:
    model = relu_add_model([2, 3])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]))
    with pytest.raises(ShapeError, match="output 'y'"):
        load_onnx(model)


def test_static_shape_math_is_folded() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = relu_add_model(["b", 2, 3], nodes=nodes)
    # y is [b, 6], not x's [b, 2, 3]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 6]))
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ])
    g = load_onnx(model, shapes={"b": 4})
    assert [n.op_type for n in g.nodes] == ["Reshape"]
    assert g.types["y"].shape == (4, 6)

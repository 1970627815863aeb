"""The Python builder DSL (nerve.frontend.builder) and the built-in models built with it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from nerve.errors import ModelFormatError
from nerve.frontend.builder import DEFAULT_OPSET, Builder, Tensor, as_dtype
from nerve.ir import DType, structural_key
from nerve.models import DEMO_MODELS, MODELS


def _conv_relu() -> Builder:
    b = Builder("tiny")
    x = b.input("x", "float32", (1, 3, 8, 8))
    w = b.param("w", np.ones((4, 3, 3, 3), np.float32))
    b.output(b.op("Relu", b.op("Conv", x, w, pads=[1, 1, 1, 1])), name="y")
    return b


def test_to_onnx_is_a_checked_model_with_typed_outputs() -> None:
    model = _conv_relu().to_onnx()
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    assert model.opset_import[0].version == DEFAULT_OPSET
    out = model.graph.output[0]
    assert out.name == "y"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 4, 8, 8]
    # An IR version other runtimes accept, not simply the newest one onnx knows.
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import))


def test_model_computes_what_it_says() -> None:
    model = _conv_relu().to_onnx()
    x = np.ones((1, 3, 8, 8), np.float32)
    (y,) = ReferenceEvaluator(model).run(None, {"x": x})
    # Every interior pixel sees 27 ones; corners see 2x2x3 = 12.
    assert y[0, 0, 4, 4] == 27 and y[0, 0, 0, 0] == 12


def test_to_graph_keeps_weights_as_params() -> None:
    graph = _conv_relu().to_graph()
    assert graph.input_names == ["x"] and graph.output_names == ["y"]
    assert list(graph.params) == ["w"]
    assert [n.op_type for n in graph.nodes] == ["Conv", "Relu"]


def test_symbolic_dims_bind_at_to_graph() -> None:
    b = Builder("sym")
    x = b.input("x", np.float32, ("batch", 4))
    b.output(b.op("Relu", x))
    assert b.to_graph(shapes={"batch": 3}).inputs[0].shape == (3, 4)


def test_python_numbers_become_onnx_typed_constants() -> None:
    b = Builder("consts")
    x = b.input("x", "float32", (2,))
    y = b.op("Mul", x, 0.5)  # float32, not float64: Mul needs matching types
    z = b.op("Unsqueeze", y, [0])  # int64 axes
    b.output(z)
    model = b.to_onnx()
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert sorted(types.values()) == sorted([onnx.TensorProto.FLOAT, onnx.TensorProto.INT64])
    (out,) = ReferenceEvaluator(model).run(None, {"x": np.array([2, 4], np.float32)})
    np.testing.assert_array_equal(out, [[1, 2]])


def test_const_with_explicit_dtype_and_name() -> None:
    b = Builder("c")
    c = b.const([1, 2], dtype="int32", name="pair")
    b.output(b.op("Identity", c))
    (init,) = b.to_onnx().graph.initializer
    assert init.name == "pair" and init.data_type == onnx.TensorProto.INT32


def test_scope_prefixes_params_nodes_and_values() -> None:
    b = Builder("scoped")
    x = b.input("x", "float32", (2, 2))
    with b.scope("layer0"), b.scope("fc"):
        y = b.op("MatMul", x, b.param("w", np.eye(2, dtype=np.float32)))
    b.output(y)
    model = b.to_onnx()
    assert model.graph.initializer[0].name == "layer0/fc/w"
    assert model.graph.node[0].name == "layer0/fc/MatMul"
    assert y.name == "layer0/fc/MatMul.out" == model.graph.output[0].name


def test_repeated_ops_get_unique_names() -> None:
    b = Builder("names")
    x = b.input("x", "float32", (2,))
    y = b.op("Relu", b.op("Relu", x))
    b.output(y)
    nodes = b.to_onnx().graph.node
    assert [n.name for n in nodes] == ["Relu", "Relu_1"]
    assert len({n.output[0] for n in nodes}) == 2


def test_multi_output_op_and_omitted_optional_input() -> None:
    b = Builder("topk")
    x = b.input("x", "float32", (5,))
    values, indices = b.op_outputs("TopK", x, np.array([2], np.int64), count=2)
    clipped = b.op("Clip", values, None, 0.5)  # no min, max = 0.5
    b.output(clipped, name="values")
    b.output(indices, name="indices")
    model = b.to_onnx()
    assert list(model.graph.node[1].input)[1] == ""
    out_v, out_i = ReferenceEvaluator(model).run(
        None, {"x": np.array([0.1, 0.9, 0.3, 0.7, 0.2], np.float32)}
    )
    np.testing.assert_array_equal(out_v, [0.5, 0.5])
    np.testing.assert_array_equal(out_i, [1, 3])


def test_renamed_output_can_still_be_used() -> None:
    b = Builder("reuse")
    y = b.op("Relu", b.input("x", "float32", (2,)))
    b.output(y, name="first")
    b.output(b.op("Neg", y), name="second")
    model = b.to_onnx()
    assert list(model.graph.node[1].input) == ["first"]
    first, second = ReferenceEvaluator(model).run(None, {"x": np.array([-1, 2], np.float32)})
    np.testing.assert_array_equal(first, [0, 2])
    np.testing.assert_array_equal(second, [0, -2])


def test_custom_domain_outputs_take_declared_types() -> None:
    def frobnicate() -> tuple[Builder, Tensor]:
        b = Builder("custom")
        return b, b.op("Frobnicate", b.input("x", "float32", (2,)), domain="example.ops")

    b, y = frobnicate()
    b.output(y)
    with pytest.raises(ModelFormatError, match=r"no type for output 'Frobnicate\.out'"):
        b.to_onnx()
    b, y = frobnicate()
    with pytest.raises(ModelFormatError, match="both dtype and shape"):
        b.output(y, dtype="float32")
    b.output(y, dtype="float32", shape=(2,))
    model = b.to_onnx(check=False)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21), ("example.ops", 1)]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_outputting_an_input_adds_an_identity() -> None:
    b = Builder("passthrough")
    x = b.input("x", "float32", (2,))
    b.output(x, name="same")
    b.output(b.op("Neg", x), name="neg")
    model = b.to_onnx()
    assert [o.name for o in model.graph.output] == ["same", "neg"]
    assert model.graph.node[0].op_type == "Identity"


def test_array_attributes_become_tensors() -> None:
    b = Builder("cos")
    shape = b.input("shape", "int64", (2,))
    b.output(b.op("ConstantOfShape", shape, value=np.array([7], np.int32)))
    model = b.to_onnx()
    (out,) = ReferenceEvaluator(model).run(None, {"shape": np.array([2, 3], np.int64)})
    assert out.dtype == np.int32 and out.shape == (2, 3) and (out == 7).all()


def test_as_dtype_accepts_names_numpy_and_dtype() -> None:
    assert as_dtype("bfloat16") is DType.BFLOAT16
    assert as_dtype(np.int8) is DType.INT8
    assert as_dtype(np.dtype("float16")) is DType.FLOAT16
    assert as_dtype(DType.BOOL) is DType.BOOL


# ---- errors name the culprit ---------------------------------------------------------------


def test_unknown_dtype_is_refused_by_name() -> None:
    with pytest.raises(ModelFormatError, match="'float33'"):
        Builder().input("x", "float33", (1,))


def test_duplicate_names_are_refused() -> None:
    b = Builder("dup")
    b.input("x", "float32", (1,))
    with pytest.raises(ModelFormatError, match="'x' is already used"):
        b.param("x", np.zeros(1, np.float32))


def test_model_without_outputs_is_refused() -> None:
    b = Builder("empty")
    b.input("x", "float32", (1,))
    with pytest.raises(ModelFormatError, match="no outputs"):
        b.to_onnx()


def test_tensor_of_another_builder_is_refused() -> None:
    b = Builder("b")
    with pytest.raises(ModelFormatError, match="'ghost'"):
        b.op("Relu", Tensor("ghost"))


def test_inconsistent_shapes_are_reported_with_the_node() -> None:
    b = Builder("bad")
    x = b.input("x", "float32", (2, 3))
    w = b.param("w", np.zeros((4, 5), np.float32))
    b.output(b.op("MatMul", x, w, name="proj"))
    with pytest.raises(ModelFormatError, match="proj"):
        b.to_onnx()


def test_output_declared_twice_is_refused() -> None:
    b = Builder("twice")
    y = b.op("Relu", b.input("x", "float32", (1,)))
    b.output(y)
    with pytest.raises(ModelFormatError, match="already an output"):
        b.output(y)


# ---- the built-in models -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builtin_models_are_deterministic_and_weight_independent(name: str) -> None:
    spec = MODELS[name]
    a, again, other = spec.build(seed=0), spec.build(seed=0), spec.build(seed=1)
    assert a.SerializeToString() == again.SerializeToString()
    assert a.SerializeToString() != other.SerializeToString()
    # Only the weights differ between seeds, so the structure (and the program) is shared.
    from nerve.frontend.onnx import load_onnx

    assert structural_key(load_onnx(a)) == structural_key(load_onnx(other))
    feeds = spec.inputs(seed=0)
    assert [i.name for i in a.graph.input] == list(feeds)
    outputs = ReferenceEvaluator(a).run(None, feeds)
    assert all(np.isfinite(o).all() for o in outputs)


def test_builtin_model_sizes_are_parameters() -> None:
    model = MODELS["transformer"].build(seed=0, batch=2, seq=4, dim=16, heads=2, mlp=32)
    feeds = MODELS["transformer"].inputs(seed=0, batch=2, seq=4)
    (hidden,) = ReferenceEvaluator(model).run(None, feeds)
    assert hidden.shape == (2, 4, 16)
    with pytest.raises(ValueError, match="multiple of heads"):
        MODELS["transformer"].build(dim=10, heads=4)


def test_demo_models_cover_the_advertised_ops() -> None:
    ops = {name: {n.op_type for n in MODELS[name].build().graph.node} for name in DEMO_MODELS}
    assert {"Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "Gemm"} <= ops["cnn"]
    assert {"Gather", "LayerNormalization", "Softmax", "Gelu", "MatMul"} <= ops["transformer"]

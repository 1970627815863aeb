"""End to end: graphs written with onnx.helper and with nerve's builder, compiled and run by
nerve, match the ONNX reference evaluator and (when installed) ONNX Runtime within 1e-4."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import nerve
from nerve.models import MODELS
from tests.e2e.compare import assert_close

Case = tuple[onnx.ModelProto, dict[str, np.ndarray]]


def _helper_mlp() -> Case:
    """A two-layer MLP written directly with onnx.helper (opset 13, the oldest nerve takes)."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((6, 12)).astype(np.float32)
    b1 = rng.standard_normal(12).astype(np.float32)
    w2 = rng.standard_normal((12, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Sigmoid", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "helper_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model, {"x": rng.standard_normal((3, 6)).astype(np.float32)}


def _helper_conv_block() -> Case:
    """Conv (grouped, strided, biased) + BN + Clip + AveragePool + Reshape, via onnx.helper."""
    rng = np.random.default_rng(11)
    inits = {
        "w": rng.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(8).astype(np.float32),
        "scale": rng.random(8).astype(np.float32) + 0.5,
        "bias": rng.standard_normal(8).astype(np.float32),
        "mean": rng.standard_normal(8).astype(np.float32) * 0.1,
        "var": rng.random(8).astype(np.float32) + 0.5,
        "shape": np.array([1, -1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, strides=[2, 2], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
        helper.make_node("Clip", ["n", "lo", "hi"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["y"]),
    ]
    consts = [
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    graph = helper.make_graph(
        nodes,
        "helper_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 72])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()] + consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)}


def _builtin(name: str, **sizes: int) -> Callable[[], Case]:
    spec = MODELS[name]
    return lambda: (spec.build(seed=3, **sizes), spec.inputs(seed=3, **sizes))


CASES: dict[str, Callable[[], Case]] = {
    "helper_mlp": _helper_mlp,
    "helper_conv_block": _helper_conv_block,
    "builder_cnn": _builtin("cnn", batch=2),
    "builder_transformer": _builtin("transformer", batch=2),
    "builder_mlp": _builtin("mlp"),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, onnx.ModelProto, dict[str, np.ndarray]]:
    model, feeds = CASES[request.param]()
    return request.param, model, feeds


def _names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def test_matches_reference_evaluator(case: tuple[str, onnx.ModelProto, dict]) -> None:
    _, model, feeds = case
    ours = nerve.compile(model).run(feeds)
    theirs = ReferenceEvaluator(model).run(None, feeds)
    assert_close(ours, theirs, _names(model), label="ReferenceEvaluator")


def test_matches_onnxruntime(case: tuple[str, onnx.ModelProto, dict]) -> None:
    ort = pytest.importorskip("onnxruntime")
    _, model, feeds = case
    ours = nerve.compile(model).run(feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_close(ours, session.run(None, feeds), _names(model), label="onnxruntime")


def test_program_is_reusable_and_deterministic() -> None:
    model, feeds = CASES["builder_transformer"]()
    program = nerve.compile(model)
    first = program.run(feeds)
    second = program.run(feeds)
    np.testing.assert_array_equal(first["hidden"], second["hidden"])


def test_builder_graph_compiles_directly() -> None:
    """An ir.Graph from the builder goes straight into nerve.compile."""
    from nerve.frontend.builder import Builder

    b = Builder("direct")
    x = b.input("x", "float32", ("n", 4))
    w = b.param("w", np.arange(8, dtype=np.float32).reshape(4, 2))
    b.output(b.op("Relu", b.op("MatMul", x, w)), name="y")
    program = nerve.compile(b.to_graph(shapes={"n": 2}))
    x_val = np.array([[1, 0, 0, 0], [0, -1, 0, 0]], np.float32)
    np.testing.assert_array_equal(program.run({"x": x_val})["y"], [[0, 1], [0, 0]])

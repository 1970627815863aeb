"""Program.run: results, input validation (item 7 of the foundation issue), output rules."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import nerve
from nerve.errors import InputError, OutputError


def two_output_model() -> nerve.Program:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "b"], ["y"], name="add"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3]),
        ],
        [numpy_helper.from_array(np.ones(3, np.float32), "unused_weight")],
    )
    return nerve.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.fixture(scope="module")
def program() -> nerve.Program:
    return two_output_model()


def feeds() -> dict[str, np.ndarray]:
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    return {"x": x, "b": np.array([10, 20, 30], np.float32)}


def test_io_descriptions(program: nerve.Program) -> None:
    assert [(i.name, i.shape, i.dtype) for i in program.inputs] == [
        ("x", (2, 3), "float32"),
        ("b", (3,), "float32"),
    ]
    assert [o.name for o in program.outputs] == ["y", "r"]


def test_run_computes_every_output(program: nerve.Program) -> None:
    out = program.run(feeds())
    r = np.maximum(feeds()["x"], 0)
    np.testing.assert_array_equal(out["r"], r)
    np.testing.assert_array_equal(out["y"], r + feeds()["b"])


def test_output_names_select(program: nerve.Program) -> None:
    assert list(program.run(feeds(), output_names=["r"])) == ["r"]
    with pytest.raises(OutputError, match=r"unknown outputs \['z'\]"):
        program.run(feeds(), output_names=["z"])


def test_missing_input_is_named(program: nerve.Program) -> None:
    with pytest.raises(InputError, match=r"missing inputs \['b'\]"):
        program.run({"x": feeds()["x"]})


def test_extra_input_is_named(program: nerve.Program) -> None:
    with pytest.raises(InputError, match=r"unknown inputs \['c'\]"):
        program.run({**feeds(), "c": np.zeros(1, np.float32)})


def test_wrong_shape_names_input_expected_and_got(program: nerve.Program) -> None:
    bad = {**feeds(), "x": np.zeros((3, 2), np.float32)}
    with pytest.raises(InputError, match=r"input 'x': expected shape \(2, 3\), got \(3, 2\)"):
        program.run(bad)


def test_wrong_dtype_names_input_expected_and_got(program: nerve.Program) -> None:
    bad = {**feeds(), "b": np.zeros(3, np.float64)}
    with pytest.raises(InputError, match="input 'b': expected dtype float32, got float64"):
        program.run(bad)


def test_feeds_must_be_a_mapping(program: nerve.Program) -> None:
    with pytest.raises(InputError, match="mapping"):
        program.run([feeds()["x"]])  # type: ignore[arg-type]


def test_errors_are_nerve_errors(program: nerve.Program) -> None:
    with pytest.raises(nerve.NerveError):
        program.run({})


def test_outputs_never_alias_caller_memory() -> None:
    graph = helper.make_graph(
        [],  # the output is the input itself: the program must still return its own array
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
    )
    program = nerve.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.arange(4, dtype=np.float32)
    y = program.run({"x": x})["x"]
    assert not np.shares_memory(x, y)
    np.testing.assert_array_equal(x, y)


def test_unused_weights_do_not_disturb(program: nerve.Program) -> None:
    assert "unused_weight" in program.graph.params  # kept as declared; nothing reads it

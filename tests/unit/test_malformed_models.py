"""Malformed models: whatever the bytes, loading fails with a NerveError — never a crash,
a hang, or another exception type (invariant 5).

A small valid model is corrupted many ways (truncations, byte flips, field edits that keep
the protobuf parseable but break the model), and each result is fed to nerve.compile.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nerve


def small_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Reshape", ["r", "shape"], ["y"], name="flat"),
        ],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        [w, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def compile_or_nerve_error(model: bytes | onnx.ModelProto) -> None:
    try:
        program = nerve.compile(model, cache=False)
    except nerve.NerveError:
        return
    # Some corruptions leave a valid model (a flipped bit in a weight): it must then run.
    feeds = {i.name: np.zeros(i.shape, i.numpy_dtype) for i in program.inputs}
    with contextlib.suppress(nerve.NerveError), np.errstate(all="ignore"):
        program.run(feeds)


def test_the_valid_model_compiles() -> None:
    out = nerve.compile(small_model(), cache=False).run({"x": np.ones((1, 3, 8, 8), np.float32)})
    assert out["y"].shape == (1, 256)


@pytest.mark.parametrize("cut", [0, 1, 7, 40, 100, 200, 400, -1])
def test_truncated_bytes(cut: int) -> None:
    data = small_model().SerializeToString()
    compile_or_nerve_error(data[:cut] if cut >= 0 else data[:-1])


def test_random_byte_flips() -> None:
    data = bytearray(small_model().SerializeToString())
    rng = np.random.default_rng(1)
    for _ in range(150):
        corrupted = bytearray(data)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            corrupted[pos] = int(rng.integers(0, 256))
        compile_or_nerve_error(bytes(corrupted))


def _edits() -> list[tuple[str, object]]:
    def edit(fn):  # type: ignore[no-untyped-def]
        model = small_model()
        fn(model)
        return model

    return [
        ("negative dim", edit(lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", -3))),
        ("zero-size input", edit(lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 0))),
        ("weight of wrong rank", edit(lambda m: m.graph.initializer[0].dims.__delitem__(0))),
        ("raw data too short", edit(lambda m: m.graph.initializer[0].__setattr__("raw_data", b"\0" * 8))),
        ("unknown element type", edit(lambda m: m.graph.input[0].type.tensor_type.__setattr__("elem_type", 999))),
        ("bad attribute type", edit(lambda m: m.graph.node[0].attribute[0].__setattr__("type", onnx.AttributeProto.STRING))),
        ("pads of wrong length", edit(lambda m: m.graph.node[0].attribute[0].ints.__delitem__(0))),
        ("missing node input", edit(lambda m: m.graph.node[1].input.__setitem__(0, "nowhere"))),
        ("cycle", edit(lambda m: m.graph.node[0].input.__setitem__(0, "r"))),
        ("duplicate output", edit(lambda m: m.graph.node[1].output.__setitem__(0, "c"))),
        ("no opset", edit(lambda m: m.opset_import.__delitem__(0))),
        ("future opset", edit(lambda m: m.opset_import[0].__setattr__("version", 999))),
        ("reshape to impossible shape", edit(lambda m: m.graph.initializer[1].CopyFrom(
            numpy_helper.from_array(np.array([7, -1], np.int64), "shape")))),
        ("output never produced", edit(lambda m: m.graph.output[0].__setattr__("name", "ghost"))),
        ("empty graph", edit(lambda m: m.graph.node.__delitem__(slice(None)))),
    ]


@pytest.mark.parametrize(("what", "model"), _edits(), ids=[w for w, _ in _edits()])
def test_structurally_broken_models(what: str, model: onnx.ModelProto) -> None:
    compile_or_nerve_error(model)

"""The normalize pass: constant folding, DCE, no-ops, canonical forms — and what it leaves."""

from __future__ import annotations

import numpy as np

from nerve.compiler.context import PassContext
from nerve.compiler.passes.normalize import normalize
from nerve.compiler.targets import get_target
from nerve.engines.host import evaluate
from nerve.ir import DType, Graph, verify
from tests.unit.compiler.helpers import IR, ops, rand, run


def _normalize(g: Graph, **options: object) -> PassContext:
    ctx = PassContext.new(g, get_target("host"), options, evaluate=evaluate)
    normalize(g, ctx)
    verify(g)
    return ctx


def test_folds_a_constant_subgraph() -> None:
    b = IR()
    x = b.input("x", (3,))
    c = b.op("Exp", b.const("c", np.array([0.0, 1.0, 2.0], np.float32)))
    g = b.output(b.op("Add", x, c))
    ctx = _normalize(g)
    assert ops(g) == ["Add"]
    folded = g.constants[g.nodes[0].inputs[1]]
    np.testing.assert_allclose(folded, np.exp([0.0, 1.0, 2.0]), rtol=1e-6)
    assert ctx.record.rewrites["constant_fold"] == 1


def test_never_folds_what_reads_a_weight() -> None:
    b = IR()
    x = b.input("x", (3,))
    w = b.op("Exp", b.param("w", np.ones(3, np.float32)))
    g = b.output(b.op("Add", x, w))
    _normalize(g)
    assert ops(g) == ["Exp", "Add"]


def test_folded_size_is_capped() -> None:
    b = IR()
    x = b.input("x", (64,))
    c = b.op("Exp", b.const("c", np.zeros(64, np.float32)))
    g = b.output(b.op("Add", x, c))
    _normalize(g, fold_max_elements=16)
    assert ops(g) == ["Exp", "Add"]


def test_dead_code_is_removed_and_outputs_kept() -> None:
    b = IR()
    x = b.input("x", (2,))
    b.op("Exp", x)  # nothing reads it
    g = b.output(b.op("Relu", x))
    _normalize(g)
    assert ops(g) == ["Relu"]


def test_identity_and_inference_dropout_go() -> None:
    b = IR()
    x = b.input("x", (2,))
    y = b.op("Identity", b.op("Dropout", b.op("Relu", x)))
    g = b.output(b.op("Neg", y))
    ctx = _normalize(g)
    assert ops(g) == ["Relu", "Neg"]
    assert ctx.record.rewrites == {"dropout": 1, "identity": 1}


def test_identity_writing_a_graph_output_renames_its_producer() -> None:
    b = IR()
    x = b.input("x", (2,))
    y = b.op("Identity", b.op("Relu", x))
    g = b.output(y)
    _normalize(g)
    assert ops(g) == ["Relu"] and g.nodes[0].outputs == [y]


def test_identity_of_an_input_to_an_output_stays() -> None:
    b = IR()
    g = b.output(b.op("Identity", b.input("x", (2,))))
    _normalize(g)
    assert ops(g) == ["Identity"]


def test_training_dropout_stays() -> None:
    b = IR()
    x = b.input("x", (4,))
    y = b.op("Dropout", x, b.const("ratio", np.float32(0.5)), b.const("train", np.bool_(True)))
    g = b.output(y)
    _normalize(g)
    assert ops(g) == ["Dropout"]


def test_same_type_cast_and_reshape_go_other_casts_stay() -> None:
    b = IR()
    x = b.input("x", (2, 3))
    same = b.op("Cast", x, to=DType.FLOAT32.onnx)
    kept = b.op("Reshape", same, b.const("s", np.array([2, 3])))
    g = b.output(b.op("Cast", kept, to=DType.FLOAT64.onnx))
    _normalize(g)
    assert ops(g) == ["Cast"] and g.nodes[0].attrs["to"] == DType.FLOAT64.onnx


def test_reshape_to_another_shape_stays() -> None:
    b = IR()
    g = b.output(b.op("Reshape", b.input("x", (2, 3)), b.const("s", np.array([3, 2]))))
    _normalize(g)
    assert ops(g) == ["Reshape"]


def test_neutral_arithmetic_goes_unless_it_broadcasts() -> None:
    b = IR()
    x = b.input("x", (3,))
    y = b.op("Mul", b.op("Add", x, b.const("zero", np.float32(0))), b.const("one", np.float32(1)))
    grow = b.op("Add", y, b.const("zeros", np.zeros((2, 3), np.float32)))
    g = b.output(grow)
    _normalize(g)
    assert ops(g) == ["Add"] and g.types[g.nodes[0].outputs[0]].shape == (2, 3)


def test_sub_and_div_by_constants_become_add_and_mul() -> None:
    b = IR()
    x = b.input("x", (3,))
    y = b.op("Div", b.op("Sub", x, b.const("c", np.float32(1.5))), b.const("d", np.float32(4)))
    g = b.output(y)
    feeds = {"x": rand(3)}
    before = run(g, feeds, fuse=False, fold_constants=False)
    ctx = _normalize(g)
    assert ops(g) == ["Add", "Mul"]
    assert ctx.record.rewrites["canonical_add_mul"] == 2
    np.testing.assert_allclose(run(g, feeds)[y], before[y], rtol=1e-6)


def test_div_by_a_weight_becomes_mul_by_a_reciprocal_recipe() -> None:
    b = IR()
    x = b.input("x", (3,))
    g = b.output(b.op("Div", x, b.param("w", np.float32([2, 4, 8]))))
    ctx = _normalize(g)
    assert ops(g) == ["Mul"]
    slot = g.nodes[0].inputs[1]
    recipe = ctx.book.recipes[slot]
    assert recipe.sources == ("w",) and [s.op for s in recipe.steps] == ["reciprocal"]


def test_sub_of_two_activations_is_left_alone() -> None:
    b = IR()
    g = b.output(b.op("Sub", b.input("x", (3,)), b.input("y", (3,))))
    ctx = _normalize(g)
    assert ops(g) == ["Sub"] and not ctx.record.rewrites.get("canonical_add_mul")

"""The IR: types, graph building, verification, structural key, printer."""

from __future__ import annotations

import numpy as np
import pytest

from nerve.errors import GraphError
from nerve.ir import (
    DType,
    Graph,
    Node,
    TensorType,
    format_graph,
    infer_node,
    structural_key,
    verify,
)
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16

F32 = DType.FLOAT32


def matmul_graph(
    w: np.ndarray,
    *,
    shape: tuple[int, ...] = (2, 3),
    op: str = "MatMul",
    axes: tuple[int, ...] = (1,),
    attrs: dict | None = None,
) -> Graph:
    g = Graph("m")
    g.add_input("x", TensorType(F32, shape))
    g.add_param("w", w)
    g.add_constant("axes", np.array(axes, np.int64))
    out_t = TensorType(F32, (shape[0], w.shape[1]))
    g.add_node(Node(op, ["x", "w"], ["h"], dict(attrs or {})), {"h": out_t})
    red_t = TensorType(F32, (shape[0], 1))
    g.add_node(Node("ReduceSum", ["h", "axes"], ["y"]), {"y": red_t})
    g.set_outputs(["y"])
    return g


def test_dtypes_roundtrip_onnx_and_numpy() -> None:
    for dt in DType:
        assert DType.from_onnx(dt.onnx) is dt
    assert DType.from_numpy(np.float16) is DType.FLOAT16
    assert DType.BFLOAT16.numpy == np.uint16 and DType.BFLOAT16.itemsize == 2


def test_bfloat16_rounds_to_nearest_even() -> None:
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf], np.float32)
    bits = float32_to_bfloat16(x)
    back = bfloat16_to_float32(bits)
    # 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
    assert back.tolist() == [1.0, 1.0, 1.015625, -2.5, np.inf]
    assert np.isnan(bfloat16_to_float32(float32_to_bfloat16(np.array([np.nan], np.float32))))[0]


def test_tensor_type_properties() -> None:
    t = TensorType(DType.FLOAT16, [2, 3])  # a list is normalised to a tuple
    assert t.shape == (2, 3) and t.numel == 6 and t.nbytes == 12 and str(t) == "float16[2,3]"


def test_verify_accepts_a_good_graph() -> None:
    verify(matmul_graph(np.ones((3, 4), np.float32)))


def test_verify_rejects_out_of_order_nodes() -> None:
    g = matmul_graph(np.ones((3, 4), np.float32))
    g.nodes.reverse()
    with pytest.raises(GraphError, match="not defined before it"):
        verify(g)


def test_verify_rejects_dangling_value() -> None:
    g = matmul_graph(np.ones((3, 4), np.float32))
    g.nodes[1].inputs[0] = "ghost"
    with pytest.raises(GraphError, match="'ghost'"):
        verify(g)


def test_verify_rejects_unknown_op_and_missing_output() -> None:
    g = matmul_graph(np.ones((3, 4), np.float32))
    g.nodes[0].op_type = "NoSuchOp"
    with pytest.raises(GraphError, match="unknown op 'NoSuchOp'"):
        verify(g)
    g = matmul_graph(np.ones((3, 4), np.float32))
    g.nodes.pop()
    with pytest.raises(GraphError, match="never produced"):
        verify(g)


def test_conflicting_redeclaration_is_refused() -> None:
    g = Graph()
    g.add_input("x", TensorType(F32, (1,)))
    with pytest.raises(GraphError, match="declared twice"):
        g.add_constant("x", np.zeros((2,), np.int64))


class TestStructuralKey:
    def test_same_structure_other_weights_same_key(self) -> None:
        rng = np.random.default_rng(0)
        a = matmul_graph(rng.standard_normal((3, 4)).astype(np.float32))
        b = matmul_graph(rng.standard_normal((3, 4)).astype(np.float32))
        assert structural_key(a) == structural_key(b)

    def test_renaming_an_intermediate_keeps_the_key(self) -> None:
        a = matmul_graph(np.ones((3, 4), np.float32))
        b = matmul_graph(np.ones((3, 4), np.float32))
        b.nodes[0].outputs[0] = "renamed"
        b.nodes[1].inputs[0] = "renamed"
        b.types["renamed"] = b.types.pop("h")
        assert structural_key(a) == structural_key(b)

    @pytest.mark.parametrize(
        "change",
        [
            "op",
            "attribute",
            "shape",
            "dtype",
            "constant",
            "topology",
            "param_name",
            "param_shape",
            "extra",
        ],
    )
    def test_any_structural_change_changes_the_key(self, change: str) -> None:
        w = np.ones((3, 4), np.float32)
        base = matmul_graph(w)
        extra = None
        if change == "op":
            other = matmul_graph(w, op="Gemm")
        elif change == "attribute":
            other = matmul_graph(w, op="Gemm", attrs={"alpha": 2.0})
            base = matmul_graph(w, op="Gemm", attrs={"alpha": 1.0})
        elif change == "shape":
            other = matmul_graph(w, shape=(5, 3))
        elif change == "dtype":
            other = matmul_graph(w)
            other.inputs[0] = other.value("x")
            other.types["x"] = TensorType(DType.FLOAT16, (2, 3))
            other.inputs = [other.value("x")]
        elif change == "constant":
            other = matmul_graph(w, axes=(-1,))
        elif change == "topology":
            other = matmul_graph(w)
            other.nodes[1].inputs[0] = "x"
        elif change == "param_name":
            other = matmul_graph(w)
            other.params["w2"] = other.params.pop("w")
            other.nodes[0].inputs[1] = "w2"
        elif change == "param_shape":
            other = matmul_graph(np.ones((3, 5), np.float32))
        else:
            other, extra = matmul_graph(w), {"target": "cpu"}
        assert structural_key(base) != structural_key(other, extra)

    def test_attribute_int_and_float_differ(self) -> None:
        w = np.ones((3, 4), np.float32)
        a = matmul_graph(w, op="Gemm", attrs={"alpha": 1})
        b = matmul_graph(w, op="Gemm", attrs={"alpha": 1.0})
        assert structural_key(a) != structural_key(b)


def test_infer_node_uses_constant_inputs_for_shapes() -> None:
    node = Node("Reshape", ["x", "s"], ["y"], name="r")
    types = {"x": TensorType(F32, (2, 3, 4)), "s": TensorType(DType.INT64, (2,))}
    (out,) = infer_node(node, types, {"s": np.array([4, -1], np.int64)})
    assert out == TensorType(F32, (4, 6))
    # Without the constant, the shape cannot be known statically.
    (unknown,) = infer_node(node, types, {})
    assert unknown is None


def test_printer_lists_params_constants_and_nodes() -> None:
    text = format_graph(matmul_graph(np.ones((3, 4), np.float32)))
    assert "param w: float32[3,4]" in text
    assert "const axes" in text
    assert "MatMul(x, w)" in text and "ReduceSum(h, axes)" in text


def test_constant_graph_outputs_are_part_of_the_key() -> None:
    # A fully folded graph's output is a constant: two such graphs with different values
    # must never share a key (and so a cached program).
    def folded(values: list[int]) -> Graph:
        g = Graph("folded")
        g.add_input("x", TensorType(F32, (3, 4, 5)))
        g.add_constant("y", np.array(values, np.int64))
        g.set_outputs(["y"])
        return g

    assert structural_key(folded([4, 5])) != structural_key(folded([3, 4]))
    assert structural_key(folded([4, 5])) == structural_key(folded([4, 5]))

"""The precision and layout passes: what they rewrite, what they leave, weights as recipes."""

from __future__ import annotations

import numpy as np
import pytest

from nerve.compiler import compile as compile_plan
from nerve.compiler.bake import run_recipes
from nerve.compiler.context import PassContext
from nerve.compiler.passes.layout import layout
from nerve.compiler.passes.precision import precision
from nerve.compiler.targets import get_target
from nerve.compiler.targets.cpu import target as cpu_target
from nerve.errors import TargetError
from nerve.ir import DType, Graph, verify
from nerve.ir.dtypes import bfloat16_to_float32
from tests.unit.compiler.helpers import IR, assert_fused_matches, ops, rand


def _mlp() -> Graph:
    b = IR("mlp")
    x = b.input("x", (2, 4))
    h = b.op("Relu", b.op("MatMul", x, b.param("w1", rand(4, 3))))
    return b.output(b.op("MatMul", h, b.param("w2", rand(3, 2, seed=1))))


def test_native_precision_changes_nothing() -> None:
    g = _mlp()
    ctx = PassContext.new(g, get_target("host"))
    precision(g, ctx)
    assert ops(g) == ["MatMul", "Relu", "MatMul"] and not ctx.record.rewrites


def test_fp16_policy_casts_at_the_boundary_and_weights_by_recipe() -> None:
    g = _mlp()
    ctx = PassContext.new(g, get_target("ane"))
    precision(g, ctx)
    verify(g)
    assert ops(g) == ["Cast", "MatMul", "Relu", "MatMul", "Cast"]
    inner = [n for n in g.nodes if n.op_type != "Cast"]
    assert all(g.types[n.outputs[0]].dtype is DType.FLOAT16 for n in inner)
    assert g.types["x"].dtype is DType.FLOAT32 and g.outputs[0].dtype is DType.FLOAT32
    casts = [r for r in ctx.book.recipes.values() if r.steps[-1].op == "cast"]
    assert sorted(r.sources for r in casts) == [("w1",), ("w2",)]
    assert ctx.record.rewrites["weight_cast"] == 2 and ctx.record.rewrites["cast_pair"] >= 1


def test_bf16_policy_converts_only_its_ops() -> None:
    g = _mlp()
    target = cpu_target(features=("avx2", "avx512f", "avx512_bf16"))
    plan = compile_plan(g, target, {"precision": "bf16", "fuse": False})
    graph = plan.graph
    # bf16 operands, float32 accumulation: each MatMul becomes a FusedMatMul marked
    # operands=bfloat16 that reads its activation as it is (the kernel rounds it) and its
    # weight from a bfloat16 slot, and still writes float32, as AMX / AVX512-BF16 do.
    assert ops(graph) == ["nerve.FusedMatMul", "Relu", "nerve.FusedMatMul"]
    matmuls = [n for n in graph.nodes if n.op_type == "FusedMatMul"]
    for mm in matmuls:
        assert mm.attrs["operands"] == "bfloat16" and mm.attrs["gemm"] == 0
        assert graph.types[mm.inputs[0]].dtype is DType.FLOAT32
        assert mm.inputs[1] in graph.params
        assert graph.types[mm.inputs[1]].dtype is DType.BFLOAT16
        assert graph.types[mm.outputs[0]].dtype is DType.FLOAT32
    assert matmuls[0].inputs[0] == "x"
    relu = next(n for n in graph.nodes if n.op_type == "Relu")
    assert graph.types[relu.outputs[0]].dtype is DType.FLOAT32
    baked = run_recipes(plan, graph.weights)
    slot = matmuls[0].inputs[1]
    assert baked[slot].dtype == np.uint16
    np.testing.assert_allclose(bfloat16_to_float32(baked[slot]), plan.graph.weights["w1"],
                               rtol=1e-2)


def test_bf16_needs_a_cpu_with_bf16() -> None:
    with pytest.raises(TargetError, match="avx512_bf16"):
        compile_plan(_mlp(), cpu_target(features=("avx2",)), {"precision": "bf16"})


def test_transposes_merge_and_cancel() -> None:
    b = IR()
    x = b.input("x", (2, 3, 4))
    t = b.op("Transpose", b.op("Transpose", x, perm=(1, 0, 2)), perm=(0, 2, 1))
    back = b.op("Transpose", b.op("Transpose", t, perm=(1, 0, 2)), perm=(1, 0, 2))
    g = b.output(b.op("Relu", back))
    ctx = PassContext.new(g, get_target("host"))
    layout(g, ctx)
    verify(g)
    assert ops(g) == ["Transpose", "Relu"]
    assert g.nodes[0].attrs["perm"] == (1, 2, 0)
    assert ctx.record.rewrites == {"transpose_merge": 3}
    x = rand(2, 3, 4)
    want = x.transpose(1, 0, 2).transpose(0, 2, 1).transpose(1, 0, 2).transpose(1, 0, 2)
    np.testing.assert_array_equal(x.transpose(1, 2, 0), want)


def test_inverse_transposes_cancel() -> None:
    b = IR()
    x = b.input("x", (2, 3, 4))
    g = b.output(b.op("Relu", b.op("Transpose", b.op("Transpose", x, perm=(1, 2, 0)),
                                   perm=(2, 0, 1))))
    ctx = PassContext.new(g, get_target("host"))
    layout(g, ctx)
    assert ops(g) == ["Relu"] and ctx.record.rewrites == {"transpose_merge": 1,
                                                          "transpose_cancel": 1}


def test_a_lone_transpose_of_an_activation_stays() -> None:
    b = IR()
    g = b.output(b.op("Transpose", b.input("x", (2, 3)), perm=(1, 0)))
    layout(g, PassContext.new(g, get_target("host")))
    assert ops(g) == ["Transpose"]


def _transposed_weights() -> Graph:
    b = IR()
    x = b.input("x", (2, 4))
    y = b.op("MatMul", x, b.op("Transpose", b.param("w", rand(3, 4)), perm=(1, 0)))
    return b.output(b.op("Gemm", y, b.param("v", rand(5, 3, seed=1)), transB=1))


def test_weight_transposes_become_recipes() -> None:
    plan = compile_plan(_transposed_weights(), "host", {"fuse": False})
    assert ops(plan.graph) == ["MatMul", "Gemm"]
    assert plan.graph.nodes[1].attrs["transB"] == 0
    packed = plan.transformed_slots()
    assert sorted(r.sources for r in packed.values()) == [("v",), ("w",)]
    assert all(r.steps[-1].op == "transpose" for r in packed.values())
    assert_fused_matches(_transposed_weights(), {"x": rand(2, 4)})


def test_every_tensor_gets_a_layout() -> None:
    b = IR()
    x = b.input("x", (1, 2, 4, 4))
    g = b.output(b.op("Relu", b.op("Conv", x, b.param("w", rand(3, 2, 1, 1)))))
    plan = compile_plan(g, "host", {"fuse": False})
    assert set(plan.layouts) >= set(plan.graph.types) - set(plan.graph.weights) - {"w"}
    assert plan.layouts["w"] == "OIHW" and plan.layouts["x"] == "NCHW"
    ane = compile_plan(g, "ane", {"check": False, "fuse": False})
    assert ane.layouts["x"] == "1C1S"
    assert any("[1, C, 1, S]" in n for n in ane.report.notes)

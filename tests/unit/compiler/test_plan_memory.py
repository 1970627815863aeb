"""The plan pass (partition, recipes) and the memory plan, with a property test over DAGs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerve.compiler import compile as compile_plan
from nerve.compiler.bake import run_recipes
from nerve.compiler.memplan import conflicts, plan_memory
from nerve.compiler.targets.cpu import target as cpu_target
from nerve.errors import CompileError
from nerve.ir import DType, Node, TensorType
from tests.unit.compiler.helpers import IR, rand


def test_unsupported_nodes_fall_back_to_host_segments() -> None:
    b = IR()
    x = b.input("x", (2, 3))
    y = b.op("Relu", b.op("Relu", x))
    g = b.output(b.op("Exp", b.op("Atan", y)))
    plan = compile_plan(g, cpu_target(features=("avx2",)), {"fuse": False})
    assert [(s.engine, [n.op_type for n in s.nodes]) for s in plan.segments] == [
        ("native", ["Relu", "Relu"]), ("host", ["Atan"]), ("native", ["Exp"]),
    ]
    assert plan.report.rewrites()["host_fallback"] == 1
    with pytest.raises(CompileError, match="Atan"):
        compile_plan(g, cpu_target(features=("avx2",)), {"fallback": False})


def test_plan_has_a_recipe_for_every_weight_slot() -> None:
    b = IR()
    x = b.input("x", (2, 4))
    y = b.op("Gemm", x, b.param("w", rand(3, 4)), b.param("unused_but_kept", rand(3)),
             transB=1)
    b.param("never_read", rand(2))
    g = b.output(y)
    plan = compile_plan(g)
    assert set(plan.bake_recipes) == set(plan.graph.params)
    assert set(plan.params) == {"w", "unused_but_kept", "never_read"}
    baked = run_recipes(plan, g.weights)
    assert baked["never_read"] is g.weights["never_read"]  # a plain Param is not copied
    slot = plan.graph.nodes[0].inputs[1]
    np.testing.assert_array_equal(baked[slot], g.weights["w"].T)


def test_a_chain_reuses_one_buffer() -> None:
    t = TensorType(DType.FLOAT32, (64,))
    nodes = [Node("Exp", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"]) for i in range(6)]
    types = {"x": t, **{f"t{i}": t for i in range(6)}}
    plan = plan_memory(nodes, types, external={"x", "t5"})
    assert plan.total_bytes == 5 * 256 and plan.arena_bytes == 256
    assert all(kind == "in_place" for _, _, kind in plan.in_place)
    no_reuse = plan_memory(nodes, types, external={"x", "t5"}, in_place=False)
    assert no_reuse.arena_bytes == 2 * 256 and not conflicts(no_reuse)


def test_an_input_read_later_is_not_overwritten_in_place() -> None:
    t = TensorType(DType.FLOAT32, (16,))
    nodes = [Node("Exp", ["x"], ["a"]), Node("Relu", ["a"], ["b"]), Node("Add", ["a", "b"], ["c"])]
    plan = plan_memory(nodes, {"x": t, "a": t, "b": t, "c": t}, external={"x", "c"})
    assert plan.buffers["a"].offset != plan.buffers["b"].offset
    assert not conflicts(plan)


# ---- the property: no two simultaneously live tensors share bytes --------------------------

_OPS = ["Relu", "Add", "Reshape", "MatMul", "Exp"]


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[Node], dict[str, TensorType], set[str]]:
    n_inputs = draw(st.integers(1, 3))
    sizes = {f"in{i}": draw(st.integers(1, 40)) for i in range(n_inputs)}
    values = list(sizes)
    nodes = []
    for i in range(draw(st.integers(1, 24))):
        op = draw(st.sampled_from(_OPS))
        arity = 2 if op in ("Add", "MatMul") else 1
        ins = [draw(st.sampled_from(values)) for _ in range(arity)]
        out = f"v{i}"
        sizes[out] = draw(st.integers(1, 40)) if op == "MatMul" else sizes[ins[0]]
        nodes.append(Node(op, ins, [out], name=f"n{i}"))
        values.append(out)
    produced = [n.outputs[0] for n in nodes]
    outputs = set(draw(st.lists(st.sampled_from(produced), max_size=3)))
    types = {v: TensorType(DType.FLOAT32, (s,)) for v, s in sizes.items()}
    return nodes, types, set(list(sizes)[:n_inputs]) | outputs


@settings(max_examples=150, deadline=None)
@given(dags(), st.booleans())
def test_no_two_live_tensors_overlap(dag: tuple, in_place: bool) -> None:
    nodes, types, external = dag
    plan = plan_memory(nodes, types, external=external, in_place=in_place)
    assert conflicts(plan) == []
    for buf in plan.buffers.values():
        assert buf.offset >= 0 and buf.end <= plan.arena_bytes and buf.offset % 64 == 0
        if buf.kind == "in_place":
            # Everything that shared those bytes before is dead once this tensor is written.
            earlier = [b for b in plan.buffers.values()
                       if b.group == buf.group and b.first < buf.first]
            assert all(b.last <= buf.first for b in earlier)
            assert nodes[buf.first].op_type in ("Relu", "Add", "Exp")
        elif buf.kind == "view":
            assert nodes[buf.first].op_type == "Reshape"
    assert plan.peak_live_bytes <= plan.arena_bytes <= plan.total_bytes
    intermediates = {n.outputs[0] for n in nodes} - external
    assert set(plan.buffers) == intermediates

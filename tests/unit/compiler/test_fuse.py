"""The fuse pass: each fusion on a tiny graph, what it must leave alone, and fused == unfused."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nerve
from nerve.compiler import compile as compile_plan
from nerve.compiler.context import PassContext
from nerve.compiler.passes.fuse import fuse
from nerve.compiler.passes.normalize import normalize
from nerve.compiler.targets import get_target
from nerve.engines.host import evaluate
from nerve.ir import Graph, verify
from tests.unit.compiler.helpers import IR, assert_fused_matches, ops, rand


def _fuse(g: Graph, target: str = "host") -> PassContext:
    ctx = PassContext.new(g, get_target(target), evaluate=evaluate)
    normalize(g, ctx)
    fuse(g, ctx)
    verify(g)
    return ctx


def _conv_bn(with_bias: bool = True) -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    b = IR("conv_bn")
    x = b.input("x", (2, 3, 6, 6))
    conv_in = [x, b.param("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))]
    if with_bias:
        conv_in.append(b.param("cb", rng.standard_normal(4).astype(np.float32)))
    y = b.op("Conv", *conv_in, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    bn = b.op(
        "BatchNormalization", y,
        b.param("gamma", (rng.random(4) + 0.5).astype(np.float32)),
        b.param("beta", rng.standard_normal(4).astype(np.float32)),
        b.param("mean", rng.standard_normal(4).astype(np.float32)),
        b.param("var", (rng.random(4) + 0.5).astype(np.float32)),
        epsilon=1e-3,
    )
    return b.output(b.op("Relu", bn)), {"x": rand(2, 3, 6, 6)}


@pytest.mark.parametrize("with_bias", [True, False])
def test_batchnorm_folds_into_conv_as_a_recipe(with_bias: bool) -> None:
    g, feeds = _conv_bn(with_bias)
    plan = compile_plan(g, "host", evaluate=evaluate)
    assert "BatchNormalization" not in ops(plan.graph)
    assert ops(plan.graph) == ["nerve.FusedConv"]
    folds = [r for r in plan.bake_recipes.values() if r.steps and r.steps[0].op == "bn_fold_weight"]
    assert len(folds) == 1 and folds[0].sources == ("w", "gamma", "var")
    bias = [r for r in plan.bake_recipes.values() if r.steps and r.steps[0].op == "bn_fold_bias"]
    assert set(bias[0].sources) == {"gamma", "beta", "mean", "var"} | ({"cb"} if with_bias else set())
    assert plan.report.rewrites()["bn_fold"] == 1
    assert_fused_matches(g, feeds)


def test_batchnorm_fold_keeps_the_callers_weights_untouched() -> None:
    g, feeds = _conv_bn()
    before = {k: v.copy() for k, v in g.weights.items()}
    nerve.compile(g).run(feeds)
    assert set(g.weights) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(g.weights[k], v)


def test_batchnorm_without_a_conv_is_not_folded() -> None:
    b = IR()
    x = b.input("x", (1, 2, 3, 3))
    ps = [b.param(n, np.ones(2, np.float32)) for n in ("s", "bb", "m", "v")]
    g = b.output(b.op("BatchNormalization", x, *ps))
    ctx = _fuse(g)
    assert ops(g) == ["BatchNormalization"] and "bn_fold" not in ctx.record.rewrites


def test_conv_on_the_ane_keeps_its_bias_apart() -> None:
    g, _ = _conv_bn(with_bias=False)
    _fuse(g, "ane")
    assert ops(g) == ["Conv", "Add", "Relu"] and len(g.nodes[0].inputs) == 2


def _conv_add() -> Graph:
    b = IR()
    x = b.input("x", (1, 2, 4, 4))
    y = b.op("Conv", x, b.param("w", rand(3, 2, 1, 1)))
    return b.output(b.op("Add", y, b.param("b", rand(3, 1, 1, seed=2))))


def test_per_channel_add_becomes_the_conv_bias() -> None:
    g = _conv_add()
    ctx = _fuse(g)
    assert ops(g) == ["Conv"] and ctx.record.rewrites["conv_bias"] == 1
    assert_fused_matches(_conv_add(), {"x": rand(1, 2, 4, 4)})


def test_an_add_that_is_not_per_channel_is_not_a_bias() -> None:
    b = IR()
    x = b.input("x", (1, 2, 4, 4))
    y = b.op("Conv", x, b.param("w", rand(3, 2, 1, 1)))
    g = b.output(b.op("Add", y, b.param("b", rand(1, 1, 4, seed=2))))
    ctx = _fuse(g)
    assert "conv_bias" not in ctx.record.rewrites


def _linear_relu() -> Graph:
    b = IR()
    x = b.input("x", (2, 4))
    y = b.op("Add", b.op("MatMul", x, b.param("w", rand(4, 3))), b.param("b", rand(3, seed=1)))
    return b.output(b.op("Relu", y))


def test_matmul_bias_and_activation_fuse() -> None:
    g = _linear_relu()
    ctx = _fuse(g)
    assert ops(g) == ["nerve.FusedMatMul"]
    assert ctx.record.rewrites == {"matmul_bias": 1, "epilogue": 1}
    assert g.nodes[0].attrs["epilogue"] == (("Relu", (0,), ()),)
    assert_fused_matches(_linear_relu(), {"x": rand(2, 4)})


def _gemm_tanh() -> Graph:
    b = IR()
    x = b.input("x", (2, 4))
    y = b.op("Gemm", x, b.param("w", rand(3, 4)), b.param("c", rand(3)), transB=1, alpha=0.5)
    return b.output(b.op("Tanh", y))


def test_gemm_with_activation_fuses() -> None:
    g = _gemm_tanh()
    _fuse(g)
    assert ops(g) == ["nerve.FusedMatMul"] and g.nodes[0].attrs["gemm"] == 1
    assert_fused_matches(_gemm_tanh(), {"x": rand(2, 4)})


def test_residual_add_and_relu_join_the_conv() -> None:
    b = IR()
    x = b.input("x", (1, 2, 4, 4))
    y = b.op("Conv", x, b.param("w", rand(2, 2, 3, 3)), pads=(1, 1, 1, 1))
    g = b.output(b.op("Relu", b.op("Add", y, x)))
    _fuse(g)
    assert ops(g) == ["nerve.FusedConv"]
    assert [s[0] for s in g.nodes[0].attrs["epilogue"]] == ["Add", "Relu"]
    assert_fused_matches(g, {"x": rand(1, 2, 4, 4)})


def test_conv_read_twice_keeps_its_activation_apart() -> None:
    b = IR()
    x = b.input("x", (1, 2, 4, 4))
    y = b.op("Conv", x, b.param("w", rand(2, 2, 1, 1)))
    g = b.output(b.op("Relu", y), y)
    _fuse(g)
    assert ops(g) == ["Conv", "Relu"]


def test_elementwise_chain_becomes_one_node() -> None:
    b = IR()
    x, z = b.input("x", (2, 3)), b.input("z", (3,))
    y = b.op("Relu", b.op("Mul", b.op("Exp", x), z))
    g = b.output(b.op("Neg", y))
    ctx = _fuse(g)
    assert ops(g) == ["nerve.FusedElementwise"]
    assert [s[0] for s in g.nodes[0].attrs["program"]] == ["Exp", "Mul", "Relu", "Neg"]
    assert ctx.record.rewrites["elementwise_chain"] == 3
    assert_fused_matches(g, {"x": rand(2, 3), "z": rand(3, seed=3)})


def test_chain_stops_at_a_value_read_elsewhere() -> None:
    b = IR()
    x = b.input("x", (3,))
    e = b.op("Exp", x)
    g = b.output(b.op("Neg", e), e)
    _fuse(g)
    assert ops(g) == ["Exp", "Neg"]


def _attention(scale_in_weight: bool = False, axis: int = -1) -> Graph:
    b = IR("attn")
    q, k, v = (b.input(n, (1, 2, 4, 8)) for n in ("q", "k", "v"))
    mask = b.input("mask", (1, 1, 1, 4))
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=(0, 1, 3, 2)))
    if scale_in_weight:
        scaled = b.op("Div", scores, b.param("d", np.float32(math.sqrt(8))))
    else:
        scaled = b.op("Mul", scores, b.const("s", np.float32(1 / math.sqrt(8))))
    probs = b.op("Softmax", b.op("Add", scaled, mask), axis=axis)
    return b.output(b.op("MatMul", probs, v))


def _attention_feeds() -> dict[str, np.ndarray]:
    feeds = {n: rand(1, 2, 4, 8, seed=i) for i, n in enumerate("qkv")}
    feeds["mask"] = np.array([[[[0, 0, 0, -1e4]]]], np.float32)
    return feeds


@pytest.mark.parametrize("scale_in_weight", [False, True])
def test_attention_pattern_fuses(scale_in_weight: bool) -> None:
    g = _attention(scale_in_weight)
    ctx = _fuse(g)
    assert ops(g) == ["Transpose", "nerve.Attention"]
    assert ctx.record.rewrites["attention"] == 1
    assert_fused_matches(_attention(scale_in_weight), _attention_feeds())


def test_softmax_over_another_axis_is_not_attention() -> None:
    g = _attention(axis=2)
    _fuse(g)
    assert "nerve.Attention" not in ops(g)


def _layer_norm(axes: tuple[int, ...] = (-1,), rms: bool = False) -> Graph:
    b = IR("ln")
    x = b.input("x", (2, 3, 8))
    a = b.const("axes", np.array(axes))
    d = x if rms else b.op("Sub", x, b.op("ReduceMean", x, a))
    var = b.op("ReduceMean", b.op("Pow", d, b.const("two", np.float32(2))), a)
    den = b.op("Sqrt", b.op("Add", var, b.const("eps", np.float32(1e-5))))
    n = b.op("Div", d, den)
    y = b.op("Mul", n, b.param("gamma", rand(8, seed=5)))
    if not rms:
        y = b.op("Add", y, b.param("beta", rand(8, seed=6)))
    return b.output(y)


@pytest.mark.parametrize("rms", [False, True])
def test_norm_patterns_fuse_with_their_affine(rms: bool) -> None:
    g = _layer_norm(rms=rms)
    ctx = _fuse(g)
    op = "nerve.RMSNorm" if rms else "nerve.LayerNorm"
    assert ops(g) == [op]
    assert ctx.record.rewrites["rms_norm" if rms else "layer_norm"] == 1
    assert all(g.nodes[0].inputs)
    assert_fused_matches(_layer_norm(rms=rms), {"x": rand(2, 3, 8)})


def test_mean_over_a_leading_axis_is_not_layer_norm() -> None:
    g = _layer_norm(axes=(0,))
    _fuse(g)
    assert "nerve.LayerNorm" not in ops(g)


def _gelu(tanh: bool = False, half: float = 0.5) -> Graph:
    b = IR("gelu")
    x = b.input("x", (2, 5))
    c = lambda name, v: b.const(name, np.float32(v))  # noqa: E731
    if tanh:
        cube = b.op("Pow", x, c("three", 3))
        inner = b.op("Add", x, b.op("Mul", cube, c("k", 0.044715)))
        t = b.op("Tanh", b.op("Mul", inner, c("s", math.sqrt(2 / math.pi))))
        one_plus = b.op("Add", t, c("one", 1))
    else:
        one_plus = b.op("Add", b.op("Erf", b.op("Div", x, c("r2", math.sqrt(2)))), c("one", 1))
    return b.output(b.op("Mul", b.op("Mul", x, c("half", half)), one_plus))


@pytest.mark.parametrize("tanh", [False, True])
def test_gelu_patterns_become_gelu(tanh: bool) -> None:
    g = _gelu(tanh)
    _fuse(g)
    assert ops(g) == ["Gelu"]
    assert g.nodes[0].attrs["approximate"] == ("tanh" if tanh else "none")
    assert_fused_matches(_gelu(tanh), {"x": rand(2, 5)})


def test_gelu_with_a_wrong_constant_is_left_alone() -> None:
    g = _gelu(half=0.6)
    _fuse(g)
    assert "Gelu" not in ops(g)


def test_fuse_false_and_target_fusion_lists_are_honoured() -> None:
    b = IR()
    x = b.input("x", (2, 3))
    g = b.output(b.op("Neg", b.op("Exp", x)))
    plan = compile_plan(g, "host", {"fuse": False})
    assert ops(plan.graph) == ["Exp", "Neg"]
    assert ops(compile_plan(g, "ane", {"check": False}).graph).count("nerve.FusedElementwise") == 0


def _conv_bn_then_bias() -> Graph:
    g, _ = _conv_bn()
    relu = g.nodes[-1]
    g.nodes.remove(relu)  # conv -> bn -> (+ per-channel constant) -> relu
    b = IR()
    b.g = g
    shifted = b.op("Add", relu.inputs[0], b.const("shift", rand(4, 1, 1, seed=9)))
    g.set_outputs([b.op("Relu", shifted)])
    g.remove_unused()
    return g


def test_recipes_chain_through_derived_slots() -> None:
    plan = compile_plan(_conv_bn_then_bias(), "host", evaluate=evaluate)
    assert ops(plan.graph) == ["nerve.FusedConv"]
    steps = sorted(r.steps[0].op for r in plan.transformed_slots().values())
    assert steps == ["add", "bn_fold_bias", "bn_fold_weight"]
    assert_fused_matches(_conv_bn_then_bias(), {"x": rand(2, 3, 6, 6)})

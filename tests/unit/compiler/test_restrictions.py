"""Every restriction of every catalog: one graph that triggers it, one that does not; fixes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from nerve.compiler.check import check_graph
from nerve.compiler.restrictions import CLASSES, SEVERITIES, catalog
from nerve.compiler.targets import Limits, Target, get_target
from nerve.compiler.targets.cpu import target as cpu_target
from nerve.engines.host import evaluate
from nerve.ir import DType, Graph
from tests.unit.compiler.helpers import IR, rand, run

F16 = DType.FLOAT16
BIG = (1, 768, 1, 64)  # 98,304 B in fp16: above the ANE's minimum surface


def _unary(op: str = "Relu", shape: tuple[int, ...] = BIG, dtype: DType = F16, **attrs: object
           ) -> Graph:
    b = IR()
    return b.output(b.op(op, b.input("x", shape, dtype), **attrs))


def _binary(a_shape: tuple[int, ...] = BIG, b_shape: tuple[int, ...] = BIG,
            names: tuple[str, str] = ("a", "b"), dtype: DType = F16, op: str = "Add",
            **attrs: object) -> Graph:
    b = IR()
    x, y = b.input(names[0], a_shape, dtype), b.input(names[1], b_shape, dtype)
    return b.output(b.op(op, x, y, **attrs))


def _two_outputs(small: bool = False, order: tuple[str, str] = ("a", "z")) -> Graph:
    b = IR()
    x = b.input("x", BIG, F16)
    first = b.op("Relu", x, name=order[0])
    second = (b.op("ReduceMean", x, b.const("ax", np.array([3])), name=order[1]) if small
              else b.op("Neg", x, name=order[1]))
    return b.output(first, second)


def _conv(c_out: int = 64, bias: bool = False) -> Graph:
    b = IR()
    x = b.input("x", (1, 8, 1, 2048), F16)
    inputs = [x, b.param("w", np.zeros((c_out, 8, 1, 1), np.float16))]
    if bias:
        inputs.append(b.param("b", np.zeros(c_out, np.float16)))
    return b.output(b.op("Conv", *inputs))


def _rsqrt(recip: bool = True) -> Graph:
    b = IR()
    s = b.op("Sqrt", b.input("x", BIG, F16))
    return b.output(b.op("Reciprocal", s) if recip else s)


def _layer_norm() -> Graph:
    b = IR()
    x = b.input("x", BIG, F16)
    return b.output(b.op("LayerNormalization", x, b.param("g", np.ones(64, np.float16)),
                         axis=-1))


def _attention(causal: int) -> Graph:
    b = IR()
    q, k, v = (b.input(n, (1, 2, 64, 384), F16) for n in "qkv")
    return b.output(b.op("Attention", q, k, v, is_causal=causal))


def _weights(n: int) -> Graph:
    b = IR()
    y = b.input("x", BIG, F16)
    for i in range(n):
        y = b.op("Mul", y, b.param(f"w{i}", np.ones((1, 768, 1, 1), np.float16)))
    return b.output(y)


def _chain(n: int) -> Graph:
    b = IR()
    y = b.input("x", BIG, F16)
    for _ in range(n):
        y = b.op("Relu", y)
    return b.output(y)


def _many_inputs(n: int) -> Graph:
    b = IR()
    names = [b.input(f"x{i:02d}", BIG, F16) for i in range(n)]
    y = names[0]
    for other in names[1:]:
        y = b.op("Add", y, other)
    return b.output(y)


def _mask(value: float) -> Graph:
    b = IR()
    x = b.input("x", BIG, F16)
    mask = b.const("mask", np.where(np.arange(64) < 32, 0, value).astype(np.float16)
                   .reshape(1, 1, 1, 64))
    return b.output(b.op("Softmax", b.op("Add", x, mask), axis=-1))


def _passthrough(direct: bool) -> Graph:
    b = IR()
    x = b.input("x", BIG, F16)
    y = b.op("Relu", x)
    return b.output(y, x) if direct else b.output(y)


def _linear(weight: bool) -> Graph:
    b = IR()
    x = b.input("x", (1, 64, 768), F16)
    w = b.param("w", np.zeros((768, 768), np.float16)) if weight else b.input("w", (1, 768, 768),
                                                                             F16)
    return b.output(b.op("MatMul", x, w))


def _two_programs() -> Graph:
    b = IR()
    return b.output(b.op("Relu", b.op("Atan", b.op("Relu", b.input("x", BIG, F16)))))


def _ane_budget_1() -> Target:
    return dataclasses.replace(get_target("ane"), compile_budget=1)


Case = tuple[Callable[[], Graph], Callable[[], Graph], Callable[[], Target] | str]

ANE: dict[str, Case] = {
    "ANE-R01": (lambda: _binary(op="Concat", axis=1), lambda: _binary(), "ane"),
    "ANE-R02": (lambda: _two_outputs(small=True), lambda: _two_outputs(), "ane"),
    "ANE-R03": (lambda: _two_outputs(order=("z", "a")), lambda: _two_outputs(), "ane"),
    "ANE-R04": (lambda: _unary(shape=(1, 768, 1, 1)), lambda: _unary(), "ane"),
    "ANE-R05": (_two_programs, lambda: _unary(), _ane_budget_1),
    "ANE-R06": (lambda: _attention(1), lambda: _attention(0), "ane"),
    "ANE-R07": (lambda: _weights(1), lambda: _unary(), "ane"),
    "ANE-R08": (lambda: _conv(bias=True), lambda: _conv(), "ane"),
    "ANE-R09": (lambda: _conv(c_out=40_000), lambda: _conv(), "ane"),
    "ANE-R10": (lambda: _unary("Gelu"), lambda: _unary("Tanh"), "ane"),
    "ANE-R11": (_layer_norm, lambda: _unary(), "ane"),
    "ANE-R12": (_rsqrt, lambda: _rsqrt(recip=False), "ane"),
    "ANE-R13": (lambda: _binary(b_shape=(1, 768, 1, 1)), lambda: _binary(), "ane"),
    "ANE-R14": (lambda: _binary(names=("b", "a")), lambda: _binary(), "ane"),
    "ANE-R15": (lambda: _binary(b_shape=(1, 768, 1, 1)), lambda: _binary(), "ane"),
    "ANE-R16": (lambda: _unary(dtype=DType.FLOAT32), lambda: _unary(), "ane"),
    "ANE-R17": (lambda: _unary(shape=(768, 64)), lambda: _unary(), "ane"),
    "ANE-R18": (lambda: _unary(shape=(1, 2, 3, 4, 2048)), lambda: _unary(), "ane"),
    "ANE-R19": (lambda: _weights(17), lambda: _weights(2), "ane"),
    "ANE-R20": (lambda: _unary("Atan"), lambda: _unary(), "ane"),
    "ANE-R21": (lambda: _binary(dtype=DType.INT64), lambda: _binary(dtype=DType.INT32), "ane"),
    "ANE-R22": (lambda: _mask(-np.inf), lambda: _mask(-1e4), "ane"),
    "ANE-R23": (lambda: _unary(shape=(1, 768, 1, 32768)), lambda: _unary(), "ane"),
    "ANE-R24": (lambda: _many_inputs(17), lambda: _many_inputs(3), "ane"),
    "ANE-R25": (lambda: _passthrough(True), lambda: _passthrough(False), "ane"),
    "ANE-R26": (lambda: _linear(True), lambda: _linear(False), "ane"),
    "ANE-R27": (lambda: _chain(1), lambda: _chain(16), "ane"),
}


def _cpu(*features: str) -> Callable[[], Target]:
    return lambda: cpu_target(features=features)


def _tiny_host() -> Target:
    return dataclasses.replace(get_target("host"), limits=Limits(scratch_bytes=64))


def _two_relus() -> Graph:
    b = IR()
    return b.output(b.op("Relu", b.op("Relu", b.input("x", (64,)))))


OTHERS: dict[str, Case] = {
    "HOST-R01": (lambda: _unary("Atan", (4,), DType.FLOAT32),
                 lambda: _unary("Relu", (4,), DType.FLOAT32), "host"),
    "HOST-R02": (_two_relus, lambda: _unary("Relu", (64,), DType.FLOAT32), _tiny_host),
    "CPU-R01": (lambda: _unary("Atan", (4,), DType.FLOAT32),
                lambda: _unary("Relu", (4,), DType.FLOAT32), _cpu("avx2")),
    "CPU-R02": (lambda: _unary("Atan", (4,), DType.FLOAT32),
                lambda: _unary("Acos", (4,), DType.FLOAT32), _cpu("avx2")),
    "CPU-R03": (lambda: _unary("Relu", (4,), DType.FLOAT32),
                lambda: _unary("Relu", (4,), DType.FLOAT32), _cpu()),
    "CPU-R04": (lambda: _binary((4,), (4,), dtype=DType.BFLOAT16),
                lambda: _binary((4,), (4,), dtype=DType.FLOAT32), _cpu("avx2")),
    "CPU-R05": (lambda: _binary((2, 2), (2, 2), dtype=DType.FLOAT32, op="MatMul"),
                lambda: _binary((2, 2), (2, 2), dtype=DType.FLOAT32, op="MatMul"),
                _cpu("avx2")),
}
# CPU-R03 and CPU-R05 are about the machine, not the graph: the clean case is a better CPU.
CLEAN_TARGETS: dict[str, Callable[[], Target]] = {
    "CPU-R03": _cpu("avx2"),
    "CPU-R05": _cpu("avx2", "amx_tile"),
}


def _kernels_except_atan(op: str, domain: str) -> bool:
    return op != "Atan"


def _codes(graph: Graph, target: Target | str, fix: bool = False) -> set[str]:
    report = check_graph(graph, target, fix=fix, evaluate=evaluate,
                         supported=_kernels_except_atan)
    return {d.code for d in report.diagnostics}


def _target(spec: Callable[[], Target] | str) -> Target | str:
    return spec if isinstance(spec, str) else spec()


@pytest.mark.parametrize("code", sorted(ANE) + sorted(OTHERS))
def test_restriction_triggers_and_stays_quiet(code: str) -> None:
    trigger, clean, spec = {**ANE, **OTHERS}[code]
    assert code in _codes(trigger(), _target(spec))
    assert code not in _codes(clean(), _target(CLEAN_TARGETS.get(code, spec)))


def test_every_catalog_entry_is_tested_and_documented() -> None:
    codes = {r.code for t in ("ane", "cpu", "host") for r in catalog(t)}
    assert codes == set(ANE) | set(OTHERS)
    assert len(catalog("ane")) >= 20
    for t in ("ane", "cpu", "host"):
        for r in catalog(t):
            assert r.klass in CLASSES and r.severity in SEVERITIES
            assert len(r.source) > 40, f"{r.code} needs a docstring naming its source"
    assert all("§" in r.source for r in catalog("ane"))


FIXABLE = ["ANE-R01", "ANE-R06", "ANE-R08", "ANE-R09", "ANE-R10", "ANE-R11", "ANE-R12",
           "ANE-R18", "ANE-R20", "ANE-R21", "ANE-R22"]


@pytest.mark.parametrize("code", FIXABLE)
def test_fix_removes_the_fixable(code: str) -> None:
    trigger, _, spec = ANE[code]
    report = check_graph(trigger(), _target(spec), fix=True, evaluate=evaluate)
    assert code not in {d.code for d in report.diagnostics}
    assert code in {d.code for d in report.fixed}


def test_unfixable_violations_remain_after_fix() -> None:
    report = check_graph(_unary(shape=(1, 768, 1, 1)), "ane", fix=True)
    assert {d.code for d in report.errors} == {"ANE-R04"} and report.exit_status == 1


def _decomposed(g: Graph, code: str) -> Graph:
    """``g`` after normalize(fix=True) for the ane target (the fixes applied)."""
    from nerve.compiler.context import PassContext
    from nerve.compiler.passes.normalize import normalize

    work = g.copy()
    ctx = PassContext.new(work, get_target("ane"), {"fix": True}, evaluate=evaluate)
    normalize(work, ctx)
    assert ctx.record.rewrites.get(code), ctx.record.rewrites
    return work


def test_decompositions_compute_the_same_function() -> None:
    x = rand(2, 3, 8)
    b = IR()
    xi = b.input("x", (2, 3, 8))
    ln = b.op("LayerNormalization", xi, b.param("g", rand(8, seed=1)), b.param("bb", rand(8)),
              axis=-1, epsilon=1e-5)
    rs = b.op("Reciprocal", b.op("Sqrt", b.op("Abs", xi)))
    g = b.output(ln, rs)
    want = run(g, {"x": x}, fuse=False)
    got = run(_decomposed(g, "ANE-R11"), {"x": x}, fuse=False)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_gelu_becomes_its_tanh_approximation() -> None:
    b = IR()
    g = b.output(b.op("Gelu", b.input("x", (64,))))
    fixed = _decomposed(g, "ANE-R10")
    assert "Gelu" not in [n.op_type for n in fixed.nodes]
    x = np.linspace(-4, 4, 64, dtype=np.float32)
    got = run(fixed, {"x": x}, fuse=False)[g.output_names[0]]
    exact = run(g, {"x": x})[g.output_names[0]]
    np.testing.assert_allclose(got, exact, atol=1e-3)


def test_causal_attention_decomposes_with_a_mask() -> None:
    b = IR()
    q, k, v = (b.input(n, (1, 2, 5, 4)) for n in "qkv")
    g = b.output(b.op("Attention", q, k, v, is_causal=1))
    fixed = _decomposed(g, "ANE-R06")
    feeds = {n: rand(1, 2, 5, 4, seed=i) for i, n in enumerate("qkv")}
    got = run(fixed, feeds, fuse=False)[g.output_names[0]]
    s = feeds["q"] @ feeds["k"].transpose(0, 1, 3, 2) / 2.0
    s = np.where(np.triu(np.ones((5, 5), bool), 1), -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ feeds["v"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_conv_bias_split_computes_the_same() -> None:
    b = IR()
    x = b.input("x", (1, 3, 4, 4))
    # A constant bias: a weight's reshape would be a bake recipe, which needs a whole compile.
    g = b.output(b.op("Conv", x, b.param("w", rand(2, 3, 1, 1)), b.const("b", rand(2))))
    fixed = _decomposed(g, "ANE-R08")
    assert [n.op_type for n in fixed.nodes] == ["Conv", "Add"]
    feeds = {"x": rand(1, 3, 4, 4, seed=4)}
    name = g.output_names[0]
    np.testing.assert_allclose(run(fixed, feeds)[name], run(g, feeds)[name], rtol=1e-6)

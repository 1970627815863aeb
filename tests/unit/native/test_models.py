"""End to end: whole CNN and transformer models, native (cpu target) against host."""

from __future__ import annotations

import numpy as np
import pytest

import nerve
from nerve.engines import native
from nerve.models import MODELS


@pytest.fixture(scope="module")
def programs() -> dict[str, tuple[nerve.Program, nerve.Program, dict[str, np.ndarray]]]:
    built = {}
    with native.batch():
        for name in ("cnn", "transformer", "mlp"):
            spec = MODELS[name]
            model, feeds = spec.build(seed=0), spec.inputs(seed=0)
            built[name] = (
                nerve.compile(model, target="cpu", threads=2),
                nerve.compile(model, target="host", fuse=False),
                feeds,
            )
    return built


@pytest.mark.parametrize("name", ["cnn", "transformer", "mlp"])
def test_builtin_model_matches_host(
    programs: dict[str, tuple[nerve.Program, nerve.Program, dict[str, np.ndarray]]], name: str
) -> None:
    cpu, host, feeds = programs[name]
    assert "native" in {s.engine for s in cpu.plan.segments}
    got, want = cpu.run(feeds), host.run(feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_torch_models_match_host(tmp_path: object) -> None:
    pytest.importorskip("torch")
    from tests.e2e import torch_models as tm

    cases = [
        ("resnet", tm.resnet(seed=0), tm.resnet_inputs(seed=0), ["logits"]),
        ("bert", tm.bert(seed=0), tm.bert_inputs(seed=0), ["hidden", "pooled"]),
    ]
    for name, module, feeds, outputs in cases:
        path = f"{tmp_path}/{name}.onnx"
        tm.export(module, feeds, path, outputs)
        with native.batch():
            cpu = nerve.compile(path, target="cpu", threads=2)
        host = nerve.compile(path, target="host", fuse=False)
        assert "native" in {s.engine for s in cpu.plan.segments}
        got, want = cpu.run(feeds), host.run(feeds)
        for key in want:
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=f"{name}: {key}"
            )


def _all_native(program: nerve.Program, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a compiled (fused) graph as ONE native segment, whatever the target's op table says."""
    from nerve.engines.native import NativeEngine, segment_plan

    graph = program.plan.graph
    segment, plan = segment_plan(graph, threads=2)
    exe = NativeEngine().build(segment, plan)
    env = {**program._base_env, **feeds}
    exe.run(env)
    return {name: env[name] for name in graph.output_names}


def test_fused_transformer_runs_entirely_native() -> None:
    spec = MODELS["transformer"]
    model, feeds = spec.build(seed=1), spec.inputs(seed=1)
    fused = nerve.compile(model, target="host")  # the fuse pass runs for host too
    ops = set(fused.graph.op_histogram())
    assert any(op.startswith("nerve.") for op in ops), ops
    want = nerve.compile(model, target="host", fuse=False).run(feeds)
    got = _all_native(fused, feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_fused_bert_attention_runs_native(tmp_path: object) -> None:
    pytest.importorskip("torch")
    from tests.e2e import torch_models as tm

    module, feeds = tm.bert(seed=2), tm.bert_inputs(seed=2)
    path = f"{tmp_path}/bert.onnx"
    tm.export(module, feeds, path, ["hidden", "pooled"])
    fused = nerve.compile(path, target="host")
    assert "nerve.Attention" in fused.graph.op_histogram()
    want = nerve.compile(path, target="host", fuse=False).run(feeds)
    got = _all_native(fused, feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)

"""Exported ResNet-style and BERT-style models: real fusions, a smaller arena, same outputs."""

from __future__ import annotations

import numpy as np
import pytest

import nerve
from nerve.compiler import compile as compile_plan
from nerve.engines.host import evaluate
from nerve.frontend.onnx import load_onnx

torch = pytest.importorskip("torch")
tm = pytest.importorskip("tests.e2e.torch_models")

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, list]:
    path = tmp_path_factory.mktemp("resnet") / "resnet.onnx"
    model, inputs = tm.resnet(seed=0), tm.resnet_inputs(seed=0)
    tm.export(model, inputs, path, ["logits"])
    return str(path), inputs, tm.run_torch(model, inputs)


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, list]:
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    model, inputs = tm.bert(seed=0), tm.bert_inputs(seed=0)
    tm.export(model, inputs, path, ["hidden", "pooled"])
    return str(path), inputs, tm.run_torch(model, inputs)


def _check(path: str, inputs: dict, expected: list) -> nerve.Program:
    fused = nerve.compile(path)
    plain = nerve.compile(path, fuse=False)
    got, ref = fused.run(inputs), plain.run(inputs)
    for (name, value), want in zip(got.items(), expected):
        np.testing.assert_allclose(value, ref[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-4)
    report = fused.report
    assert [p.name for p in report.passes] == ["normalize", "fuse", "precision", "layout", "plan"]
    assert 0 < report.peak_scratch_bytes < report.intermediate_bytes
    return fused


def test_resnet_fuses_convs_with_their_activations(resnet_onnx: tuple) -> None:
    program = _check(*resnet_onnx)
    fuse = program.report.passes[1]
    assert fuse.rewrites.get("epilogue", 0) >= 6  # conv+relu, conv+add+relu in every block
    assert fuse.nodes_out < fuse.nodes_in
    assert any(n.qualified_op == "nerve.FusedConv" for n in program.graph.nodes)


def test_bert_fuses_attention_linears_and_chains(bert_onnx: tuple) -> None:
    program = _check(*bert_onnx)
    rewrites = program.report.rewrites()
    layers = tm.BertConfig().layers
    assert rewrites["attention"] == layers
    assert rewrites["matmul_bias"] >= 4 * layers
    assert rewrites.get("epilogue", 0) >= 2 * layers  # Gelu, residual adds


def test_bert_checks_for_the_ane(bert_onnx: tuple) -> None:
    graph = load_onnx(bert_onnx[0])
    report = nerve.check(graph, "ane", fix=True)
    assert {"ANE-R10", "ANE-R11"} <= {d.code for d in report.fixed}  # gelu, layernorm
    plan = compile_plan(graph, "host", evaluate=evaluate)
    assert plan.report.peak_scratch_bytes < plan.report.intermediate_bytes


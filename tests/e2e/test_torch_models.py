"""End to end: PyTorch models exported to ONNX (a ResNet-style CNN and a BERT-style encoder)
run by nerve match ONNX Runtime and the ONNX reference evaluator within 1e-4 (scale-aware),
both through the Python API and through ``nerve run``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

import nerve
from nerve.cli import main
from tests.e2e import torch_models as tm
from tests.e2e.compare import assert_close

pytestmark = pytest.mark.torch


@dataclass(frozen=True)
class Exported:
    name: str
    path: Path
    feeds: dict[str, np.ndarray]
    output_names: list[str]
    torch_outputs: list[np.ndarray]


def _export(
    tmp: Path, name: str, module: Any, feeds: dict[str, np.ndarray], outputs: list[str]
) -> Exported:
    path = tmp / f"{name}.onnx"
    tm.export(module, feeds, path, outputs)
    return Exported(name, path, feeds, outputs, tm.run_torch(module, feeds))


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(
        tmp_path_factory.mktemp("resnet"),
        "resnet",
        tm.resnet(seed=0),
        tm.resnet_inputs(seed=0),
        ["logits"],
    )


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(
        tmp_path_factory.mktemp("bert"),
        "bert",
        tm.bert(seed=0),
        tm.bert_inputs(seed=0),
        ["last_hidden_state", "pooled"],
    )


@pytest.fixture(params=["resnet", "bert"])
def exported(request: pytest.FixtureRequest) -> Exported:
    return request.getfixturevalue(f"{request.param}_onnx")


def _ort(model: Exported) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    return session.run(model.output_names, model.feeds)


def test_export_has_the_expected_structure(exported: Exported) -> None:
    proto = onnx.load(str(exported.path))
    ops = {n.op_type for n in proto.graph.node}
    if exported.name == "resnet":
        assert {"Conv", "Relu", "Add", "MaxPool", "Gemm"} <= ops
        assert sum(n.op_type == "Conv" for n in proto.graph.node) >= 9
    else:
        assert {"Gather", "MatMul", "Softmax", "LayerNormalization"} <= ops
        assert [i.name for i in proto.graph.input] == list(exported.feeds)


def test_nerve_matches_onnxruntime(exported: Exported) -> None:
    ours = nerve.compile(exported.path).run(exported.feeds)
    assert_close(ours, _ort(exported), exported.output_names, label="onnxruntime")


def test_nerve_matches_reference_evaluator(exported: Exported) -> None:
    from onnx.reference import ReferenceEvaluator

    ours = nerve.compile(exported.path).run(exported.feeds)
    theirs = ReferenceEvaluator(str(exported.path)).run(exported.output_names, exported.feeds)
    assert_close(ours, theirs, exported.output_names, label="ReferenceEvaluator")


def test_nerve_matches_pytorch(exported: Exported) -> None:
    ours = nerve.compile(exported.path).run(exported.feeds)
    assert_close(ours, exported.torch_outputs, exported.output_names, label="torch")


def test_padding_is_masked_out_in_bert(bert_onnx: Exported) -> None:
    """Tokens behind the attention mask must not change the unmasked outputs."""
    program = nerve.compile(bert_onnx.path)
    feeds = {k: v.copy() for k, v in bert_onnx.feeds.items()}
    seq = feeds["input_ids"].shape[1]
    first = program.run(feeds)
    feeds["input_ids"][1, seq // 2 :] = (feeds["input_ids"][1, seq // 2 :] + 1) % 100
    second = program.run(feeds)
    np.testing.assert_allclose(
        first["last_hidden_state"][1, : seq // 2],
        second["last_hidden_state"][1, : seq // 2],
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(first["pooled"][1], second["pooled"][1], rtol=1e-5, atol=1e-5)


def test_cli_run_on_exported_resnet(resnet_onnx: Exported, tmp_path: Path, capsys) -> None:
    image = tmp_path / "image.npy"
    np.save(image, resnet_onnx.feeds["image"])
    saved = tmp_path / "out.npz"
    rc = main(["run", str(resnet_onnx.path), "--input", f"image={image}", "--save", str(saved)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "logits" in captured.out and "compile" in captured.out
    with np.load(saved) as data:
        assert_close(dict(data), _ort(resnet_onnx), ["logits"], label="onnxruntime")


def test_cli_run_on_exported_bert_with_npz_inputs(
    bert_onnx: Exported, tmp_path: Path, capsys
) -> None:
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **bert_onnx.feeds)
    saved = tmp_path / "out.npz"
    rc = main(["run", str(bert_onnx.path), "--input", str(inputs), "--save", str(saved)])
    assert rc == 0, capsys.readouterr().err
    with np.load(saved) as data:
        assert_close(dict(data), _ort(bert_onnx), bert_onnx.output_names, label="onnxruntime")


def test_torchscript_exporter_fallback_also_matches(tmp_path: Path) -> None:
    """The TorchScript exporter (opset 17, Erf-based GELU) gives a graph nerve runs too."""
    module, feeds = tm.bert(seed=1), tm.bert_inputs(seed=1)
    path = tmp_path / "bert_ts.onnx"
    assert tm.export(module, feeds, path, ["hidden", "pooled"], dynamo=False) == "torchscript"
    ours = nerve.compile(path).run(feeds)
    assert_close(ours, tm.run_torch(module, feeds), ["hidden", "pooled"], label="torch")

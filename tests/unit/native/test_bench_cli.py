"""``nerve bench``: nerve against ONNX Runtime in one interleaved run (no speed asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from nerve.cli import main
from nerve.cli.bench import Runner, Stats, measure, results_table

from .models import node, rand


@pytest.fixture
def model_path(tmp_path: object) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(rand(np.random.default_rng(1), 8, 4), "w")
    graph = helper.make_graph(
        [node("MatMul", ["x", "w"], "m"), node("Relu", ["m"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [w],
    )
    # An opset and IR version every ONNX Runtime release reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = f"{tmp_path}/tiny.onnx"
    onnx.save(model, path)
    return path


def test_bench_prints_nerve_and_peer_rows(
    model_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    assert main(["bench", model_path, "--vs", "ort", "--seconds", "0.05", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "nerve" in text and "onnxruntime" in text and "p50 ms" in text


def test_bench_rejects_unknown_peers(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", model_path, "--vs", "tensorflow"]) == 2
    assert "unknown peers" in capsys.readouterr().err


def test_measure_interleaves_and_counts_runs() -> None:
    calls: list[str] = []
    runners = [Runner(n, "1", 0.0, lambda n=n: calls.append(n)) for n in ("a", "b")]
    stats = measure(runners, seconds=0.01, rounds=3, settle=0.0)
    assert [s.name for s in stats] == ["a", "b"]
    assert all(len(s.times_ms) >= 3 for s in stats)
    # Interleaved: both runtimes appear in every round, not one after the other.
    first_b = calls.index("b")
    assert "a" in calls[first_b:]


def test_ratio_column_is_nerve_over_peer() -> None:
    ours = Stats("nerve", "0", 0.1, [2.0, 2.0])
    peer = Stats("onnxruntime", "0", 0.1, [1.0, 1.0])
    table = results_table([ours, peer], "t")
    assert table.rows[1][-1] == "2.00" and table.rows[0][-1] == ""

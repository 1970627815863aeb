"""nerve.calibrate, nerve.accuracy and `nerve compile --accuracy`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import nerve
from nerve.cli import main
from nerve.errors import InputError
from tests.unit.quant.helpers import mlp

RNG = np.random.default_rng(11)


def test_calibrate_records_minmax_and_percentiles_per_tensor() -> None:
    model, _ = mlp(RNG)
    x = RNG.standard_normal((50, 3, 20)).astype(np.float32)
    x[0, 0, 0] = 40.0  # one outlier: min/max sees it, the 99th percentile does not
    cal = nerve.calibrate(model, {"x": x}, percentile=99.0)
    assert cal.samples == 50 and cal.method == "minmax"
    assert cal["x"] == (float(x.min()), 40.0)
    assert {"x", "h", "y"} <= set(cal)
    assert cal["h"][0] == 0.0  # ReLU output
    tails = cal.using("percentile")
    assert tails["x"][1] < 5.0 and tails["x"][0] > float(x.min()) - 1e-6
    assert nerve.calibrate(model, [{"x": s} for s in x]) == cal


def test_calibrate_refuses_bad_samples() -> None:
    model, _ = mlp(RNG)
    with pytest.raises(InputError, match="input 'x'"):
        nerve.calibrate(model, {"z": np.zeros((3, 20), np.float32)})
    with pytest.raises(InputError, match="shape"):
        nerve.calibrate(model, {"x": np.zeros((3, 21), np.float32)})


def test_accuracy_reports_errors_and_top1() -> None:
    model, _ = mlp(RNG)
    x = RNG.standard_normal((8, 3, 20)).astype(np.float32)
    same = nerve.accuracy(model, {"x": x}, precision="fp32")
    assert same.outputs[0].max_rel == 0.0 and same.outputs[0].top1 == 1.0
    report = nerve.accuracy(model, {"x": x}, precision="bf16")
    out = report.outputs[0]
    assert 0 < out.mean_rel < 2e-2 and 0 < out.max_rel < 2e-2 and out.top1 is not None
    int8 = nerve.accuracy(model, {"x": x}, precision="int8")
    assert int8.outputs[0].max_rel > out.max_rel * 0.5
    assert "calibrated" in int8.format()


def test_cli_compile_prints_accuracy(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model, _ = mlp(RNG)
    path, samples = tmp_path / "m.onnx", tmp_path / "s.npz"
    onnx.save(model, path)
    np.savez(samples, x=RNG.standard_normal((4, 3, 20)).astype(np.float32))
    assert main(["compile", str(path), "--precision", "bf16", "--accuracy", str(samples)]) == 0
    text = capsys.readouterr().out
    assert "accuracy of bf16 on host vs fp32 (4 samples)" in text and "top-1" in text

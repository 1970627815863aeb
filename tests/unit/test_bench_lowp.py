"""The pure helpers of the bf16/int8 benchmarks (bench/peers.py, bench/kernels.py,
bench/_results.py): argument parsing, error computation, table formatting. Nothing here runs a
benchmark or compiles a model."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
NO_AMX = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripts import their sibling _results lazily, as `python bench/x.py` finds it.
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    return _load("peers")


@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    return _load("kernels")


@pytest.fixture(scope="module")
def results() -> ModuleType:
    return _load("_results")


# ---- peers.py: arguments ------------------------------------------------------------------


def test_precisions_are_parsed_in_canonical_order(peers: ModuleType) -> None:
    assert peers.parse_precisions("fp32") == ("fp32",)
    assert peers.parse_precisions(" int8,bf16 ,int8") == ("bf16", "int8")
    assert peers.parse_precisions("int8,fp32,bf16") == ("fp32", "bf16", "int8")


@pytest.mark.parametrize("text", ["fp16", "bf16,int4", "", " , "])
def test_unknown_or_missing_precisions_are_refused(peers: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="precision"):
        peers.parse_precisions(text)


def test_the_default_precision_is_fp32_only(
    peers: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The existing command keeps its meaning: only the fp32 table.
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts bench/ and src/ first
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # main() removes it: restored after
    captured: dict[str, Any] = {}
    monkeypatch.setattr(peers, "_fp32", lambda args, *rest: captured.update(fp32=args.precision))
    monkeypatch.setattr(peers, "_lowp", lambda *rest: captured.update(lowp=rest[3]))
    assert peers.main(["--models", "mlp"]) == 0
    assert captured == {"fp32": "fp32"}
    captured.clear()
    assert peers.main(["--models", "mlp", "--precision", "bf16,int8"]) == 0
    assert captured == {"lowp": ["bf16", "int8"]}


@pytest.mark.parametrize(
    "argv", [["--precision", "fp16"], ["--precision", "bf16", "--samples", "0"]]
)
def test_bad_arguments_exit_with_usage(
    peers: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        peers.main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


# ---- peers.py: inputs and errors ----------------------------------------------------------


def test_input_samples_keep_shapes_dtypes_and_masks(peers: ModuleType) -> None:
    base: dict[str, np.ndarray] = {
        "input_ids": np.array([[5, 900, 31]], np.int64),
        "attention_mask": np.ones((1, 3), np.int64),
        "x": np.zeros((2, 4), np.float32),
    }
    samples = peers.input_samples(base, 3, seed=7)
    assert len(samples) == 3
    for s in samples:
        assert {k: (v.shape, v.dtype) for k, v in s.items()} == {
            k: (v.shape, v.dtype) for k, v in base.items()
        }
        assert np.array_equal(s["attention_mask"], base["attention_mask"])
        assert s["input_ids"].min() >= 0 and s["input_ids"].max() <= 900
    assert not np.array_equal(samples[0]["x"], samples[1]["x"])
    again = peers.input_samples(base, 3, seed=7)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(samples, again))
    assert peers.input_samples(base, 0, seed=7) == []


def test_output_error_is_normwise_over_all_inputs(peers: ModuleType) -> None:
    refs = [np.array([[1.0, -4.0, 2.0]]), np.array([[0.5, 0.0, 3.0]])]
    gots = [np.array([[1.0, -3.0, 2.0]]), np.array([[0.5, 0.5, 2.5]])]
    err = peers.output_error(refs, gots, classifier=True)
    assert err["max_abs"] == pytest.approx(1.0)
    assert err["max_rel"] == pytest.approx(1.0 / 4.0)  # worst error / largest |ref|
    assert err["mean_rel"] == pytest.approx((1.0 + 0.5 + 0.5) / 6 / (10.5 / 6))
    # argmax over the last axis: index 2 in both refs and both outputs
    assert err["top1"] == pytest.approx(1.0)
    gots[1] = np.array([[0.5, 9.0, 2.5]])
    assert peers.output_error(refs, gots, classifier=True)["top1"] == pytest.approx(0.5)
    assert peers.output_error(refs, gots, classifier=False)["top1"] is None


def test_output_error_of_identical_outputs_is_zero(peers: ModuleType) -> None:
    ref = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    err = peers.output_error(ref, [ref[0].copy()], classifier=True)
    assert err == {"max_abs": 0.0, "max_rel": 0.0, "mean_rel": 0.0, "top1": 1.0}
    zeros = [np.zeros(3)]
    assert peers.output_error(zeros, [np.zeros(3)], classifier=False)["max_rel"] == 0.0
    assert peers.output_error(zeros, [np.ones(3)], classifier=False)["max_rel"] == np.inf


def test_output_error_keeps_nan_visible_and_checks_shapes(peers: ModuleType) -> None:
    err = peers.output_error([np.ones(3)], [np.array([1.0, np.nan, 1.0])], classifier=False)
    assert np.isnan(err["max_rel"])
    with pytest.raises(ValueError, match="shape"):
        peers.output_error([np.ones(3)], [np.ones(4)], classifier=False)
    with pytest.raises(ValueError):
        peers.output_error([np.ones(3)], [], classifier=False)


# ---- _results.py ------------------------------------------------------------------------------


def test_segments_summary_groups_by_engine(results: ModuleType) -> None:
    assert results.segments_summary([("native", 120)]) == "native 120 nodes (1 segment)"
    assert results.segments_summary([("host", 1), ("native", 5), ("host", 2)]) == (
        "host 3 nodes (2 segments), native 5 nodes (1 segment)"
    )
    assert results.segments_summary([]) == ""


def test_feature_summary_and_hardware_note(results: ModuleType) -> None:
    assert results.feature_summary(NO_AMX) == (
        "avx512_bf16 yes, avx512_vnni yes, amx_tile no, amx_bf16 no, amx_int8 no"
    )
    note = results.lowp_hardware_note(NO_AMX)
    assert "no AMX" in note and "AVX512-BF16" in note and "AVX512-VNNI" in note
    assert "not AMX" in results.lowp_hardware_note(["avx2"])
    amx = results.lowp_hardware_note([*NO_AMX, "amx_tile", "amx_bf16", "amx_int8"])
    assert "has AMX" in amx and "no AMX" not in amx


def test_a_lowp_section_replaces_itself_and_keeps_the_others(
    results: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "RESULTS.md"
    fp32 = "## Native engine vs peers (fp32)\n\nfp32 table\n"
    path.write_text(f"# Benchmark results\n\n{fp32}\n## Later\n\nkept\n")
    heading = "## Native engine vs peers (bf16, int8)"
    for version in ("one", "two"):
        body = f"{heading}\n\n### bf16\n\n{version}\n\n### int8\n\n{version}\n"
        results.write_section(heading, body, path)
    text = path.read_text()
    assert text.count(heading) == 1 and "one" not in text and text.count("two") == 2
    assert fp32 in text and "## Later\n\nkept" in text


# ---- peers.py: the bf16 / int8 section ------------------------------------------------------


def _stats(**p50: float) -> list[dict[str, Any]]:
    return [{"runtime": k.replace("_", " "), "p50_ms": v, "compile_s": 0.1} for k, v in p50.items()]


def _fake_models() -> dict[str, Any]:
    err = {"max_rel": 4e-3, "mean_rel": 1e-3, "max_abs": 0.1, "top1": 1.0}
    return {
        "resnet50": {
            "title": "ResNet-50",
            "precisions": ["bf16", "int8"],
            "classifier": True,
            "results": _stats(
                nerve_fp32=40.0,
                nerve_bf16=20.0,
                openvino_bf16=10.0,
                nerve_int8=8.0,
                onnxruntime_int8=16.0,
            ),
            "errors": {
                "nerve bf16": {**err, "max_rel": 9e-3},
                "openvino bf16": err,
                "nerve int8": {**err, "top1": 0.5},
                "onnxruntime int8": err,
            },
            "skipped": {"openvino int8": "failed: RuntimeError: no"},
            "runtimes": {
                "nerve bf16": {"precision": "bf16", "segments": "native 120 nodes (1 segment)"},
                "nerve int8": {"precision": "int8", "segments": "host 2 nodes (2 segments)"},
                "openvino bf16": {"precision": "bf16", "inference_precision": "f32"},
            },
        },
        "bert": {
            "title": "BERT-base seq128",
            "precisions": ["bf16"],
            "classifier": False,
            "results": _stats(nerve_fp32=80.0, nerve_bf16=20.0, openvino_bf16=25.0),
            "errors": {"nerve bf16": err, "openvino bf16": err},
            "skipped": {},
            "runtimes": {},
        },
    }


MACHINE = {"date": "2026-01-01", "cpu": "Test CPU", "features": NO_AMX, "openblas_core": "X",
           "loadavg_before": "0.1", "loadavg_after": "0.2"}  # fmt: skip
SETTINGS = {"threads": 2, "seconds_per_runtime": 3.0, "precisions": ["bf16", "int8"],
            "accuracy_samples": 4, "calibration_samples": 4, "int8_ops": ["Conv", "MatMul"]}  # fmt: skip


def _row(text: str, title: str, after: str) -> str:
    table = text[text.index(after) :]
    return next(line for line in table.splitlines() if line.startswith(f"| {title} "))


def test_lowp_section_rows_ratios_and_marks(peers: ModuleType, bench_path: None) -> None:
    text = peers._lowp_section(_fake_models(), MACHINE, SETTINGS)
    assert text.startswith(peers.LOWP_SECTION + "\n")
    assert "no AMX" in text and "not AMX" in text and "amx_tile no" in text
    resnet = _row(text, "ResNet-50", "### bf16").split(" | ")
    # nerve bf16 20 ms / OV bf16 10 ms = 2.00 misses <= 1.0; error 9e-3 / 4e-3 = 2.25 > 2x
    assert resnet[1:5] == ["40.000", "20.000", "10.000", "2.00 ✗"]
    assert resnet[5] == "≤ 1.0 (0.8)"
    assert resnet[6:9] == ["9.0e-03", "4.0e-03", "2.25 ✗"]
    assert resnet[9].startswith("100% / 100%")
    bert = _row(text, "BERT-base seq128", "### bf16").split(" | ")
    assert bert[4] == "0.80 ✓" and bert[8] == "1.00 ✓" and bert[9].startswith("—")
    int8 = _row(text, "ResNet-50", "### int8").split(" | ")
    assert int8[1:4] == ["8.000", "16.000", "0.50"]
    assert int8[4:6] == ["—", "—"]  # OpenVINO int8 skipped
    assert int8[9].startswith("50% / 100% / —")
    assert "BERT-base seq128" not in text[text.index("### int8") :].split("\n\n")[1]
    assert "openvino int8 (failed: RuntimeError: no)" in text
    assert "ResNet-50 int8: host 2 nodes (2 segments)" in text
    assert "OpenVINO did not compute in bf16 on: ResNet-50 (f32)" in text


def test_lowp_section_without_int8_has_no_int8_table(peers: ModuleType, bench_path: None) -> None:
    models = {"bert": _fake_models()["bert"]}
    text = peers._lowp_section(models, MACHINE, {**SETTINGS, "precisions": ["bf16"]})
    assert "### bf16" in text and "### int8" not in text
    assert "did not compute in bf16" not in text


# ---- kernels.py ---------------------------------------------------------------------------------


def test_shapes_are_parsed(kernels: ModuleType) -> None:
    assert kernels.parse_shapes("128x768x3072, 1X768x3072") == ((128, 768, 3072), (1, 768, 3072))
    assert kernels.shape_key((2048, 2048, 2048)) == "2048x2048x2048"
    for bad in ("128x768", "0x1x2", "axbxc", "", "1x2x3x4", "-1x2x3"):
        with pytest.raises(ValueError):
            kernels.parse_shapes(bad)


def test_runtimes_are_parsed(kernels: ModuleType) -> None:
    assert kernels.parse_runtimes("torch-bf16,nerve-bf16") == ("nerve-bf16", "torch-bf16")
    with pytest.raises(ValueError, match="unknown"):
        kernels.parse_runtimes("nerve-fp16")
    with pytest.raises(ValueError):
        kernels.parse_runtimes(",")


def test_bad_kernel_arguments_exit_with_usage(kernels: ModuleType) -> None:
    for argv in (["--shapes", "1x2"], ["--runtimes", "mkl"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exc:
            kernels.main(argv)
        assert exc.value.code == 2


def test_rates_blocks_and_the_slow_cell_guard(kernels: ModuleType) -> None:
    shape = (128, 768, 3072)
    assert kernels.ops(shape) == 2 * 128 * 768 * 3072
    assert kernels.rate(shape, 1e-3) == pytest.approx(2 * 128 * 768 * 3072 / 1e-3 / 1e9)
    assert kernels.blocks(0.01, seconds=3.0, rounds=3) == 100
    assert kernels.blocks(10.0, seconds=3.0, rounds=3) == 1
    assert kernels.blocks(0.0, seconds=3.0, rounds=3) == 100_000
    big = (2048, 2048, 2048)  # 17.2 GOP
    assert kernels.too_slow(big, best_rate=1.0, max_run_s=5.0) == pytest.approx(17.179869184)
    assert kernels.too_slow(big, best_rate=100.0, max_run_s=5.0) is None
    assert kernels.too_slow(big, best_rate=None, max_run_s=5.0) is None


def test_product_error_and_flagged_cells(kernels: ModuleType) -> None:
    ref = np.array([[2.0, -4.0]], np.float32)
    assert kernels.product_error(ref, ref.copy()) == 0.0
    assert kernels.product_error(ref, np.array([[2.0, -3.0]])) == pytest.approx(0.25)
    assert kernels.product_error(ref, np.zeros((2, 1))) == np.inf
    cells = {"nerve-bf16": {"gops_best": 612.4, "error_ok": True, "max_rel_err": 1e-3},
             "nerve-int8": {"gops_best": 3.456, "error_ok": False, "max_rel_err": 0.5}}  # fmt: skip
    assert kernels.cell_text(cells, "nerve-bf16") == "612"
    assert kernels.cell_text(cells, "nerve-int8") == "3.46 (wrong: error 5.0e-01)"
    assert kernels.cell_text(cells, "torch-bf16") == "—"


def test_kernel_section_shows_targets_next_to_measured(
    kernels: ModuleType, bench_path: None
) -> None:
    def cell(gops: float) -> dict[str, Any]:
        return {"gops_best": gops, "error_ok": True, "max_rel_err": 1e-3}

    results = {
        "128x768x3072": {"shape": [128, 768, 3072],
                         "cells": {"nerve-bf16": cell(2100.0), "torch-bf16": cell(700.0)},
                         "plans": {"nerve-bf16": "native 1 node (1 segment)"}, "skipped": {}},
        "2048x2048x2048": {"shape": [2048, 2048, 2048], "cells": {"nerve-bf16": cell(900.0)},
                           "plans": {}, "skipped": {"nerve-int8": "about 60 s per run"}},
        "1x768x3072": {"shape": [1, 768, 3072], "cells": {}, "plans": {}, "skipped": {}},
    }  # fmt: skip
    machine = {**MACHINE}
    settings = {"threads": 2, "seconds_per_cell": 2.0, "blas": "cblas_sgemm of OpenBLAS"}
    text = kernels.section(results, machine, settings)
    assert text.startswith(kernels.SECTION + "\n")
    assert "no AMX" in text and "cblas_sgemm of OpenBLAS" in text
    first = _row(text, "128x768x3072", "| M x K x N").split(" | ")
    assert first[2] == "2100" and first[4] == "700" and first[7] == "3.00"
    assert first[8].startswith("≥ 2000 ✓")
    big = _row(text, "2048x2048x2048", "| M x K x N").split(" | ")
    assert big[7] == "—" and big[8].startswith("≥ 2500 ✗")
    small = _row(text, "1x768x3072", "| M x K x N").split(" | ")
    assert small[8].startswith("—")
    assert "2048x2048x2048 nerve-int8 (about 60 s per run)" in text
    assert "nerve-bf16: native 1 node (1 segment)" in text


def test_time_cells_interleaves_and_keeps_one_run_of_a_slow_cell(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "SETTLE_S", 0.0)
    calls: list[str] = []

    def quick() -> None:
        calls.append("quick")

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.002)

    cells = [kernels.Cell("a", quick, lambda: np.zeros(1)),
             kernels.Cell("b", slow, lambda: np.zeros(1))]  # fmt: skip
    kernels._time_cells(cells, seconds=0.01, rounds=2, max_run_s=0.001)
    assert len(cells[1].times) == 1  # its first timed run exceeded max_run_s
    assert len(cells[0].times) >= 5 + 2  # first runs, then at least one run per round
    # the quick cell's rounds come after both cells' first runs: interleaved
    assert calls.index("slow") < len(calls) - 1 and calls[-1] == "quick"

"""The ``nerve`` command, in process: show, run, demo, --version, and its error paths."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nerve
from nerve.cli import _output, main
from nerve.cli import demo as demo_cmd
from nerve.cli._args import parse_shapes
from nerve.errors import ShapeError
from nerve.frontend.builder import Builder


def _save(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> str:
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def affine(tmp_path: Path) -> str:
    """y = relu(x @ w + b) - x0, with a symbolic batch dimension."""
    b = Builder("affine")
    x = b.input("x", "float32", ("batch", 4))
    w = b.param("w", np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    bias = b.param("b", np.array([0.5, -0.5, 0.0], np.float32))
    y = b.op("Relu", b.op("Add", b.op("MatMul", x, w), bias))
    b.output(b.op("Sub", y, b.op("Div", y, 2.0)), name="y")
    return _save(b.to_onnx(), tmp_path)


@pytest.fixture
def chain(tmp_path: Path) -> str:
    """A fixed-shape model of 12 nodes, for truncation."""
    b = Builder("chain")
    y = b.input("x", "float32", (2, 3))
    for _ in range(12):
        y = b.op("Relu", y)
    b.output(y, name="y")
    return _save(b.to_onnx(), tmp_path, "chain.onnx")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ---- --version and help ---------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nerve {nerve.__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys)
    assert rc == 2
    for command in ("show", "run", "demo"):
        assert command in out


# ---- show -----------------------------------------------------------------------------------


def test_show_prints_ir_inputs_outputs_params_and_histogram(
    affine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(capsys, "show", affine, "--shape", "batch=2")
    assert rc == 0
    assert "graph affine(x: float32[2,4]) -> (y: float32[2,3])" in out
    assert "= MatMul(x, w)" in out
    assert "inputs" in out and "outputs" in out
    assert "op histogram" in out
    assert re.search(r"MatMul\W+1\W+20%", out)  # 1 of 5 nodes
    # Float initializers are params: w, b and the scalar 2.0; 16 float32 elements = 64 bytes.
    assert re.search(r"params \(weights\)\W+3\W+16\W+64 B", out)


def test_show_binds_a_whole_input_shape(affine: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "show", affine, "--shape", "x=5,4")
    assert rc == 0
    assert "x: float32[5,4]" in out


def test_show_truncates_big_graphs_unless_all(
    chain: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(capsys, "show", chain, "--max-nodes", "3")
    assert rc == 0
    assert out.count("= Relu(") == 3
    assert "9 more nodes" in out and "--all" in out
    rc, out, _ = _run(capsys, "show", chain, "--all")
    assert rc == 0
    assert out.count("= Relu(") == 12
    assert "more nodes" not in out


def test_show_summarises_params_unless_all(affine: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "show", affine, "--shape", "batch=1")
    assert "param w:" not in out and "3 params" in out
    _, out, _ = _run(capsys, "show", affine, "--shape", "batch=1", "--all")
    assert "param w: float32[4,3]" in out


def test_show_plain_text_without_rich(
    affine: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "USE_RICH", False)
    rc, out, _ = _run(capsys, "show", affine, "--shape", "batch=2")
    assert rc == 0
    assert "┃" not in out and "│" not in out  # no rich box drawing
    assert re.search(r"^name\s+dtype\s+shape\s+elements$", out, re.M)
    assert re.search(r"^MatMul\s+1\s+20%$", out, re.M)


def test_show_unbound_dimension_says_which_flag_fixes_it(
    affine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, "show", affine)
    assert rc == 2
    assert "'batch'" in err and "--shape batch=N" in err


def test_show_unsupported_ops_are_listed_with_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="frob0", domain="example.ops")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("example.ops", 1)],
    )
    rc, _, err = _run(capsys, "show", _save(model, tmp_path))
    assert rc == 2
    assert "Frobnicate" in err and "frob0" in err


@pytest.mark.parametrize("command", ["show", "run"])
def test_missing_model_file_is_named(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.onnx"
    rc, out, err = _run(capsys, command, str(missing), *(["--random"] if command == "run" else []))
    assert rc == 2
    assert err.startswith("nerve: error:") and str(missing) in err
    assert out == ""


def test_malformed_model_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not protobuf")
    rc, _, err = _run(capsys, "show", str(path))
    assert rc == 2 and "junk.onnx" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [("x", "NAME=D0"), ("x=1,a", "NAME=D0"), ("=3", "NAME=D0"), ("batch=1,2", "one value")],
)
def test_bad_shape_specs(
    affine: str, spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, "show", affine, "--shape", spec)
    assert rc == 2
    assert repr(spec) in err and message in err


def test_parse_shapes_splits_inputs_from_symbols() -> None:
    assert parse_shapes(["x=1,3", "n=4", "s=", "x=2"], ["x", "s"]) == {"x": (2,), "n": 4, "s": ()}
    with pytest.raises(ShapeError, match="non-negative"):
        parse_shapes(["x=-1"], ["x"])


# ---- run ------------------------------------------------------------------------------------


def _reference(path: str, x: np.ndarray) -> np.ndarray:
    return nerve.compile(path, shapes={"x": x.shape}).run({"x": x})["y"]


def test_run_with_input_file_prints_summary_and_saves(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    saved = tmp_path / "out.npz"
    rc, out, err = _run(
        capsys, "run", affine, "--input", f"x={tmp_path / 'x.npy'}", "--save", str(saved)
    )
    assert rc == 0, err
    expected = _reference(affine, x)  # the file's shape bound the symbolic batch (3)
    with np.load(saved) as data:
        np.testing.assert_array_equal(data["y"], expected)
    assert "[3,3]" in out and "file" in out
    assert f"{expected.max():.6g}" in out and f"{expected.min():.6g}" in out
    assert "compile" in out and "run" in out and f"saved 1 outputs to {saved}" in out


def test_run_random_is_seeded(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = []
    for seed in ("1", "1", "2"):
        path = tmp_path / f"out{len(outs)}.npz"
        rc, out, err = _run(
            capsys,
            "run",
            affine,
            "--random",
            "--seed",
            seed,
            "--shape",
            "batch=2",
            "--save",
            str(path),
        )
        assert rc == 0, err
        assert "random" in out
        with np.load(path) as data:
            outs.append(data["y"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_run_repeat_reports_latency_stats(affine: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "run", affine, "--random", "--shape", "batch=1", "--repeat", "3")
    assert rc == 0
    for word in ("run x3: min", "median", "mean", "max"):
        assert word in out


def test_run_npz_inputs(affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.ones((2, 4), np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rc, out, err = _run(capsys, "run", affine, "--input", str(tmp_path / "in.npz"))
    assert rc == 0, err
    assert "[2,3]" in out


def test_run_plain_text_without_rich(
    affine: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "USE_RICH", False)
    rc, out, _ = _run(capsys, "run", affine, "--random", "--shape", "batch=1")
    assert rc == 0
    assert re.search(r"^output\s+dtype\s+shape\s+min\s+max\s+mean\s+values$", out, re.M)
    assert "━" not in out


@pytest.mark.parametrize("spec", ["x", "x=", "=a.npy", "a.npy"])
def test_run_bad_input_spec(affine: str, spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "run", affine, "--input", spec)
    assert rc == 2
    assert repr(spec) in err and "NAME=FILE.npy" in err


def test_run_missing_input_file_is_named(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.npy"
    rc, _, err = _run(capsys, "run", affine, "--input", f"x={missing}")
    assert rc == 2 and str(missing) in err and "does not exist" in err


def test_run_unknown_input_name(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "z.npy", np.zeros((1, 4), np.float32))
    rc, _, err = _run(capsys, "run", affine, "--input", f"z={tmp_path / 'z.npy'}")
    assert rc == 2 and "no input 'z'" in err and "['x']" in err


def test_run_without_inputs_names_what_is_missing(
    affine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, "run", affine, "--shape", "batch=1")
    assert rc == 2 and "['x']" in err and "--random" in err


def test_run_wrong_dtype_names_the_input(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float64))
    rc, _, err = _run(capsys, "run", affine, "--input", f"x={tmp_path / 'x.npy'}")
    assert rc == 2 and "'x'" in err and "float32" in err and "float64" in err


def test_run_file_not_an_array(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.npy").write_text("hello")
    rc, _, err = _run(capsys, "run", affine, "--input", f"x={tmp_path / 'x.npy'}")
    assert rc == 2 and "x.npy" in err


def test_save_npz_keeps_awkward_names_and_the_exact_path(tmp_path: Path) -> None:
    from nerve.cli.run import save_npz

    path = tmp_path / "outputs.bin"
    arrays = {"file": np.arange(3), "allow_pickle": np.ones(2, np.float32), "a/b": np.zeros(1)}
    save_npz(str(path), arrays)
    with np.load(path) as data:
        assert sorted(data.files) == sorted(arrays)
        np.testing.assert_array_equal(data["file"], arrays["file"])


def test_run_save_to_unwritable_path(
    affine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "such" / "dir" / "out.npz"
    rc, _, err = _run(
        capsys, "run", affine, "--random", "--shape", "batch=1", "--save", str(target)
    )
    assert rc == 2 and str(target) in err


def test_run_repeat_must_be_positive(affine: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "run", affine, "--random", "--repeat", "0")
    assert rc == 2 and "--repeat" in err


def test_random_inputs_cover_dtypes() -> None:
    from nerve.cli.run import random_input
    from nerve.runtime import TensorInfo

    rng = np.random.default_rng(0)
    for dtype in ("float32", "float16", "int64", "int32", "bool", "bfloat16"):
        from nerve.ir import DType

        dt = DType(dtype)
        array = random_input(TensorInfo("t", (3, 2), dtype, dt.numpy), rng)
        assert array.shape == (3, 2) and array.dtype == dt.numpy
        if dt.is_integer and dtype != "bfloat16":
            assert set(np.unique(array)) <= {0, 1}


def test_summarize_handles_empty_and_bool() -> None:
    from nerve.cli.run import summarize

    assert summarize(np.zeros((0, 3), np.float32), "float32") == ("-", "-", "-", "[]")
    lo, hi, mean, values = summarize(np.array([True, False, True, True, True]), "bool")
    assert (lo, hi, mean) == ("0", "1", "0.8")
    assert values == "[1, 0, 1, 1, ...]"


# ---- demo -----------------------------------------------------------------------------------


def test_demo_builds_compiles_runs_and_checks(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "demo")
    assert rc == 0, out + err
    assert "cnn" in out and "transformer" in out
    assert "max abs err vs reference" in out
    for model in ("cnn", "transformer"):
        assert re.search(rf"^\W*{model}\W.*\Wok\W", out, re.M), f"{model} did not pass"
    assert "all checks passed" in out


def test_demo_one_model_plain(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "USE_RICH", False)
    rc, out, _ = _run(capsys, "demo", "mlp", "--no-ort")
    assert rc == 0
    assert re.search(r"^mlp\s+7\s+1,765\s", out, re.M)
    assert "onnxruntime" not in out.split("\n")[1]  # --no-ort: no ORT column


def test_demo_fails_when_a_check_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def off_by_one(model: onnx.ModelProto, feeds: object) -> list[np.ndarray]:
        return [o + 1 for o in demo_cmd._run_reference(model, feeds)]  # type: ignore[arg-type]

    monkeypatch.setattr(
        demo_cmd, "reference_runners", lambda use_ort=True: {"reference": off_by_one}
    )
    rc, out, _ = _run(capsys, "demo", "mlp")
    assert rc == 1
    assert "FAIL" in out and "FAILED: mlp" in out


def test_demo_reports_a_model_nerve_cannot_compile(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(seed: int = 0, **_: object) -> onnx.ModelProto:
        b = Builder("broken")
        y = b.op("Frobnicate", b.input("x", "float32", (1,)), domain="example.ops")
        b.output(y, dtype="float32", shape=(1,))
        return b.to_onnx(check=False)

    spec = demo_cmd.MODELS["mlp"]
    monkeypatch.setitem(
        demo_cmd.MODELS, "mlp", type(spec)("mlp", spec.summary, broken, lambda seed=0: {})
    )
    rc, out, _ = _run(capsys, "demo", "mlp")
    assert rc == 1
    assert "ERROR" in out and "Frobnicate" in out


def test_demo_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "demo", "alexnet")
    assert rc == 2 and "alexnet" in err


def test_compare_is_scale_aware() -> None:
    big = np.array([1000.0], np.float32)
    assert demo_cmd.compare([big + 0.05], [big], 1e-4)[1]  # 0.05 <= 1e-4 * 1000
    assert not demo_cmd.compare([big + 0.2], [big], 1e-4)[1]
    small = np.array([1e-3], np.float32)
    assert demo_cmd.compare([small + 5e-5], [small], 1e-4)[1]  # absolute below 1
    assert not demo_cmd.compare([np.array([np.nan], np.float32)], [small], 1e-4)[1]
    assert not demo_cmd.compare([small.astype(np.float64)], [small], 1e-4)[1]  # dtype differs


# ---- output helpers -------------------------------------------------------------------------


def test_plain_table_alignment() -> None:
    table = _output.Table("name", "n", title="t", align="lr")
    table.add_row("a", 1)
    table.add_row("longer", 123)
    assert table.render_plain().splitlines() == [
        "t",
        "name      n",
        "------  ---",
        "a         1",
        "longer  123",
    ]
    with pytest.raises(ValueError):
        table.add_row("only one cell")


def test_formatters() -> None:
    assert _output.fmt_bytes(60) == "60 B"
    assert _output.fmt_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert _output.fmt_count(1234567) == "1,234,567"
    assert _output.fmt_ms(0.0123) == "12.30"
    assert _output.fmt_shape((1, 3)) == "[1,3]"


def test_progress_is_silent_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with _output.Progress("working", total=2) as progress:
        progress.advance()
        progress.advance()
    assert progress.completed == 2
    assert capsys.readouterr().err == ""


def test_run_profile_writes_a_chrome_trace(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from nerve.models import build_cnn

    model_path = tmp_path / "cnn.onnx"
    onnx.save(build_cnn(), str(model_path))
    trace = tmp_path / "trace.json"
    assert main(["run", str(model_path), "--random", "--profile", str(trace)]) == 0
    assert "per-op trace" in capsys.readouterr().out
    events = json.loads(trace.read_text())["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat", "").startswith("op")]
    program = nerve.compile(build_cnn())
    # One complete event per executed node of the compiled program, named after it.
    assert sorted(e["name"] for e in ops) == sorted(n.name for n in program.graph.nodes)
    assert all(e["dur"] >= 0 and "op" in e["args"] for e in ops)

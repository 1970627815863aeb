"""In-process zero-copy I/O: feeds read in place (proved by address), out=, copy=, bind()."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

import nerve
from nerve.errors import InputError, OutputError
from nerve.runtime.monitor import Profiler, profile_run
from nerve.runtime.tensors import OutputPool
from tests.unit.runtime.models import affine_program, affine_relu, passthrough, weight_output


def spy_first_kernel(program: nerve.Program) -> list[list[Any]]:
    """Record the arrays the program's first kernel receives, run by run."""
    exe = program._executables[0]
    fn, node = exe.steps[0]  # type: ignore[attr-defined]
    seen: list[list[Any]] = []

    def spy(n: Any, *args: Any) -> Any:
        seen.append(list(args))
        return fn(n, *args)

    exe.steps[0] = (spy, node)  # type: ignore[attr-defined]
    return seen


def address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def expected(x: np.ndarray) -> np.ndarray:
    w = np.linspace(-1.0, 1.0, x.shape[-1], dtype=np.float32)
    b = np.linspace(0.5, -0.5, x.shape[-1], dtype=np.float32)
    return np.maximum(x * w + b, 0)


def test_numpy_feed_reaches_the_first_kernel_in_place() -> None:
    program = affine_program(8)
    seen = spy_first_kernel(program)
    x = np.arange(8, dtype=np.float32)
    y = program.run({"x": x})["y"]
    assert seen[0][0] is x  # the very object, not a copy
    assert address(seen[0][0]) == address(x)
    np.testing.assert_array_equal(y, expected(x))


def test_dlpack_feed_is_read_in_place() -> None:
    torch = pytest.importorskip("torch")
    program = affine_program(8)
    seen = spy_first_kernel(program)
    t = torch.arange(8, dtype=torch.float32)
    y = program.run({"x": t})["y"]
    assert address(seen[0][0]) == t.data_ptr()
    np.testing.assert_array_equal(y, expected(t.numpy()))


def test_any_dlpack_object_is_accepted() -> None:
    class Producer:  # only the DLPack protocol, like a foreign framework's tensor
        def __init__(self, array: np.ndarray) -> None:
            self.array = array

        def __dlpack__(self, **kwargs: Any) -> Any:
            return self.array.__dlpack__(**kwargs)

        def __dlpack_device__(self) -> Any:
            return self.array.__dlpack_device__()

    program = affine_program(4)
    seen = spy_first_kernel(program)
    x = np.ones(4, np.float32)
    program.run({"x": Producer(x)})
    assert np.shares_memory(seen[0][0], x)


def test_shared_tensor_feed_is_read_in_place() -> None:
    program = affine_program(4)
    seen = spy_first_kernel(program)
    with nerve.SharedTensor.from_array(np.ones(4, np.float32)) as t:
        y = program.run({"x": t})["y"]
        assert address(seen[0][0]) == address(t.array)
        np.testing.assert_array_equal(y, expected(np.ones(4, np.float32)))


def test_strided_feed_is_converted_once_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    program = affine_program(4)
    seen = spy_first_kernel(program)
    base = np.arange(8, dtype=np.float32)
    x = base[::2]  # not contiguous
    with caplog.at_level(logging.DEBUG, logger="nerve"):
        y = program.run({"x": x})["y"]
    assert not np.shares_memory(seen[0][0], base)
    assert seen[0][0].flags.c_contiguous
    assert any("non-contiguous" in r.message for r in caplog.records)
    np.testing.assert_array_equal(y, expected(x))


def test_matching_feed_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    program = affine_program(4)
    with caplog.at_level(logging.DEBUG, logger="nerve"):
        program.run({"x": np.ones(4, np.float32)})
    assert not [r for r in caplog.records if "copy" in r.message]


def test_safe_dtype_is_converted_lossy_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    program = affine_program(4)
    x16 = np.array([1, -2, 3, -4], np.float16)
    with caplog.at_level(logging.DEBUG, logger="nerve"):
        y = program.run({"x": x16})["y"]
    assert any("float16 converted to float32" in r.message for r in caplog.records)
    np.testing.assert_array_equal(y, expected(x16.astype(np.float32)))
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        program.run({"x": np.ones(4, np.float64)})


def test_out_writes_into_the_callers_buffer() -> None:
    program = affine_program(4)
    buf = np.full(4, np.nan, np.float32)
    x = np.array([1, 2, -3, 4], np.float32)
    result = program.run({"x": x}, out={"y": buf})
    assert result["y"] is buf
    np.testing.assert_array_equal(buf, expected(x))


def read_only_buffer() -> np.ndarray:
    buf = np.zeros(4, np.float32)
    buf.flags.writeable = False
    return buf


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (np.zeros(5, np.float32), "expected float32"),
        (np.zeros(4, np.float64), "expected float32"),
        (read_only_buffer(), "read-only"),
    ],
)
def test_bad_out_buffers_are_refused(buf: np.ndarray, message: str) -> None:
    program = affine_program(4)
    with pytest.raises(OutputError, match=message):
        program.run({"x": np.ones(4, np.float32)}, out={"y": buf})


def test_out_for_an_unknown_output_is_refused() -> None:
    with pytest.raises(OutputError, match="unknown outputs"):
        affine_program(4).run({"x": np.ones(4, np.float32)}, out={"nope": np.zeros(4)})


def test_copy_false_returns_read_only_views_of_feeds_and_weights() -> None:
    program = nerve.compile(passthrough([4]))
    x = np.arange(4, dtype=np.float32)
    view = program.run({"x": x}, copy=False)["x"]
    assert np.shares_memory(view, x) and not view.flags.writeable
    copied = program.run({"x": x})["x"]
    assert not np.shares_memory(copied, x) and copied.flags.writeable

    prog_w = nerve.compile(weight_output())
    w_view = prog_w.run({"x": np.ones(3, np.float32)}, copy=False)["w"]
    assert not w_view.flags.writeable
    with pytest.raises(ValueError):
        w_view[0] = 42  # the program's weight is protected
    w_copy = prog_w.run({"x": np.ones(3, np.float32)})["w"]
    w_copy[0] = 42
    np.testing.assert_array_equal(prog_w.run({"x": np.ones(3, np.float32)})["w"], [0, 1, 2])


def test_binding_reads_bound_inputs_in_place_every_run() -> None:
    program = affine_program(4)
    seen = spy_first_kernel(program)
    x = np.zeros(4, np.float32)
    y = np.empty(4, np.float32)
    binding = program.bind(inputs={"x": x}, outputs={"y": y})
    for value in (1.0, -2.0, 3.0):
        x[...] = value  # update in place; no rebind
        result = binding.run()
        assert result["y"] is y
        np.testing.assert_array_equal(y, expected(x))
    assert all(address(args[0]) == address(x) for args in seen)
    assert binding.converted == set()


def test_binding_a_converted_input_is_flagged() -> None:
    program = affine_program(4)
    x = np.arange(8, dtype=np.float32)[::2]
    binding = program.bind(inputs={"x": x})
    assert binding.converted == {"x"}


def test_binding_requires_every_input() -> None:
    binding = affine_program(4).bind()
    with pytest.raises(InputError, match=r"inputs \['x'\] are not bound"):
        binding.run()


def test_lifetime_rule_held_views_are_never_overwritten() -> None:
    program = affine_program(4)
    x = np.zeros(4, np.float32)
    binding = program.bind(inputs={"x": x})  # y unbound: nerve-owned pooled memory
    x[...] = 1.0
    first = binding.run()["y"]
    snapshot = first.copy()
    assert not first.flags.writeable
    x[...] = -5.0
    second = binding.run()["y"]  # `first` is alive: must land elsewhere
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, snapshot)
    np.testing.assert_array_equal(second, expected(x))
    addr_first, addr_second = address(first), address(second)
    del first, second
    third = binding.run()["y"]  # both dropped: memory is reused, no new allocation
    assert address(third) in (addr_first, addr_second)
    assert binding._pools["y"].allocations == 2


def test_lifetime_rule_sees_derived_views_and_torch_tensors() -> None:
    pool = OutputPool(np.dtype(np.float32), (4,))
    a = pool.acquire()
    derived = a[1:]  # a view of a view
    del a
    b = pool.acquire()
    assert not np.shares_memory(b, derived)
    torch = pytest.importorskip("torch")
    held = torch.from_numpy(b)
    del b
    c = pool.acquire()
    assert not np.shares_memory(c, held.numpy())


def test_profile_writes_a_chrome_trace_per_op(tmp_path: Any) -> None:
    program = affine_program(4)
    profiler = Profiler()
    program.run({"x": np.ones(4, np.float32)}, profile=profiler)
    trace = profiler.to_dict()
    ops = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"].startswith("op")]
    nodes = program.graph.nodes  # after fusion: what really runs
    assert [e["name"] for e in ops] == [n.name for n in nodes]
    assert all(e["dur"] >= 0 and {"ts", "pid", "tid"} <= e.keys() for e in ops)
    assert ops[0]["args"]["op"] == nodes[0].qualified_op
    unfused = Profiler()
    nerve.compile(affine_relu(4), fuse=False).run({"x": np.ones(4, np.float32)}, profile=unfused)
    names = [e["name"] for e in unfused.to_dict()["traceEvents"] if e.get("cat", "")[:2] == "op"]
    assert names == ["mul", "add", "relu"]
    path = tmp_path / "trace.json"
    outputs = profile_run(program, {"x": np.ones(4, np.float32)}, path)
    assert "y" in outputs
    loaded = json.loads(path.read_text())
    assert loaded["displayTimeUnit"] == "ms"
    assert {nodes[0].name, "run"} <= {e["name"] for e in loaded["traceEvents"]}


def test_compile_report_is_available_from_the_program() -> None:
    program = nerve.compile(affine_relu(4))
    assert program.report.target == "host"
    assert program.report.format().startswith("compile report")


def test_native_engine_reads_the_feed_in_place() -> None:
    """On the native engine the generated code gets the caller's pointer (one foreign call)."""
    try:
        program = nerve.compile(affine_relu(8), "cpu")
    except nerve.NerveError as exc:  # no C compiler here: the cpu target is not available
        pytest.skip(f"native engine unavailable: {exc}")
    if program.engine != "native":
        pytest.skip("the cpu target fell back to the host engine (no C compiler)")
    x = np.arange(8, dtype=np.float32)
    y = program.run({"x": x})["y"]
    np.testing.assert_allclose(y, expected(x), rtol=1e-6)
    parts = [p for exe in program._executables for p in getattr(exe, "parts", [exe])]
    pointers = [part._table[slot] for part in parts  # type: ignore[attr-defined]
                for slot, name, _ in part._inputs if name == "x"]  # type: ignore[attr-defined]
    assert pointers and all(p == address(x) for p in pointers)
    with nerve.Runtime() as rt:  # and the scheduler gives the native engine its own worker
        job = rt.submit(program, {"x": x})
        np.testing.assert_array_equal(job.result(30)["y"], y)
        assert set(rt._lanes) == {"native"}

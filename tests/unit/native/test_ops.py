"""Every native kernel path against the host engine (the oracle), fused and unfused.

All cases are compiled in one ``native.batch()``: one C compiler run builds them all.
"""

from __future__ import annotations

import numpy as np
import pytest

import nerve
from nerve.engines import native
from nerve.engines.native.executable import NativePart, SequenceExecutable

from .models import BUILDERS, Case

FUSE = (True, False)


def parts(program: nerve.Program) -> list[object]:
    """The executables a program runs, with native segments' host fallbacks listed too."""
    out: list[object] = []
    for exe in program._executables:
        out.extend(exe.parts if isinstance(exe, SequenceExecutable) else [exe])
    return out


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[Case, dict[bool, nerve.Program]]]:
    rng = np.random.default_rng(0)
    cases = [build(rng) for build in BUILDERS]
    programs: dict[str, tuple[Case, dict[bool, nerve.Program]]] = {}
    with native.batch():
        for case in cases:
            options = dict(case.options)
            fuses = [bool(options.pop("fuse"))] if "fuse" in options else list(FUSE)
            compiled = {
                f: nerve.compile(case.model, target="cpu", fuse=f, **options) for f in fuses
            }
            programs[case.name] = (case, compiled)
    return programs


@pytest.mark.parametrize("name", [b.__name__ for b in BUILDERS])
def test_matches_host(built: dict[str, tuple[Case, dict[bool, nerve.Program]]], name: str) -> None:
    case, compiled = built[name]
    reference = nerve.compile(case.model, target="host", fuse=False).run(case.feeds)
    for fuse, program in compiled.items():
        if case.native_when_fused or not fuse:
            assert any(isinstance(p, NativePart) for p in parts(program)), "nothing ran natively"
        with np.errstate(all="ignore"):
            got = program.run(case.feeds)
        assert set(got) == set(reference)
        for key, want in reference.items():
            assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
            np.testing.assert_allclose(
                got[key], want, rtol=case.rtol, atol=case.atol, err_msg=f"{key} (fuse={fuse})"
            )


def test_runs_are_repeatable_and_results_independent(
    built: dict[str, tuple[Case, dict[bool, nerve.Program]]],
) -> None:
    """A second run must not overwrite the arrays the first one returned."""
    case, compiled = built["matmul_bias_relu_folded"]
    program = compiled[True]
    first = program.run(case.feeds)["y"]
    kept = first.copy()
    other = {k: v * 2 for k, v in case.feeds.items()}
    second = program.run(other)["y"]
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)


def test_unclaimed_nodes_run_on_host_inside_the_segment() -> None:
    """A native segment holding a node the engine does not claim runs it on host."""
    from nerve.engines.host import HostEngine
    from nerve.runtime.compile import load_graph

    case = next(b for b in BUILDERS if b.__name__ == "with_host_fallback")(np.random.default_rng(1))
    graph = load_graph(case.model)
    segment, plan = native.segment_plan(graph)
    exe = native.NativeEngine().build(segment, plan)
    assert isinstance(exe, SequenceExecutable)
    kinds = [type(p).__name__ for p in exe.parts]
    assert "NativePart" in kinds and "HostExecutable" in kinds
    env = {**graph.constants, **graph.weights, **case.feeds}
    exe.run(env)
    ref_env = {**graph.constants, **graph.weights, **case.feeds}
    HostEngine().build(segment, plan).run(ref_env)
    np.testing.assert_allclose(env["y"], ref_env["y"], rtol=1e-6)


def test_elementwise_chain_is_one_loop(
    built: dict[str, tuple[Case, dict[bool, nerve.Program]]],
) -> None:
    _, compiled = built["broadcast_chain"]
    native_parts = [p for p in parts(compiled[False]) if isinstance(p, NativePart)]
    assert len(native_parts) == 1
    # Six ONNX nodes, one generated loop, one kernel step.
    assert len(native_parts[0].code.steps) == 1
    assert native_parts[0].code.code.count("nk_parallel_for(") == 1


def test_gemm_epilogue_is_fused(built: dict[str, tuple[Case, dict[bool, nerve.Program]]]) -> None:
    _, compiled = built["matmul_bias_relu_folded"]
    (part,) = [p for p in parts(compiled[False]) if isinstance(p, NativePart)]
    assert [type(s).__name__ for s in part.code.steps] == ["GemmStep"]
    assert "nk_matmul" in part.code.code

"""Without a C compiler the native engine warns once and the host engine runs instead."""

from __future__ import annotations

import numpy as np
import pytest

import nerve
from nerve.engines.host import HostExecutable
from nerve.engines.native import NativeEngine, segment_plan
from nerve.engines.native.toolchain import find_toolchain
from nerve.runtime.compile import load_graph

from .models import make, node, rand


def _model():  # type: ignore[no-untyped-def]
    feeds = {"x": rand(np.random.default_rng(0), 3, 4)}
    nodes = [node("Relu", ["x"], "r"), node("Softmax", ["r"])]
    return make(nodes, feeds, ["y"]), feeds


def test_missing_compiler_warns_and_runs_on_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NERVE_CC", "/nonexistent/nerve-test-cc")
    model, feeds = _model()
    with pytest.warns(RuntimeWarning, match="no C compiler found.*NERVE_CC"):
        assert find_toolchain() is None
    segment, plan = segment_plan(load_graph(model))
    assert isinstance(NativeEngine().build(segment, plan), HostExecutable)
    program = nerve.compile(model, target="cpu")
    want = nerve.compile(model, target="host").run(feeds)["y"]
    np.testing.assert_allclose(program.run(feeds)["y"], want, rtol=1e-6)


def test_the_warning_is_given_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NERVE_CC", "/nonexistent/nerve-test-cc-2")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        find_toolchain()
        find_toolchain()
        model, _ = _model()
        nerve.compile(model, target="cpu")
    relevant = [w for w in caught if "no C compiler" in str(w.message)]
    assert len(relevant) == 1

"""The null engine: runs nothing, for scheduler, worker and service tests.

Its executables produce read-only zero outputs of the right shape and dtype without touching
memory (a broadcast of one zero), optionally after a fixed delay, so tests can hold a "run" in
progress for as long as they need and benchmarks can measure the machinery around a run.

>>> from nerve.ir import Graph, Node, TensorType, DType
>>> from nerve.compiler import compile as compile_plan
>>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (2,)))
>>> _ = g.add_node(Node("Relu", ["x"], ["y"]), {"y": TensorType(DType.FLOAT32, (2,))})
>>> g.set_outputs(["y"])
>>> plan = compile_plan(g)
>>> env = {"x": None}; NullEngine().build(plan.segments[0], plan).run(env); env["y"]
array([0., 0.], dtype=float32)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from nerve.engines.base import Env

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan, Segment


class NullExecutable:
    def __init__(
        self,
        outputs: dict[str, np.ndarray],
        delay_s: float,
        on_run: Callable[[Env], None] | None,
    ) -> None:
        self.outputs = outputs
        self.delay_s = delay_s
        self.on_run = on_run
        self.runs = 0

    def run(self, env: Env) -> None:
        self.runs += 1
        if self.on_run is not None:
            self.on_run(env)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        env.update(self.outputs)


class NullEngine:
    """An engine whose executables do nothing but (optionally) wait ``delay_s`` per run."""

    name = "null"

    def __init__(
        self, delay_s: float = 0.0, on_run: Callable[[Env], None] | None = None
    ) -> None:
        self.delay_s = delay_s
        self.on_run = on_run

    def build(self, segment: Segment, plan: Plan) -> NullExecutable:
        types = plan.graph.types
        outputs = {}
        for name in segment.outputs:
            t = types[name]
            outputs[name] = np.broadcast_to(np.zeros((), t.dtype.numpy), t.shape)
        return NullExecutable(outputs, self.delay_s, self.on_run)


__all__ = ["NullEngine", "NullExecutable"]

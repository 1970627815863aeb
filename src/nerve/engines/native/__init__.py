"""The native engine: each Plan segment becomes generated C, compiled by the system C compiler
into a shared library (cached), and runs as one foreign call.

>>> import numpy as np, nerve
>>> from nerve.compiler.plan import Plan, Segment
>>> from nerve.ir import Graph, Node, TensorType, DType
>>> g = Graph("g")
>>> g.add_input("x", TensorType(DType.FLOAT32, (2, 3)))
>>> _ = g.add_node(Node("Relu", ["x"], ["y"]), {"y": TensorType(DType.FLOAT32, (2, 3))})
>>> g.set_outputs(["y"])
>>> exe = NativeEngine().build(*segment_plan(g))  # doctest: +SKIP
>>> env = {"x": np.array([[-1, 2, -3], [4, -5, 6]], np.float32)}
>>> exe.run(env); env["y"]  # doctest: +SKIP
array([[0., 2., 0.],
       [4., 0., 6.]], dtype=float32)

Threads come from the compile option ``threads=`` or ``NERVE_THREADS`` (0: one per core).
Inside :func:`batch`, segments are collected and compiled together in one compiler run (the
conformance tests build hundreds of tiny segments this way).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nerve import flags
from nerve.engines.base import Executable
from nerve.engines.native import cache, lower_bf16
from nerve.engines.native.claims import NATIVE_OPS, claims, why_not
from nerve.engines.native.codegen import generate
from nerve.engines.native.executable import NativePart, SequenceExecutable
from nerve.engines.native.toolchain import Toolchain, find_toolchain, log
from nerve.ir import Graph, Node

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan, Segment


def thread_count(plan: Plan | None = None) -> int:
    """Threads for native kernels: ``threads=`` compile option, else NERVE_THREADS, else cores."""
    requested = 0
    if plan is not None and plan.options.get("threads") is not None:
        requested = int(plan.options["threads"])  # type: ignore[call-overload]
    if requested <= 0:
        requested = flags.get_int("NERVE_THREADS")
    if requested <= 0:
        try:
            requested = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            requested = os.cpu_count() or 1
    return max(1, requested)


class _Batch:
    def __init__(self) -> None:
        self.pending: list[NativePart] = []


_batch: _Batch | None = None


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Compile every native segment built inside the block in one compiler run at its end."""
    global _batch
    if _batch is not None:  # nested: the outer block compiles
        yield
        return
    _batch = _Batch()
    try:
        yield
        pending, _batch = _batch.pending, None
        _compile(pending)
    finally:
        _batch = None


def _compile(parts: list[NativePart]) -> None:
    tc = find_toolchain()
    if not parts or tc is None:
        return
    kernels = cache.kernel_library(tc)
    identity = tc.identity + kernels.hash
    todo = [p for p in parts if p.library is None]
    missing = []
    for part in todo:
        found = cache.lookup(part.code.key, identity)
        if found is not None:
            part.attach(found)
        else:
            missing.append(part)
    if missing:
        units = [cache.Unit(p.code.key, p.code.symbol, p.code.code) for p in missing]
        library = cache.build_units(tc, kernels, units)
        for part in missing:
            part.attach(library)


def _split_claimed(graph: Graph, nodes: list[Node]) -> list[tuple[bool, list[Node]]]:
    runs: list[tuple[bool, list[Node]]] = []
    for node in nodes:
        native = claims(node, graph)
        if runs and runs[-1][0] == native:
            runs[-1][1].append(node)
        else:
            runs.append((native, [node]))
    return runs


class NativeEngine:
    """Builds native executables; falls back to the host engine without a C compiler."""

    name = "native"

    def build(self, segment: Segment, plan: Plan) -> Executable:
        from nerve.engines.host import HostExecutable

        tc = find_toolchain()
        if tc is None:  # find_toolchain warned once already
            return HostExecutable(plan.graph, segment.nodes, plan.keep_alive(segment))
        keep_after = plan.keep_alive(segment)
        runs = _split_claimed(plan.graph, segment.nodes)
        threads = thread_count(plan)
        parts: list[Executable] = []
        for i, (native, nodes) in enumerate(runs):
            later = {name for _, ns in runs[i + 1 :] for n in ns for name in n.inputs if name}
            keep = keep_after | later
            if native:
                parts.append(self._native_part(tc, plan, nodes, keep, threads))
            else:
                unclaimed = sorted({f"{n.op_type} ({why_not(n, plan.graph)})" for n in nodes})
                log.info("native segment runs %d nodes on host: %s", len(nodes), unclaimed)
                parts.append(HostExecutable(plan.graph, nodes, keep))
        if _batch is None:
            _compile([p for p in parts if isinstance(p, NativePart)])
        _report_kernels(plan, segment, [p for p in parts if isinstance(p, NativePart)])
        lower_bf16.report(plan)
        return parts[0] if len(parts) == 1 else SequenceExecutable(parts)

    def _native_part(
        self, tc: Toolchain, plan: Plan, nodes: list[Node], keep: set[str], threads: int
    ) -> NativePart:
        kernels = cache.kernel_library(tc)
        offsets = getattr(plan, "arena_offsets", None)
        features = tuple(plan.target.features)
        code = generate(plan.graph, nodes, keep, tc.identity + kernels.hash, offsets, features)
        part = NativePart(plan.graph, code, threads)
        if _batch is not None:
            _batch.pending.append(part)
        return part


def _report_kernels(plan: Plan, segment: Segment, parts: list[NativePart]) -> None:
    """Name in the CompileReport the special kernels the segment runs (steps that carry a
    ``kernel`` name, such as the int8 products and the ISA variant they run), counted."""
    counts: dict[str, int] = {}
    for part in parts:
        for step in part.code.steps:
            kernel = getattr(step, "kernel", "")
            if kernel:
                counts[kernel] = counts.get(kernel, 0) + 1
    if counts:
        text = "; ".join(f"{n} x {kernel}" for kernel, n in sorted(counts.items()))
        note = f"native segment {segment.index}: {text}"
        if note not in plan.report.notes:  # a plan from the cache already carries it
            plan.report.notes.append(note)


def segment_plan(graph: Graph, engine: str = "native", **options: object) -> tuple[Segment, Plan]:
    """A one-segment Plan over every node of ``graph`` (for tests and tools)."""
    from nerve.compiler.plan import Plan, Segment
    from nerve.compiler.report import CompileReport
    from nerve.compiler.targets import get_target
    from nerve.ir import structural_key

    segment = Segment(0, engine, list(graph.nodes))
    plan = Plan(
        graph=graph,
        target=get_target("host"),
        segments=[segment],
        key=structural_key(graph, {"engine": engine}),
        report=CompileReport(target="host"),
        options=dict(options),
    )
    return segment, plan


__all__ = [
    "NATIVE_OPS",
    "NativeEngine",
    "batch",
    "claims",
    "segment_plan",
    "thread_count",
    "why_not",
]

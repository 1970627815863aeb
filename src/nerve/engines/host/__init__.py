"""The host engine: numpy kernels for every supported op — the oracle and the fallback.

It executes a segment's nodes in order, frees each intermediate after its last use, and checks
every kernel result against the IR's type (shape and dtype), so a kernel bug is an error naming
the node rather than a silently wrong answer downstream.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nerve import flags
from nerve.engines.base import Env
from nerve.engines.host.registry import as_outputs, get_kernel, wants_types
from nerve.errors import KernelError, NerveError, UnsupportedOperatorError
from nerve.ir import Graph, Node, TensorType

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan, Segment


# Called after each node with (node, start_ns, end_ns) from time.perf_counter_ns (profiling).
NodeHook = Callable[[Node, int, int], None]


class HostExecutable:
    # run() accepts on_node=: Program.run(profile=...) uses it for a per-op trace.
    supports_node_hook = True

    def __init__(self, graph: Graph, nodes: list[Node], keep: set[str]) -> None:
        self.graph = graph
        missing: dict[str, list[str]] = {}
        steps = []
        for node in nodes:
            fn = get_kernel(node.op_type, node.domain)
            if fn is None:
                missing.setdefault(node.qualified_op, []).append(node.name)
                continue
            if wants_types(node.op_type, node.domain):
                in_types = [graph.types[i] if i else None for i in node.inputs]
                fn = functools.partial(fn, input_types=in_types)
            steps.append((fn, node))
        if missing:
            raise UnsupportedOperatorError(missing, detail="the host engine has no kernel for them")
        self.steps = steps
        # Liveness: after step i, drop the intermediates whose last reader is step i.
        last_use: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for name in node.inputs:
                last_use[name] = i
        produced = {o for n in nodes for o in n.outputs}
        self.release: list[list[str]] = [[] for _ in nodes]
        for name, i in last_use.items():
            if name in produced and name not in keep:
                self.release[i].append(name)
        self.check = flags.get_bool("NERVE_CHECK_KERNELS")

    def run(self, env: Env, on_node: NodeHook | None = None) -> None:
        types = self.graph.types
        for (fn, node), release in zip(self.steps, self.release):
            args = [env[i] if i else None for i in node.inputs]
            start = time.perf_counter_ns() if on_node is not None else 0
            try:
                results = as_outputs(node, fn(node, *args))
            except NerveError:
                raise
            except Exception as exc:
                raise KernelError(
                    f"node {node.name!r} ({node.qualified_op}) failed: {type(exc).__name__}: {exc}"
                ) from exc
            if len(results) < len([o for o in node.outputs if o]):
                raise KernelError(
                    f"node {node.name!r} ({node.op_type}): kernel returned {len(results)} "
                    f"outputs, the node has {len(node.outputs)}"
                )
            for out, value in zip(node.outputs, results):
                if not out:
                    continue
                if self.check:
                    expected = types[out]
                    if value.shape != expected.shape or value.dtype != expected.dtype.numpy:
                        raise KernelError(
                            f"node {node.name!r} ({node.op_type}) output {out!r}: kernel gave "
                            f"{value.dtype}{list(value.shape)}, IR says {expected} — a kernel "
                            "or shape-rule bug; please report it"
                        )
                env[out] = value
            if on_node is not None:
                on_node(node, start, time.perf_counter_ns())
            for name in release:
                env.pop(name, None)


class HostEngine:
    name = "host"

    def build(self, segment: Segment, plan: Plan) -> HostExecutable:
        return HostExecutable(plan.graph, segment.nodes, plan.keep_alive(segment))


def evaluate(
    node: Node,
    *inputs: np.ndarray | None,
    input_types: Sequence[TensorType | None] | None = None,
) -> list[np.ndarray]:
    """Run one node's host kernel (used for constant folding and debugging).

    Give ``input_types`` whenever an input may be bfloat16: without them a typed kernel (Cast)
    takes uint16 arrays for the uint16 they look like.
    """
    fn = get_kernel(node.op_type, node.domain)
    if fn is None:
        raise UnsupportedOperatorError({node.qualified_op: [node.name]})
    if input_types is not None and wants_types(node.op_type, node.domain):
        return as_outputs(node, fn(node, *inputs, input_types=list(input_types)))
    return as_outputs(node, fn(node, *inputs))


__all__ = ["HostEngine", "HostExecutable", "evaluate"]

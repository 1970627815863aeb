"""Helpers the ANE restriction modules share: op tests, tensor sizes, host-placing fixers,
the per-node diagnostic loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from nerve.compiler.context import PassContext
from nerve.compiler.passes import decompose
from nerve.compiler.restrictions import CheckContext, Diagnostic, Restriction
from nerve.ir import Graph, Node


def nbytes(ctx: CheckContext, name: str) -> int:
    """Bytes of tensor ``name`` in the graph under check."""
    return ctx.graph.types[name].nbytes


def is_op(node: Node, *ops: str) -> bool:
    """Whether ``node`` is one of the ONNX-domain ``ops``."""
    return node.domain == "" and node.op_type in ops


def producer_of(graph: Graph, name: str) -> Node | None:
    """The node that computes tensor ``name`` (None for inputs, weights and constants)."""
    return next((n for n in graph.nodes if name in n.outputs), None)


def host_fixer(predicate: Callable[[Node, Graph], bool]) -> Callable[[Graph, PassContext], int]:
    """A fixer that sends every node ``predicate`` accepts to the host engine."""

    def fixer(graph: Graph, ctx: PassContext) -> int:
        return decompose.place_on_host(graph, ctx, lambda n: predicate(n, graph))

    return fixer


def model_io(ctx: CheckContext) -> list[str]:
    """Model inputs and outputs that are surfaces of some ANE program."""
    model = set(ctx.graph.input_names) | set(ctx.graph.output_names)
    return list(dict.fromkeys(
        n for p in ctx.programs for n in (*p.inputs, *p.outputs) if n in model
    ))


def flag_nodes(
    ctx: CheckContext,
    r: Restriction,
    predicate: Callable[[Node, Graph], bool],
    message: str | Callable[[Node], str],
) -> Iterator[Diagnostic]:
    """A diagnostic of ``r`` naming each target node ``predicate`` accepts; ``message`` is
    the text, or a function of the node that gives it."""
    for node in ctx.target_nodes():
        if predicate(node, ctx.graph):
            yield r.diagnose(message if isinstance(message, str) else message(node), node=node)

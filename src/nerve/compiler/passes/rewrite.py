"""A small pattern-rewrite toolkit the passes share.

A *rule* is a function ``(rw, node) -> bool``: it looks at ``node`` (the anchor: the last node
of the pattern it knows) through the :class:`Rewriter`, and when the pattern matches it edits
the graph with :meth:`Rewriter.replace` and returns True. :func:`apply_rules` runs rules over
the graph until none applies, counting each application under the rule's name.

Replacement nodes take the anchor's place in the node order and keep the anchor's output
names, so consumers need no rewiring and every input of a replacement is defined before it.
A pattern may swallow intermediate values only if nothing outside it reads them
(:meth:`Rewriter.private`).

>>> import numpy as np
>>> from nerve.ir import DType, Graph, Node, TensorType
>>> t = TensorType(DType.FLOAT32, (2,))
>>> g = Graph("g"); g.add_input("x", t)
>>> _ = g.add_node(Node("Neg", ["x"], ["a"]), {"a": t})
>>> _ = g.add_node(Node("Neg", ["a"], ["b"]), {"b": t})
>>> g.set_outputs(["b"])
>>> def double_neg(rw, node):
...     inner = rw.producer(node.inputs[0]) if node.op_type == "Neg" else None
...     if inner is None or inner.op_type != "Neg" or not rw.private(inner.outputs[0], node):
...         return False
...     rw.replace([inner, node], [Node("Identity", inner.inputs, node.outputs)])
...     return True
>>> apply_rules(g, [("double_neg", double_neg)])
{'double_neg': 1}
>>> [n.op_type for n in g.nodes]
['Identity']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nerve.errors import CompileError
from nerve.ir import Graph, Node, TensorType, infer_node

if TYPE_CHECKING:
    from nerve.compiler.bake import BakeRecipe
    from nerve.compiler.context import PassContext

Rule = Callable[["Rewriter", Node], bool]

MAX_ROUNDS = 64


class Rewriter:
    """A graph plus the indexes pattern rules need (producers, consumers, outputs).

    ``ctx`` is the compile's :class:`~nerve.compiler.context.PassContext` when the rules
    need it (the bake book, the target, placements).
    """

    def __init__(self, graph: Graph, ctx: PassContext | None = None) -> None:
        self.graph = graph
        self._ctx = ctx
        self._outputs = set(graph.output_names)
        # Indexes kept up to date edit by edit (a rebuild per edit would make fusing a large
        # graph quadratic). Node order is a sortable key per node: replacements extend their
        # anchor's key, so they sort where the anchor was; graph.nodes follows at commit().
        self._producers: dict[str, Node] = {}
        self._consumers: dict[str, dict[int, Node]] = {}
        self._alive: dict[int, Node] = {}
        self._key: dict[int, tuple[int, ...]] = {}
        for i, node in enumerate(graph.nodes):
            self._add(node, (i,))
        self._dirty = False

    @property
    def ctx(self) -> PassContext:
        if self._ctx is None:
            raise CompileError("this rewrite needs a compile context — a compiler bug")
        return self._ctx

    def _add(self, node: Node, key: tuple[int, ...]) -> None:
        self._alive[id(node)] = node
        self._key[id(node)] = key
        self._index(node)

    def _index(self, node: Node) -> None:
        for out in node.outputs:
            if out:
                self._producers[out] = node
        for inp in node.inputs:
            if inp:
                self._consumers.setdefault(inp, {})[id(node)] = node

    def _unindex(self, node: Node) -> None:
        for out in node.outputs:
            if out and self._producers.get(out) is node:
                del self._producers[out]
        for inp in node.inputs:
            if inp:
                self._consumers.get(inp, {}).pop(id(node), None)

    def commit(self) -> None:
        """Bring ``graph.nodes`` up to date with the edits (in topological order)."""
        if self._dirty:
            self.graph.nodes = sorted(self._alive.values(), key=lambda n: self._key[id(n)])
            self._dirty = False

    # ---- queries ------------------------------------------------------------------------
    def alive(self, node: Node) -> bool:
        return id(node) in self._alive

    def producer(self, name: str) -> Node | None:
        return self._producers.get(name) if name else None

    def consumers(self, name: str) -> list[Node]:
        return list(self._consumers.get(name, {}).values())

    def is_output(self, name: str) -> bool:
        return name in self._outputs

    def private(self, name: str, *readers: Node) -> bool:
        """Whether only ``readers`` read ``name`` (and it is not a graph output)."""
        if name in self._outputs:
            return False
        ids = {id(r) for r in readers}
        return all(id(c) in ids for c in self.consumers(name))

    def type(self, name: str) -> TensorType:
        return self.graph.types[name]

    def const(self, name: str) -> np.ndarray | None:
        """The value of a structural constant (never of a weight)."""
        return self.graph.constants.get(name) if name else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, as a float."""
        value = self.const(name)
        if value is None or value.size != 1 or value.dtype == object:
            return None
        return float(value.reshape(-1)[0])

    def is_weight(self, name: str) -> bool:
        return name in self.graph.params

    def is_static(self, name: str) -> bool:
        """A constant or a weight: known before run time."""
        return name in self.graph.constants or name in self.graph.params

    # ---- building -------------------------------------------------------------------------
    def fresh(self, base: str, type: TensorType) -> str:
        """A new value name, declared with ``type``."""
        name = self.graph.unique_value_name(base)
        self.graph.types[name] = type
        return name

    def constant(self, base: str, value: np.ndarray) -> str:
        """A new structural constant holding ``value``."""
        name = self.graph.unique_value_name(base)
        self.graph.add_constant(name, value)
        return name

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | None = None,
        attrs: Mapping[str, object] | None = None,
        *,
        name: str = "",
        domain: str = "",
    ) -> Node:
        """A new node whose output types are inferred (one fresh output when none is given)."""
        outs = list(outputs or [self.graph.unique_value_name(f"{name or op_type.lower()}_out")])
        node = Node(op_type, list(inputs), outs, dict(attrs or {}), name, domain)
        types = infer_node(node, self.graph.types, self.graph.constants)
        for out, t in zip(node.outputs, types):
            if t is None:
                raise CompileError(f"cannot infer the type of {out!r} made by a rewrite")
            known = self.graph.types.get(out)
            if known is not None and known != t and out in self._producers:
                raise CompileError(
                    f"rewrite changed the type of {out!r} from {known} to {t} — a compiler bug"
                )
            self.graph.types[out] = t
        return node

    def replace(self, old: Iterable[Node], new: Sequence[Node]) -> None:
        """Remove ``old`` and put ``new`` where the last of ``old`` was (in order)."""
        old = [n for n in old if id(n) in self._alive]
        if not old:
            raise CompileError("rewrite of nodes that are not in the graph — a compiler bug")
        anchor = max(self._key[id(n)] for n in old)
        names = self.graph._node_names
        for n in old:
            names.discard(n.name)
            self._unindex(n)
            del self._alive[id(n)], self._key[id(n)]
        for j, n in enumerate(new):
            n.name = self.graph.unique_node_name(n.name or n.op_type)
            names.add(n.name)
            self._add(n, (*anchor, j))
        self._dirty = True

    def set_inputs(self, node: Node, inputs: Sequence[str]) -> None:
        """Rewire ``node`` to read ``inputs``."""
        self._unindex(node)
        node.inputs = list(inputs)
        self._index(node)

    def remove(self, node: Node) -> None:
        """Drop a node whose outputs nothing reads."""
        self.replace([node], [])

    def bypass(self, node: Node, keep: str) -> bool:
        """Remove a no-op ``node`` whose output equals its input ``keep``.

        Readers of the output read ``keep`` instead. When the output is a graph output its
        name must survive, so the producer of ``keep`` is renamed to write it directly; that
        is only possible when ``keep`` is a private node output. Returns False when the
        no-op has to stay.
        """
        out = node.outputs[0]
        if not self.is_output(out):
            self.rename_uses(out, keep)
            self.remove(node)
            return True
        producer = self.producer(keep)
        if producer is None or not self.private(keep, node):
            return False
        self.remove(node)
        self._unindex(producer)
        producer.outputs = [out if o == keep else o for o in producer.outputs]
        self._index(producer)
        return True

    def rename_uses(self, old: str, new: str) -> None:
        for consumer in self.consumers(old):
            self.set_inputs(consumer, [new if i == old else i for i in consumer.inputs])


def apply_rules(
    graph: Graph,
    rules: Sequence[tuple[str, Rule]],
    counts: dict[str, int] | None = None,
    *,
    ctx: PassContext | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, int]:
    """Apply ``rules`` at every node until none applies; returns {rule name: applications}.

    Each round visits the nodes in order and tries the rules in order at each node; the
    first rule that applies ends that node's turn. Rounds repeat while anything changed.
    """
    counts = counts if counts is not None else {}
    rw = Rewriter(graph, ctx)
    for _ in range(max_rounds):
        changed = False
        rw.commit()
        for node in list(graph.nodes):
            if not rw.alive(node):
                continue
            for name, rule in rules:
                if rule(rw, node):
                    counts[name] = counts.get(name, 0) + 1
                    changed = True
                    break
        rw.commit()
        if not changed:
            return counts
    raise CompileError(
        f"rewrites did not settle after {max_rounds} rounds ({counts}) — a compiler bug"
    )


def prune(graph: Graph, recipes: Mapping[str, BakeRecipe] | None = None) -> None:
    """Drop values no node or output refers to.

    Unlike :meth:`Graph.remove_unused`, the model's Params (those with data in
    ``graph.weights``) stay, read or not: they are the model's weight handles. So does every
    constant or weight slot a bake recipe of a used slot reads (``recipes``).
    """
    used = {i for n in graph.nodes for i in n.inputs if i}
    used |= {o for n in graph.nodes for o in n.outputs if o}
    used |= set(graph.input_names) | set(graph.output_names) | set(graph.weights)
    pending = [u for u in used if recipes and u in recipes]
    while pending:
        assert recipes is not None
        for name in recipes[pending.pop()].inputs:
            if name not in used:
                used.add(name)
                if name in recipes:
                    pending.append(name)
    for table in (graph.constants, graph.params, graph.types):
        for name in [k for k in table if k not in used]:
            del table[name]
    graph._node_names = {n.name for n in graph.nodes}


def dead_code(graph: Graph) -> int:
    """Remove nodes none of whose outputs is read or returned; returns how many went."""
    needed = set(graph.output_names)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o and o in needed for o in node.outputs):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    removed = len(graph.nodes) - len(kept)
    graph.nodes = kept[::-1]
    return removed


__all__ = ["Rewriter", "Rule", "apply_rules", "dead_code", "prune"]

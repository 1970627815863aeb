"""Memory planning: every intermediate tensor gets an offset in one scratch arena.

Tensors whose lifetimes do not overlap share bytes. A tensor is live from the step that
produces it to the last step that reads it (both included: a node reads its inputs while it
writes its outputs). Two exceptions let an output take its input's bytes while both are
"live" at the producing step:

* **views** — Reshape, Flatten, Squeeze, Unsqueeze, Identity: the output has the same bytes
  as the input, so they are one buffer whose lifetime is the union of both;
* **in place** — an elementwise op may write its output over an input of the same size when
  that input (and everything sharing its bytes) is never read after this step.

Offsets are assigned greedily, largest buffer first, each at the lowest offset that does not
collide with an already placed buffer whose lifetime overlaps (the "greedy by size" strategy
of TFLite's arena planner). Graph inputs, outputs, constants and weights live elsewhere.

>>> from nerve.ir import DType, Graph, Node, TensorType
>>> t = TensorType(DType.FLOAT32, (256,))
>>> g = Graph("chain"); g.add_input("x", t)
>>> for i, op in enumerate(["Exp", "Relu", "Exp", "Relu"]):
...     _ = g.add_node(Node(op, ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"]), {f"t{i}": t})
>>> g.set_outputs(["t3"])
>>> p = plan_memory(g.nodes, g.types, external={"x", "t3"})
>>> p.total_bytes, p.arena_bytes
(3072, 1024)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nerve.ir import Node, TensorType

ALIGNMENT = 64

VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})

# Ops that read each input element before writing the same output element, so the output
# may overwrite an input of the same size.
IN_PLACE_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "PRelu", "Where",
        "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
        "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sign", "Floor", "Ceil",
        "Round", "Erf", "Gelu", "Softplus", "Softsign", "Mish", "Sin", "Cos", "Clip",
        "nerve.FusedElementwise",
    }
)


@dataclass(frozen=True)
class Buffer:
    """Where one intermediate tensor lives in the scratch arena."""

    name: str
    offset: int
    nbytes: int
    first: int  # step that produces it
    last: int  # last step that reads it (== first when nothing reads it)
    group: int  # tensors with the same group share bytes by design (views, in place)
    shares: str | None = None  # the tensor whose bytes it took
    kind: str = ""  # "view" | "in_place" | "" (its own bytes)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass
class MemoryPlan:
    """Offsets for every intermediate, the arena's size, and what the sharing saved."""

    buffers: dict[str, Buffer] = field(default_factory=dict)
    arena_bytes: int = 0
    total_bytes: int = 0  # sum of every intermediate's (aligned) size: the no-reuse arena
    peak_live_bytes: int = 0  # the most bytes live at one step: a lower bound on the arena

    def offset(self, name: str) -> int:
        return self.buffers[name].offset

    @property
    def in_place(self) -> list[tuple[str, str, str]]:
        """(output, input, kind) for every buffer that took another's bytes."""
        return [(b.name, b.shares, b.kind) for b in self.buffers.values() if b.shares]

    def summary(self) -> str:
        saved = 1 - self.arena_bytes / self.total_bytes if self.total_bytes else 0.0
        return (
            f"scratch arena {self.arena_bytes:,} B for {len(self.buffers)} intermediates "
            f"totalling {self.total_bytes:,} B ({saved:.0%} saved; peak live "
            f"{self.peak_live_bytes:,} B; {len(self.in_place)} in place or views)"
        )


def _aligned(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def plan_memory(
    nodes: Sequence[Node],
    types: Mapping[str, TensorType],
    *,
    external: Iterable[str] = (),
    alignment: int = ALIGNMENT,
    in_place: bool = True,
) -> MemoryPlan:
    """Assign arena offsets to every output of ``nodes`` not named in ``external``.

    ``nodes`` are in execution order. ``external`` names tensors that live outside the arena
    (graph inputs and outputs, constants, weights, values handed to another engine).
    """
    outside = set(external)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, node in enumerate(nodes):
        for name in node.inputs:
            if name in first:
                last[name] = step
        for name in node.outputs:
            if name and name not in outside:
                first[name] = last[name] = step
    size = {n: _aligned(types[n].nbytes, alignment) for n in first}

    # Union-find over tensors that share bytes by design.
    root: dict[str, str] = {n: n for n in first}
    group_last: dict[str, int] = dict(last)
    shares: dict[str, tuple[str, str]] = {}

    def find(n: str) -> str:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    def join(out: str, inp: str, kind: str) -> None:
        r = find(inp)
        root[out] = r
        group_last[r] = max(group_last[r], last[out])
        shares[out] = (inp, kind)

    for step, node in enumerate(nodes):
        taken: set[str] = set()
        for out in node.outputs:
            if out not in first or not size[out]:
                continue
            for inp in _share_candidates(node, out, first, size, types):
                r = find(inp)
                if r in taken:
                    continue
                if node.op_type in VIEW_OPS and node.domain == "":
                    join(out, inp, "view")
                elif in_place and group_last[r] == step:
                    join(out, inp, "in_place")
                else:
                    continue
                taken.add(r)
                break

    groups: dict[str, list[str]] = {}
    for n in first:
        groups.setdefault(find(n), []).append(n)
    span = {
        r: (min(first[m] for m in ms), max(last[m] for m in ms), max(size[m] for m in ms))
        for r, ms in groups.items()
    }
    offsets = _assign_offsets(span)

    plan = MemoryPlan()
    group_ids = {r: i for i, r in enumerate(groups)}
    for n in first:
        r = find(n)
        src, kind = shares.get(n, (None, ""))
        plan.buffers[n] = Buffer(
            n, offsets[r], size[n], first[n], last[n], group_ids[r], src, kind
        )
    plan.arena_bytes = max((offsets[r] + s for r, (_, _, s) in span.items()), default=0)
    plan.total_bytes = sum(size.values())
    plan.peak_live_bytes = _peak_live(span, len(nodes))
    return plan


def _share_candidates(
    node: Node,
    out: str,
    first: Mapping[str, int],
    size: Mapping[str, int],
    types: Mapping[str, TensorType],
) -> list[str]:
    if node.op_type not in VIEW_OPS and node.qualified_op not in IN_PLACE_OPS:
        return []
    if node.op_type in VIEW_OPS:
        candidates = node.inputs[:1]
    else:
        candidates = list(node.inputs)
    return [
        i for i in candidates
        if i in first and size[i] == size[out] and types[i].nbytes == types[out].nbytes
    ]


def _assign_offsets(span: Mapping[str, tuple[int, int, int]]) -> dict[str, int]:
    """Greedy by size: biggest first, each at the lowest offset free during its lifetime."""
    order = sorted(span, key=lambda r: (-span[r][2], span[r][0], r))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[str, int] = {}
    for r in order:
        lo, hi, nbytes = span[r]
        busy = sorted((o, e) for o, e, f, l in placed if f <= hi and lo <= l and e > o)
        offset = 0
        for o, e in busy:
            if offset + nbytes <= o:
                break
            offset = max(offset, e)
        offsets[r] = offset
        placed.append((offset, offset + nbytes, lo, hi))
    return offsets


def _peak_live(span: Mapping[str, tuple[int, int, int]], steps: int) -> int:
    delta = [0] * (steps + 1)
    for lo, hi, nbytes in span.values():
        delta[lo] += nbytes
        delta[hi + 1] -= nbytes
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def conflicts(plan: MemoryPlan) -> list[tuple[str, str]]:
    """Pairs of tensors that are live at the same step and overlap in bytes without sharing
    by design — a correct plan has none (the property the tests check)."""
    found = []
    items = sorted(plan.buffers.values(), key=lambda b: b.offset)
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            if b.offset >= a.end:
                break
            if a.group != b.group and a.first <= b.last and b.first <= a.last and a.nbytes \
                    and b.nbytes:
                found.append((a.name, b.name))
    return found


__all__ = ["ALIGNMENT", "Buffer", "MemoryPlan", "conflicts", "plan_memory"]

"""Where every tensor of a native segment lives.

* **input** — read from the run's environment (a graph input, or an earlier segment's output);
  its address is set per run.
* **param** — a weight slot; bound once, re-bound only when the run's environment holds a
  different array for it (a weight update or a baked slot the runtime computed).
* **fixed** — a constant of the graph; its address is set once when the executable is built.
* **output** — needed after the segment (a graph output or read by a later segment); a fresh
  array per run, so results handed to the caller are never overwritten by the next run.
* **scratch** — internal; an offset in the segment's scratch arena, reused once dead.

Views (Reshape, Flatten, Squeeze, Unsqueeze, Identity) are aliases of their input's buffer and
cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from nerve.ir import TensorType

ALIGN = 64


@dataclass
class Buffer:
    root: str
    kind: str  # "input" | "param" | "fixed" | "output" | "scratch"
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]
    slot: int = -1  # pointer-table index (input, output, fixed)
    offset: int = -1  # arena offset (scratch)


@dataclass
class BufferPlan:
    buffers: dict[str, Buffer]  # by root name
    alias: dict[str, str]  # tensor name -> root name
    slots: list[Buffer] = field(default_factory=list)
    scratch_bytes: int = 0
    workspaces: dict[int, int] = field(default_factory=dict)  # step index -> arena offset

    def of(self, name: str) -> Buffer:
        return self.buffers[self.alias.get(name, name)]


def root_of(alias: dict[str, str], name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


def plan_buffers(
    types: Mapping[str, TensorType],
    params: set[str],
    constants: set[str],
    step_reads: list[list[str]],
    step_writes: list[list[str]],
    step_workspace: list[int],
    alias: dict[str, str],
    keep: set[str],
    arena_offsets: dict[str, int] | None = None,
) -> BufferPlan:
    """Assign every tensor the steps touch to a buffer and lay out the scratch arena.

    Scratch buffers share arena space when their lifetimes (first write to last read, both
    inclusive, views counting as reads of their root) do not overlap.
    """
    resolved = {name: root_of(alias, name) for name in alias}
    produced_at: dict[str, int] = {}
    for i, writes in enumerate(step_writes):
        for name in writes:
            produced_at.setdefault(resolved.get(name, name), i)
    last_use: dict[str, int] = {}
    for i, reads in enumerate(step_reads):
        for name in reads:
            last_use[resolved.get(name, name)] = i
    kept_roots = {resolved.get(n, n) for n in keep}
    names = [n for rw in (*step_reads, *step_writes) for n in rw]
    buffers: dict[str, Buffer] = {}
    for name in names:
        root = resolved.get(name, name)
        if root in buffers:
            continue
        t = types[root]
        if root in constants:
            kind = "fixed"
        elif root in params:
            kind = "param"
        elif root in produced_at:
            kind = "output" if root in kept_roots else "scratch"
        else:
            kind = "input"
        buffers[root] = Buffer(root, kind, t.nbytes, t.dtype.numpy, t.shape)
    # Produced roots that only views read, and kept: still outputs.
    plan = BufferPlan(buffers, resolved)
    for kind in ("input", "output", "param", "fixed"):
        for b in buffers.values():
            if b.kind == kind:
                b.slot = len(plan.slots)
                plan.slots.append(b)
    # Scratch layout: greedy first fit over lifetimes in step order.
    intervals: list[tuple[int, int, int, str | int]] = []  # (start, end, size, key)
    for b in buffers.values():
        if b.kind == "scratch":
            start = produced_at[b.root]
            intervals.append((start, max(last_use.get(b.root, start), start), b.nbytes, b.root))
    for i, ws in enumerate(step_workspace):
        if ws:
            intervals.append((i, i, ws, i))
    scratch = [b for b in buffers.values() if b.kind == "scratch"]
    if arena_offsets is not None and all(b.root in arena_offsets for b in scratch):
        # The compiler's memory plan covers every scratch tensor: use its offsets, and put the
        # kernels' workspaces after its arena.
        top = max((arena_offsets[b.root] + b.nbytes for b in scratch), default=0)
        for b in scratch:
            b.offset = arena_offsets[b.root]
        for i, ws in enumerate(step_workspace):
            if ws:
                plan.workspaces[i] = _align(top)
        top = _align(top) + max(step_workspace, default=0)
        plan.scratch_bytes = _align(top)
        return plan
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    top = 0
    for start, end, size, key in sorted(intervals, key=lambda iv: (-iv[2], iv[0])):
        size = max(_align(size), ALIGN)
        offset, moved = 0, True
        while moved:  # first fit: move past every block alive at the same time
            moved = False
            for o, s, a, e in placed:
                if not (e < start or end < a) and o < offset + size and offset < o + s:
                    offset = _align(o + s)
                    moved = True
        placed.append((offset, size, start, end))
        top = max(top, offset + size)
        if isinstance(key, str):
            buffers[key].offset = offset
        else:
            plan.workspaces[key] = offset
    plan.scratch_bytes = top
    return plan


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN

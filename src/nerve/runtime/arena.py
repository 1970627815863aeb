"""The weight arena: every weight slot a Program reads, in one aligned block of memory.

The arena is produced only by running the Plan's bake recipes over the model's Params
(:mod:`nerve.compiler.bake`): a plain Param is copied in, a BatchNorm-folded, transposed or
cast slot is computed and written in. Each slot is a *read-only* view at a 64-byte aligned
offset, so nothing but the arena itself can write it; engines read the slots in place (the
native engine binds their addresses once). :meth:`WeightArena.commit` — called by weight
updates (:mod:`nerve.runtime.delta`) — is the only writer after construction.

The arena also keeps the current value of every model Param (``params``): the slot itself
when the Param is read as is, otherwise a private read-only copy (a BatchNorm's statistics, a
weight read only transposed). Re-baking a slot whose recipe reads several Params needs them.

Consistency between runs and updates: a readers-writer lock. A run holds the shared side for
its whole execution (:meth:`reading`); an update computes the new slot values first, without
any lock, then takes the exclusive side — waiting for the runs in flight to finish on the old
weights, holding back runs that start meanwhile — and copies the new bytes into the slots.
So no run ever sees a mix of old and new weights, runs are held back only for the copy, and
the arena needs no second copy of the weights (double-buffering would double weight memory).
Outputs of a run that are views of arena memory (a model whose output is a weight) are
copied while the shared lock is held (:meth:`detach`), so a caller never holds a view of
memory a later update rewrites.

>>> import numpy as np
>>> from nerve.compiler.bake import BakeRecipe, identity_recipe
>>> from nerve.compiler.plan import Plan
>>> from nerve.ir import DType, Graph, Node, Param, TensorType
>>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (3,)))
>>> g.add_param("w", np.arange(3, dtype=np.float32))
>>> _ = g.add_node(Node("Add", ["x", "w"], ["y"]), {"y": TensorType(DType.FLOAT32, (3,))})
>>> g.set_outputs(["y"])
>>> arena = WeightArena(Plan(g, None, [], "k", None,  # type: ignore[arg-type]
...     bake_recipes={"w": identity_recipe(g.params["w"])}), g.weights)
>>> arena.slots["w"], arena.slots["w"].flags.writeable, arena.address("w") % ALIGN
(array([0., 1., 2.], dtype=float32), False, 0)
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nerve.compiler.bake import BakeRecipe, BakeStep, bake
from nerve.errors import CompileError

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan

ALIGN = 64


@dataclass(frozen=True)
class Slot:
    """Where one weight slot lives in the arena."""

    name: str
    offset: int
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]


def _frozen(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def is_identity(recipe: BakeRecipe) -> bool:
    """A recipe that passes one Param through unchanged."""
    return not recipe.steps and recipe.inputs == (recipe.slot,)


@dataclass(frozen=True)
class Write:
    """A staged slot write: ``source`` moved into the slot through layout ``steps``."""

    slot: str
    source: np.ndarray
    steps: tuple[BakeStep, ...]


_MOVES = frozenset({"transpose", "reshape"})
TRANSPOSE_ROWS = 32  # rows per block of a blocked 2-D transpose (cache-sized)


def _moves_only(recipe: BakeRecipe, recipes: Mapping[str, BakeRecipe]) -> bool:
    """A one-Param recipe made of data movement only (its bytes are the Param's, reordered)."""
    if len(recipe.inputs) != 1 or not recipe.steps:
        return False
    source = recipes.get(recipe.inputs[0])
    return (source is None or is_identity(source)) and all(s.op in _MOVES for s in recipe.steps)


def _move_into(dst: np.ndarray, src: np.ndarray, steps: tuple[BakeStep, ...]) -> None:
    """``dst[...] = steps(src)`` without a temporary: the same bytes the bake code computes."""
    if len(steps) == 1 and steps[0].op == "transpose" and src.ndim == 2 \
            and tuple(steps[0].attr("perm")) == (1, 0):
        # numpy's strided copy of a transposed view thrashes the cache; blocks of source
        # rows keep both sides in cache (4-5x faster on large matrices).
        for i in range(0, src.shape[0], TRANSPOSE_ROWS):
            np.copyto(dst[:, i : i + TRANSPOSE_ROWS], src[i : i + TRANSPOSE_ROWS].T,
                      casting="no")
        return
    view = src
    for s in steps:
        view = np.transpose(view, s.attr("perm")) if s.op == "transpose" \
            else np.reshape(view, s.attr("shape"))
    np.copyto(dst, view, casting="no")


POPULATE_MIN_BYTES = 64 << 20


def _allocate(nbytes: int) -> np.ndarray:
    """``nbytes`` zeroed bytes. Large arenas are mapped with every page populated at once
    (``MAP_POPULATE``): the arena is written in full right away, and faulting its pages in
    one by one costs more than the copy itself (several times more on virtual machines)."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if nbytes < POPULATE_MIN_BYTES or not populate:
        return np.zeros(nbytes, np.uint8)
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except OSError:
        return np.zeros(nbytes, np.uint8)
    return np.frombuffer(region, np.uint8)


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (no starvation).

    Readers are runs, so the shared side is kept cheap: one mutex round trip on each side.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._readers = 0
        self._writing = False
        self._no_readers = threading.Event()
        self._no_writer = threading.Event()
        self._no_writer.set()

    def acquire_read(self) -> None:
        while True:
            with self._mutex:
                if not self._writing:
                    self._readers += 1
                    return
            self._no_writer.wait()

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._readers == 0 and self._writing:
                self._no_readers.set()

    def acquire_write(self) -> None:
        with self._mutex:
            self._writing = True
            self._no_writer.clear()
            if self._readers == 0:
                return
            self._no_readers.clear()
        self._no_readers.wait()

    def release_write(self) -> None:
        with self._mutex:
            self._writing = False
            self._no_writer.set()


class _Reading:
    """``with arena.reading():`` — the shared side of the lock, for one run."""

    __slots__ = ("_lock",)

    def __init__(self, lock: _ReadWriteLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire_read()

    def __exit__(self, *exc: object) -> None:
        self._lock.release_read()


class WeightArena:
    """A Program's weight slots in one aligned block, built from the plan's bake recipes.

    ``weights`` maps the model's Param names to their data. Afterwards ``plan.graph.weights``
    refers to the arena's current Param values (read-only), not to the arrays passed in, so
    the plan describes the program's weights and the caller's arrays can be freed.
    """

    def __init__(self, plan: Plan, weights: Mapping[str, np.ndarray]) -> None:
        graph = plan.graph
        self.recipes: dict[str, BakeRecipe] = dict(plan.bake_recipes)
        self.constants = graph.constants
        read = {i for n in graph.nodes for i in n.inputs if i} | set(graph.output_names)
        self.layout: dict[str, Slot] = {}
        offset = 0
        for name, recipe in self.recipes.items():
            if name not in read:
                continue  # a Param kept as a handle (folded, cast, unused): not baked
            dtype, shape = recipe.type.dtype.numpy, recipe.type.shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.layout[name] = Slot(name, offset, nbytes, dtype, shape)
            offset += -(-nbytes // ALIGN) * ALIGN
        self.nbytes = offset
        raw = _allocate(offset + ALIGN)  # zeroed: equal weights give equal bytes (padding too)
        start = -raw.ctypes.data % ALIGN
        self._buffer = raw[start : start + offset]
        self._root = raw  # the owner of the arena's memory (views' base chain ends here)
        self._lock = _ReadWriteLock()
        self._reading = _Reading(self._lock)
        self._views = {name: self._view(name) for name in self.layout}  # writable
        self.slots: dict[str, np.ndarray] = {n: _frozen(v) for n, v in self._views.items()}
        # Param -> the slots whose recipes read it (what an update of the Param re-bakes).
        self.readers: dict[str, list[str]] = {}
        for name in self.layout:
            for source in self.recipes[name].sources:
                self.readers.setdefault(source, []).append(name)
        self._updates = threading.Lock()  # one update at a time
        self.params: dict[str, np.ndarray] = {}
        # Params held outside the arena: our own copies, rewritten in place by updates.
        self._private: dict[str, np.ndarray] = {}
        model_params = plan.params or {
            n: p for n, p in graph.params.items() if n not in self.recipes
            or is_identity(self.recipes[n])
        }
        for name in model_params:
            if name in self.layout and is_identity(self.recipes[name]):
                self.params[name] = self.slots[name]
            elif name in weights:
                self._private[name] = np.array(weights[name], copy=True)
                self.params[name] = _frozen(self._private[name])
        self._write([self.stage(name, weights) for name in self.layout])
        for name, value in self.params.items():
            graph.weights[name] = value

    # ---- building and writing ---------------------------------------------------------

    def _writable(self, name: str) -> np.ndarray:
        return self._views[name]

    def _view(self, name: str) -> np.ndarray:
        slot = self.layout[name]
        raw = self._buffer[slot.offset : slot.offset + slot.nbytes]
        return raw.view(slot.dtype).reshape(slot.shape)

    def stage(self, slot: str, weights: Mapping[str, np.ndarray]) -> Write:
        """How to write ``slot`` from the Param values ``weights``; nothing is written yet.

        A recipe that only moves data (a plain Param, transposes, reshapes) is staged as its
        source and done during the write, straight into the slot: no temporary copy. Any
        other recipe (BatchNorm folding, casts) is computed here, by the plan's bake code.
        """
        recipe = self.recipes[slot]
        if is_identity(recipe) or _moves_only(recipe, self.recipes):
            source = recipe.inputs[0]
            try:
                value = weights[source] if source in weights else self.constants[source]
            except KeyError:
                raise CompileError(
                    f"weight {source!r} is missing: the plan reads it; pass every Param of the "
                    "model"
                ) from None
            expected = self.recipes[source].type if source in self.recipes else None
            if expected is not None and (value.shape != expected.shape
                                         or value.dtype != expected.dtype.numpy):
                raise CompileError(
                    f"weight {source!r} is {value.dtype}{list(value.shape)}, the plan expects "
                    f"{expected}"
                )
            return Write(slot, value, recipe.steps)
        return Write(slot, bake(self.recipes, weights, self.constants, only=[slot])[slot], ())

    def _write(self, writes: Iterable[Write]) -> int:
        written = 0
        for w in writes:
            _move_into(self._writable(w.slot), w.source, w.steps)
            written += self.layout[w.slot].nbytes
        return written

    def commit(
        self,
        writes: Iterable[Write],
        params: Mapping[str, np.ndarray],
        on_written: Callable[[list[str]], None] | None = None,
    ) -> int:
        """Write staged slots and new Param values; waits for runs in flight, holds back new
        ones while the slots are written. ``params`` are the new values of the Params given
        (those held outside the arena are copied into the arena's own copies).
        ``on_written(slot names)`` runs while runs are still held back: engines that keep a
        derived copy of a slot (a packed layout) refresh it there. Returns the bytes
        written."""
        writes = list(writes)
        with self._updates:
            written = 0
            for name, value in params.items():
                own = self._private.get(name)
                if own is not None:
                    np.copyto(own, value, casting="no")
                    written += own.nbytes
            self._lock.acquire_write()
            try:
                written += self._write(writes)
                if on_written is not None:
                    on_written([w.slot for w in writes])
            finally:
                self._lock.release_write()
        return written

    # ---- reading --------------------------------------------------------------------

    def reading(self) -> _Reading:
        """The shared side of the lock: hold it for a whole run."""
        return self._reading

    def detach(self, env: MutableMapping[str, np.ndarray], names: Iterable[str]) -> None:
        """Replace outputs in ``env`` that are views of arena memory with copies."""
        if not self.nbytes:
            return
        root = self._root
        for name in names:
            value = env.get(name)
            base = getattr(value, "base", None)
            while base is not None:
                if base is root:
                    env[name] = np.array(value, copy=True)
                    break
                base = getattr(base, "base", None)

    def address(self, slot: str) -> int:
        """The memory address of ``slot`` (64-byte aligned)."""
        return int(self._buffer.ctypes.data) + self.layout[slot].offset

    def contents(self) -> bytes:
        """A copy of the arena's bytes (for tests: what an update touched)."""
        return self._buffer.tobytes()

    def slots_reading(self, params: Iterable[str]) -> list[str]:
        """The arena slots whose recipes read any of ``params`` (in arena order)."""
        hit = {s for p in params for s in self.readers.get(p, ())}
        return [s for s in self.layout if s in hit]


__all__ = ["ALIGN", "Slot", "WeightArena", "Write", "is_identity"]

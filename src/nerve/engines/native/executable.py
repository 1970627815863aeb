"""Native executables: a compiled segment bound to its buffers, run with one foreign call.

Binding computes every address that does not change between runs once (weights, constants,
the scratch arena); a run only writes the input and output addresses into the pointer table
and calls the segment's entry point.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from nerve.engines.base import Env, Executable
from nerve.engines.native import cache
from nerve.engines.native.buffers import ALIGN
from nerve.engines.native.codegen import SegmentCode
from nerve.engines.native.packing import PackSpec, repack_natively
from nerve.errors import KernelError
from nerve.ir import Graph

EntryFn = Callable[[ctypes.Array[ctypes.c_void_p], int, int], int]


class NativePart:
    """One compiled run of claimed nodes."""

    def __init__(self, graph: Graph, code: SegmentCode, threads: int) -> None:
        self.code = code
        self.threads = max(1, int(threads))
        self.library: Path | None = None
        self._handle: ctypes.CDLL | None = None  # the loaded library (C weight packers)
        self._fn: EntryFn | None = None
        self._lock = threading.Lock()
        buffers = code.buffers
        self._table = (ctypes.c_void_p * max(1, len(buffers.slots)))()
        self._inputs: list[tuple[int, str, np.dtype]] = []
        self._outputs: list[tuple[int, str, tuple[int, ...], np.dtype]] = []
        # Arrays the table points into, by slot (kept alive here).
        self._bound: dict[int, np.ndarray] = {}
        # Weight slots: (slot, the weight's name in the environment, dtype, its packing or
        # None). A packed slot is derived from its source weight whenever that is (re)bound.
        self._params: list[tuple[int, str, np.dtype, PackSpec | None]] = []
        self._seen: dict[int, object] = {}  # slot -> the array the env held when last bound
        for buf in buffers.slots:
            if buf.kind == "input":
                self._inputs.append((buf.slot, buf.root, buf.dtype))
            elif buf.kind == "output":
                self._outputs.append((buf.slot, buf.root, buf.shape, buf.dtype))
            elif buf.kind == "param":
                spec = code.packed.get(buf.root)
                source = spec.source if spec is not None else buf.root
                self._params.append((buf.slot, source, buf.dtype, spec))
                if source in graph.weights:
                    self._bind(buf.slot, graph.weights[source], buf.dtype, spec)
            else:
                self._bind(buf.slot, graph.constants[buf.root], buf.dtype)
        self._scratch = np.empty(buffers.scratch_bytes + ALIGN, np.uint8)
        base = self._scratch.ctypes.data
        self._scratch_addr = base + (-base) % ALIGN
        produced = {name for _, name, _, _ in self._outputs}
        # Outputs that reinterpret another tensor's memory: (name, source, shape). The
        # Program protects the caller from views of its inputs and weights.
        self._views = [(n, src, graph.types[n].shape) for n, src in code.views.items()]
        self._direct = [name for name in code.outputs if name in produced]

    def _bind(
        self,
        slot: int,
        array: np.ndarray,
        dtype: np.dtype,
        spec: PackSpec | None = None,
        *,
        in_place: bool = False,
    ) -> None:
        self._seen[slot] = array
        if spec is not None:
            # in_place re-packs into the slot's previous panels: no allocation (page faults
            # dominate on large weights). Only safe while no run can be reading them, i.e.
            # under the program's weight write lock (weights_changed).
            previous = self._bound.get(slot) if in_place else None
            if previous is not None and self._handle is not None and repack_natively(
                self._handle, spec, array, previous, self.threads
            ):
                array = previous
            else:
                array = spec.pack(array, out=previous)
        if array.dtype != dtype or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=dtype)
        self._bound[slot] = array
        self._table[slot] = array.ctypes.data

    def weights_changed(self, names: Collection[str]) -> None:
        """The program rewrote these weights in place (a delta update): re-derive what this
        part built from them — packed panels, or a copy made for dtype or contiguity.

        The runtime calls this while it holds the program's weight lock, so no run is in
        flight; re-binding from the same array object picks up its new contents.
        """
        changed = set(names)
        for slot, name, dtype, spec in self._params:
            if name in changed and slot in self._seen:
                self._bind(slot, self._seen[slot], dtype, spec, in_place=True)  # type: ignore[arg-type]

    def attach(self, library: Path) -> None:
        handle = cache.load(library)
        fn = getattr(handle, self.code.symbol)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        fn.restype = ctypes.c_int64
        self.library = library
        self._handle = handle
        self._fn = fn
        for step in self.code.steps:  # kernels that prepare the threads at load (AMX tiles)
            prepare = getattr(step, "prepare", None)
            if prepare is not None:
                prepare(handle, self.threads)

    def run(self, env: Env) -> None:
        if self._fn is None:
            raise KernelError(
                f"native segment {self.code.symbol} was never compiled (a batch build did not "
                "finish); rebuild the program"
            )
        table = self._table
        for slot, name, dtype, spec in self._params:
            # Weights are bound once; a different array (an update, a baked slot) re-binds
            # (and re-packs a packed slot).
            current = env.get(name)
            if current is None:
                raise KernelError(
                    f"weight {name!r} is missing from the run's environment; a native segment "
                    "reads its weights from the program"
                )
            if current is not self._seen.get(slot):
                self._bind(slot, current, dtype, spec)
        held = []
        for slot, name, dtype in self._inputs:
            a = env[name]
            if a.dtype != dtype or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=dtype)
            held.append(a)
            table[slot] = a.ctypes.data
        results: dict[str, np.ndarray] = {}
        for slot, name, shape, dtype in self._outputs:
            out = np.empty(shape, dtype)
            results[name] = out
            table[slot] = out.ctypes.data
        with self._lock:
            status = self._fn(table, self._scratch_addr, self.threads)
        if status:
            self._fail(int(status))
        for name in self._direct:
            env[name] = results[name]
        for name, source, shape in self._views:
            base = results[source] if source in results else env[source]
            env[name] = base.reshape(shape)

    def _fail(self, status: int) -> None:
        step = self.code.steps[status - 1]
        node = step.nodes[0]
        raise KernelError(
            f"node {node.name!r} ({node.op_type}): an index is out of range for the axis it "
            "selects from; indices must lie in [-n, n) where n is that axis' size"
        )


class SequenceExecutable:
    """Runs native parts and host fallbacks of one segment in order."""

    def __init__(self, parts: list[Executable]) -> None:
        self.parts = parts

    def run(self, env: Env) -> None:
        for part in self.parts:
            part.run(env)

    def weights_changed(self, names: Collection[str]) -> None:
        for part in self.parts:
            hook = getattr(part, "weights_changed", None)
            if hook is not None:
                hook(names)

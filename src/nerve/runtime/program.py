"""Program: a compiled model ready to run — plan + executables + weights.

>>> import numpy as np, nerve
>>> from onnx import helper, TensorProto
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
>>> prog = nerve.compile(helper.make_model(g))
>>> prog.run({"x": np.array([-1, 0, 2], np.float32)})["y"]
array([0., 0., 2.], dtype=float32)

Tensor I/O without copies
-------------------------
* **Inputs** — numpy arrays, anything with ``__dlpack__`` (torch tensors, ...) and
  :class:`~nerve.SharedTensor` are read in place when dtype, shape and layout match the input
  (DESIGN Invariant 4). Otherwise nerve converts once (a safe dtype change, a strided or
  misaligned layout) and logs it at DEBUG on the ``nerve`` logger; a lossy dtype change or a
  wrong shape is an InputError.
* **out=** — ``run(feeds, out={"y": buf})`` writes output ``y`` into the caller's ``buf``.
* **copy=** — ``copy=True`` (default) returns arrays the caller owns exclusively. ``copy=False``
  skips the copies that protect the caller: an output that is a feed, a weight or a view of one
  comes back as a *read-only view* of that memory.
* **bind()** — ``Program.bind(inputs=..., outputs=...)`` validates buffers once and
  ``Binding.run()`` reuses them run after run (ONNX Runtime's IOBinding). Outputs you do not
  bind live in nerve-owned memory, returned as read-only views.

The lifetime rule for nerve-owned memory
----------------------------------------
**nerve never rewrites memory while a view of it is alive.** Output memory that nerve reuses
between runs comes from an :class:`~nerve.runtime.tensors.OutputPool`; a run takes a buffer no
live view can see (checked by reference count: any numpy view, torch tensor, memoryview or
DLPack capsule derived from a result keeps it referenced) and otherwise uses another buffer. So
a result you keep stays valid and unchanged for as long as you hold it, and a loop that keeps
only the latest result alternates between two buffers without allocating. We chose this over
invalidating old views because Python cannot revoke a numpy array: an "invalidated" view would
either crash (unmapped memory) or keep reading changed data, while this rule has neither
failure and costs at most one extra buffer. The one escape is a raw pointer
(``arr.ctypes.data``) kept without the array; nerve cannot see those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nerve.compiler.plan import Plan
from nerve.compiler.report import CompileReport
from nerve.engines.base import Executable
from nerve.errors import InputError, OutputError
from nerve.ir import Graph, Node, Value
from nerve.runtime.arena import WeightArena
from nerve.runtime.tensors import OutputPool, as_input, as_output, read_only, to_numpy

if TYPE_CHECKING:
    from nerve.runtime.delta import UpdateReport
    from nerve.runtime.serialize import Origin

log = logging.getLogger("nerve")


@dataclass(frozen=True)
class TensorInfo:
    """Name, static shape and element type of a program input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # nerve dtype name: "float32", "bfloat16", "int64", ...
    numpy_dtype: np.dtype

    @staticmethod
    def of(value: Value) -> TensorInfo:
        return TensorInfo(value.name, value.shape, value.dtype.value, value.dtype.numpy)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.numpy_dtype.itemsize


class RunProfiler(Protocol):
    """What ``run(profile=...)`` needs; :class:`nerve.runtime.monitor.Profiler` is one."""

    def node_event(self, node: Node, start_ns: int, end_ns: int, engine: str) -> None: ...

    def span(self, name: str, start_ns: int, end_ns: int, cat: str = ...,
             args: dict[str, Any] | None = ...) -> None: ...


def _node_hook(profile: RunProfiler, engine: str) -> Callable[[Node, int, int], None]:
    def hook(node: Node, start_ns: int, end_ns: int) -> None:
        profile.node_event(node, start_ns, end_ns, engine)

    return hook


def _owner(array: np.ndarray) -> object:
    """The object at the end of ``array``'s base chain: whoever owns the memory."""
    obj: object = array
    while isinstance(obj, np.ndarray) and obj.base is not None:
        obj = obj.base
    return obj


class Program:
    """A compiled model. Create it with :func:`nerve.compile`."""

    def __init__(self, plan: Plan, executables: Sequence[Executable]) -> None:
        self.plan = plan
        self._executables = list(executables)
        graph = plan.graph
        self.inputs = [TensorInfo.of(v) for v in graph.inputs]
        self.outputs = [TensorInfo.of(v) for v in graph.outputs]
        self._input_index = {i.name: i for i in self.inputs}
        self._output_index = {o.name: o for o in self.outputs}
        self._output_names = [o.name for o in self.outputs]
        # Constants and weights every run starts from; arrays are shared, never copied per run.
        # Weight slots live in one aligned arena baked from the model's Params by the plan's
        # recipes (BN folding, transposes, casts computed here, once; see runtime/arena.py).
        self.arena = WeightArena(plan, graph.weights)
        # How the program was made (set by nerve.compile / nerve.load; save() embeds it).
        self.origin: Origin | None = None
        self._base_env: dict[str, np.ndarray] = {**graph.constants, **self.arena.slots}
        # Owners of the memory behind constants and weights: an output whose memory traces
        # back to one of them must not be handed out writable.
        self._owned = {id(_owner(a)) for a in self._base_env.values()}

    @property
    def graph(self) -> Graph:
        return self.plan.graph

    @property
    def report(self) -> CompileReport:
        """What the compiler did (per pass: time, nodes in/out, rewrites; cache hit or miss)."""
        return self.plan.report

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def target(self) -> str:
        return self.plan.target.name

    @property
    def engine(self) -> str:
        """The engine that runs this program (the scheduler keeps one worker per engine)."""
        return self.plan.target.engine

    # -- running ---------------------------------------------------------------------

    def run(
        self,
        feeds: Mapping[str, Any],
        output_names: Sequence[str] | None = None,
        out: Mapping[str, Any] | None = None,
        copy: bool = True,
        profile: RunProfiler | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the program on ``feeds`` (input name -> array) and return the outputs by name.

        ``feeds`` values may be numpy arrays, DLPack objects (torch tensors) or SharedTensors;
        they are read in place when they match. ``out`` maps output names to buffers to write
        into (returned as given). ``copy=False`` may return read-only views of memory nerve or
        the caller owns instead of copies (see the module doc for the lifetime rule).
        ``profile`` (a :class:`nerve.runtime.monitor.Profiler`) records one event per op.
        """
        wanted = self._check_output_names(output_names)
        prepared = self.prepare_feeds(feeds)
        out_arrays = self.prepare_out(out)
        return self.run_prepared(prepared, wanted, out_arrays, copy, profile)

    def __call__(self, **feeds: Any) -> dict[str, np.ndarray]:
        return self.run(feeds)

    def submit(self, feeds: Mapping[str, Any], priority: int = 0,
               deadline_ms: float | None = None, tag: Any = None,
               out: Mapping[str, Any] | None = None, runtime: Any = None) -> Any:
        """Queue a run on ``runtime`` (default: the process-wide :func:`default_runtime`) and
        return its :class:`~nerve.Job` — ``Runtime.submit(self, feeds, ...)``."""
        from nerve.runtime.scheduler import default_runtime

        rt = runtime if runtime is not None else default_runtime()
        return rt.submit(self, feeds, priority=priority, deadline_ms=deadline_ms, tag=tag,
                         out=out)

    def prepare_feeds(
        self, feeds: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate ``feeds`` and return the arrays kernels will read (zero-copy when they match).

        ``shapes`` overrides expected shapes (the scheduler uses it for partial batches).
        """
        if not isinstance(feeds, Mapping):
            raise InputError(
                f"feeds must be a mapping of input name to array, not {type(feeds).__name__}"
            )
        missing = [n for n in self._input_index if n not in feeds]
        extra = [n for n in feeds if n not in self._input_index]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing inputs {missing}")
            if extra:
                parts.append(f"unknown inputs {extra}")
            raise InputError(
                "; ".join(parts) + f". The program's inputs are {list(self._input_index)}"
            )
        prepared: dict[str, np.ndarray] = {}
        for name, info in self._input_index.items():
            shape = shapes[name] if shapes and name in shapes else info.shape
            prepared[name] = as_input(feeds[name], name, info.numpy_dtype, shape)
        return prepared

    def prepare_out(self, out: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        """Validate caller-supplied output buffers."""
        if not out:
            return {}
        unknown = [n for n in out if n not in self._output_index]
        if unknown:
            raise OutputError(
                f"out= names unknown outputs {unknown}; the program's outputs are "
                f"{self._output_names}"
            )
        return {
            name: as_output(value, name, self._output_index[name].numpy_dtype,
                            self._output_index[name].shape)
            for name, value in out.items()
        }

    def run_prepared(
        self,
        prepared: Mapping[str, np.ndarray],
        wanted: Sequence[str],
        out_arrays: Mapping[str, np.ndarray],
        copy: bool = True,
        profile: RunProfiler | None = None,
    ) -> dict[str, np.ndarray]:
        """Run on already validated feeds (from :meth:`prepare_feeds`): the hot path."""
        env = self._execute(prepared, profile)
        result: dict[str, np.ndarray] = {}
        for name in dict.fromkeys([*wanted, *out_arrays]):
            value = env[name]
            if name in out_arrays:
                np.copyto(out_arrays[name], value)
                result[name] = out_arrays[name]
                continue
            if self._aliases(name, value, prepared, result):
                # Memory of a feed, a weight or another output: a copy, or a read-only view.
                value = value.copy() if copy else read_only(value)
            result[name] = value
        return result

    def _execute(
        self, prepared: Mapping[str, np.ndarray], profile: RunProfiler | None
    ) -> dict[str, np.ndarray]:
        # A run holds the weight arena's shared lock: an update_weights waits for it and no
        # run sees a mix of old and new weights. Outputs that are views of the arena are
        # copied before the lock is released.
        with self.arena.reading():
            env = self._execute_unlocked(prepared, profile)
            self.arena.detach(env, self._output_names)
        return env

    def _execute_unlocked(
        self, prepared: Mapping[str, np.ndarray], profile: RunProfiler | None
    ) -> dict[str, np.ndarray]:
        env = dict(self._base_env)
        env.update(prepared)
        if profile is None:
            for exe in self._executables:
                exe.run(env)
            return env
        start = time.perf_counter_ns()
        for index, exe in enumerate(self._executables):
            engine = self.plan.segments[index].engine if index < len(self.plan.segments) else "?"
            seg_start = time.perf_counter_ns()
            if getattr(exe, "supports_node_hook", False):
                exe.run(env, on_node=_node_hook(profile, engine))  # type: ignore[call-arg]
            else:
                exe.run(env)
            profile.span(f"segment {index} ({engine})", seg_start, time.perf_counter_ns(),
                         cat="segment")
        profile.span("run", start, time.perf_counter_ns(), cat="run",
                     args={"target": self.target})
        return env

    def _aliases(
        self,
        name: str,
        value: np.ndarray,
        prepared: Mapping[str, np.ndarray],
        earlier: Mapping[str, np.ndarray],
    ) -> bool:
        """True when ``value`` is (a view of) memory the caller must not receive writable."""
        if name in self._base_env or name in prepared:
            return True
        if id(_owner(value)) in self._owned:
            return True
        return any(np.may_share_memory(value, a) for a in prepared.values()) or any(
            np.may_share_memory(value, a) for a in earlier.values()
        )

    def _check_output_names(self, output_names: Sequence[str] | None) -> list[str]:
        if output_names is None:
            return list(self._output_names)
        unknown = [n for n in output_names if n not in self._output_names]
        if unknown:
            raise OutputError(
                f"unknown outputs {unknown}; the program's outputs are {self._output_names}"
            )
        return list(output_names)

    # -- weights -------------------------------------------------------------------

    @property
    def weights(self) -> Mapping[str, np.ndarray]:
        """The model's Params by name: current values, read-only."""
        return self.arena.params

    def update_weights(self, weights: Any) -> UpdateReport:
        """Replace some or all weights in place, without compiling (delta compilation).

        ``weights``: a mapping Param name -> array, a ``.safetensors`` file, a saved program
        or an ONNX model of the same structure. Only the bake recipes reading a changed Param
        re-run; runs in flight finish on the old weights, later runs see the new ones. The
        result is bit-identical to compiling with the new weights. See
        :mod:`nerve.runtime.delta`.
        """
        from nerve.runtime.delta import update_weights

        return update_weights(self, weights)

    def save(self, path: Any) -> None:
        """Write the program (plan, engine artifacts, weights) to one file for ``nerve.load``."""
        from nerve.runtime.serialize import save_program

        save_program(self, path)

    # -- binding ---------------------------------------------------------------------

    def bind(
        self, inputs: Mapping[str, Any] | None = None, outputs: Mapping[str, Any] | None = None
    ) -> Binding:
        """Bind input and output buffers once; ``Binding.run()`` reuses them every run.

        >>> import numpy as np, nerve
        >>> from onnx import helper, TensorProto
        >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        >>> prog = nerve.compile(helper.make_model(g))
        >>> x, y = np.array([-1, 1], np.float32), np.empty(2, np.float32)
        >>> b = prog.bind(inputs={"x": x}, outputs={"y": y})
        >>> _ = b.run(); y
        array([0., 1.], dtype=float32)
        >>> x[0] = 5; _ = b.run(); y     # the bound input is read in place each run
        array([5., 1.], dtype=float32)
        """
        return Binding(self, inputs, outputs)

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}: {i.dtype}{list(i.shape)}" for i in self.inputs)
        outs = ", ".join(f"{o.name}: {o.dtype}{list(o.shape)}" for o in self.outputs)
        return f"<nerve.Program target={self.target} ({ins}) -> ({outs})>"


class Binding:
    """Buffers bound to a Program's inputs and outputs, reused run after run (IOBinding).

    * A bound input is validated once. When it already matches, nerve reads the caller's
      memory on every run, so writing new values into it in place is all a next run needs.
      When it had to be converted (logged at DEBUG), the converted copy is what is bound, and
      later writes to the original are not seen until you bind it again — as in ONNX Runtime.
    * A bound output is written in place on every run; the caller owns it.
    * An output not bound lives in nerve-owned memory (an OutputPool) and comes back as a
      read-only view under the lifetime rule of :mod:`nerve.runtime.program`.
    """

    def __init__(
        self,
        program: Program,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.program = program
        self._inputs: dict[str, np.ndarray] = {}
        self._outputs: dict[str, np.ndarray] = {}
        self._pools: dict[str, OutputPool] = {}
        self.converted: set[str] = set()  # inputs bound as converted copies
        for name, value in (inputs or {}).items():
            self.bind_input(name, value)
        for name, value in (outputs or {}).items():
            self.bind_output(name, value)

    def bind_input(self, name: str, value: Any) -> None:
        """Bind ``value`` to input ``name`` (validated now, read in place on every run)."""
        info = self.program._input_index.get(name)
        if info is None:
            raise InputError(
                f"unknown input {name!r}; the program's inputs are "
                f"{list(self.program._input_index)}"
            )
        array = as_input(value, name, info.numpy_dtype, info.shape)
        if not np.shares_memory(array, to_numpy(value)):
            self.converted.add(name)
            log.debug("binding: input %r bound as a converted copy; rebind after changing it",
                      name)
        else:
            self.converted.discard(name)
        self._inputs[name] = array

    def bind_output(self, name: str, value: Any = None) -> None:
        """Bind a caller buffer to output ``name`` (``None``: nerve-owned pooled memory)."""
        info = self.program._output_index.get(name)
        if info is None:
            raise OutputError(
                f"unknown output {name!r}; the program's outputs are {self.program._output_names}"
            )
        if value is None:
            self._outputs.pop(name, None)
            self._pools[name] = OutputPool(info.numpy_dtype, info.shape)
        else:
            self._outputs[name] = as_output(value, name, info.numpy_dtype, info.shape)
            self._pools.pop(name, None)

    def run(self, output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run on the bound inputs; bound outputs are written in place and returned."""
        program = self.program
        missing = [n for n in program._input_index if n not in self._inputs]
        if missing:
            raise InputError(f"binding: inputs {missing} are not bound; call bind_input first")
        wanted = program._check_output_names(output_names)
        env = program._execute(self._inputs, None)
        result: dict[str, np.ndarray] = {}
        for name in dict.fromkeys([*wanted, *self._outputs]):
            target = self._outputs.get(name)
            if target is not None:
                np.copyto(target, env[name])
                result[name] = target
                continue
            pool = self._pools.get(name)
            if pool is None:
                info = program._output_index[name]
                pool = self._pools[name] = OutputPool(info.numpy_dtype, info.shape)
            buf = pool.acquire()
            np.copyto(buf, env[name])
            result[name] = read_only(buf)
        return result


def null_program(
    model: Any,
    shapes: Mapping[str, Sequence[int]] | None = None,
    delay_s: float = 0.0,
    on_run: Callable[[Any], None] | None = None,
) -> Program:
    """``model`` compiled for the null engine: runs do nothing (after ``delay_s``) and return
    zeros. For scheduler, worker and service tests and for measuring overheads."""
    import dataclasses

    from nerve.engines.null import NullEngine
    from nerve.runtime.compile import compile as compile_program

    # Compile exactly as for the host (same passes, same plan), then swap the executables.
    plan = compile_program(model, "host", {k: tuple(v) for k, v in (shapes or {}).items()}
                           or None).plan
    plan.target = dataclasses.replace(plan.target, name="null", engine="null",
                                      description="does nothing (tests)")
    for segment in plan.segments:
        segment.engine = "null"
    engine = NullEngine(delay_s, on_run)
    return Program(plan, [engine.build(segment, plan) for segment in plan.segments])


__all__ = ["Binding", "Program", "TensorInfo", "null_program"]

"""Program: a compiled model ready to run — plan + executables + weights.

>>> import numpy as np, nerve
>>> from onnx import helper, TensorProto
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
>>> prog = nerve.compile(helper.make_model(g))
>>> prog.run({"x": np.array([-1, 0, 2], np.float32)})["y"]
array([0., 0., 2.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nerve.compiler.plan import Plan
from nerve.compiler.report import CompileReport
from nerve.engines.base import Executable
from nerve.errors import InputError, OutputError
from nerve.ir import Graph, Value


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


class Program:
    """A compiled model. Create it with :func:`nerve.compile`."""

    def __init__(self, plan: Plan, executables: Sequence[Executable]) -> None:
        self.plan = plan
        self._executables = list(executables)
        graph = plan.graph
        self.inputs = [TensorInfo.of(v) for v in graph.inputs]
        self.outputs = [TensorInfo.of(v) for v in graph.outputs]
        self._input_index = {i.name: i for i in self.inputs}
        self._output_names = [o.name for o in self.outputs]
        # Constants and weights every run starts from; arrays are shared, never copied per run.
        self._base_env: dict[str, np.ndarray] = {**graph.constants, **graph.weights}

    @property
    def graph(self) -> Graph:
        return self.plan.graph

    @property
    def report(self) -> CompileReport:
        return self.plan.report

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def target(self) -> str:
        return self.plan.target.name

    def run(
        self,
        feeds: Mapping[str, Any],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the program on ``feeds`` (input name -> array) and return the outputs by name."""
        wanted = self._check_output_names(output_names)
        env = dict(self._base_env)
        env.update(self._check_feeds(feeds))
        for exe in self._executables:
            exe.run(env)
        result: dict[str, np.ndarray] = {}
        for name in wanted:
            value = env[name]
            # Never hand back memory the caller or the program owns (a feed, a weight).
            if name in self._base_env or name in self._input_index or any(
                np.may_share_memory(value, env[i]) for i in self._input_index
            ):
                value = value.copy()
            result[name] = value
        return result

    def __call__(self, **feeds: Any) -> dict[str, np.ndarray]:
        return self.run(feeds)

    def _check_output_names(self, output_names: Sequence[str] | None) -> list[str]:
        if output_names is None:
            return list(self._output_names)
        unknown = [n for n in output_names if n not in self._output_names]
        if unknown:
            raise OutputError(
                f"unknown outputs {unknown}; the program's outputs are {self._output_names}"
            )
        return list(output_names)

    def _check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
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
        checked: dict[str, np.ndarray] = {}
        for name, info in self._input_index.items():
            value = feeds[name]
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if array.dtype != info.numpy_dtype:
                raise InputError(
                    f"input {name!r}: expected dtype {info.dtype}, got {array.dtype}. Convert "
                    f"it with .astype(np.{info.numpy_dtype})"
                )
            if array.shape != info.shape:
                raise InputError(
                    f"input {name!r}: expected shape {info.shape}, got {array.shape}. The program "
                    "was compiled for that shape; recompile with shapes={...} for another"
                )
            checked[name] = array
        return checked

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}: {i.dtype}{list(i.shape)}" for i in self.inputs)
        outs = ", ".join(f"{o.name}: {o.dtype}{list(o.shape)}" for o in self.outputs)
        return f"<nerve.Program target={self.target} ({ins}) -> ({outs})>"

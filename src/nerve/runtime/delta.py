"""Delta compilation: new weights for a compiled Program, without compiling.

``program.update_weights(weights)`` takes new values for some or all of the model's Params —
a mapping name -> array, a ``.safetensors`` file, a saved program (``.nerve``), or an ONNX
model of the same structure — and re-runs only the bake recipes that read a changed Param,
writing their slots of the weight arena in place. The result is bit-identical to compiling
the model with the new weights from scratch (DESIGN invariant 2): the slots are computed by
the same recipes, in the same arena layout.

Consistency: the new slot values are computed first, while runs go on; then the arena's
writer lock waits for runs in flight (they finish on the old weights), holds back runs that
start meanwhile (they see the new weights) and copies the new bytes in. No run sees a mix.
See :mod:`nerve.runtime.arena`.

Checks, all before anything is written: every name must be a Param of the model (a derived
slot such as ``conv.weight@bn_fold_weight`` is named as such, with its sources); shapes and
dtypes must match exactly (bfloat16 Params take uint16 bit patterns or ``ml_dtypes.bfloat16``
arrays). Every problem is listed in one :class:`~nerve.errors.WeightUpdateError`. A Param the
compiled program does not read (its consumers were removed, or it only fed something the
compiler computed away) cannot change any result: it is listed in ``UpdateReport.unused`` and
logged as a warning, never silently dropped; its value is still kept (``save()`` writes it).

>>> import numpy as np, nerve
>>> from nerve.models.mlp import build_mlp, mlp_inputs
>>> program = nerve.compile(build_mlp(0), cache=False)
>>> report = program.update_weights({"fc1.bias": np.ones(program.weights["fc1.bias"].shape,
...                                                       np.float32)})
>>> report.params, report.slots
(['fc1.bias'], ['fc1.bias'])
"""

from __future__ import annotations

import difflib
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.errors import ModelFormatError, WeightUpdateError
from nerve.ir import DType, Param

if TYPE_CHECKING:
    from nerve.runtime.program import Program

log = logging.getLogger("nerve")

# (array, the type a file declared for it or None)
Item = tuple[Any, "DType | None"]


@dataclass
class UpdateReport:
    """What :meth:`Program.update_weights` did."""

    params: list[str]  # Params given new values
    slots: list[str]  # weight-arena slots re-baked (recipes re-run)
    bytes: int  # bytes written: arena slots, plus Params held outside the arena
    seconds: float  # wall time of the whole update, checks included
    unused: list[str] = field(default_factory=list)  # Params the program does not read

    def __str__(self) -> str:
        text = (
            f"updated {len(self.params)} Params: {len(self.slots)} slots re-baked, "
            f"{self.bytes / 1e6:.2f} MB written in {self.seconds * 1e3:.2f} ms"
        )
        if self.unused:
            text += f"; not read by the program: {', '.join(self.unused)}"
        return text


# ---- reading the new weights ---------------------------------------------------------------


def read_weights(source: Any, program: Program) -> dict[str, Item]:
    """New Param values from ``source`` (see the module docstring), by name."""
    import onnx

    if isinstance(source, Mapping):
        return {str(k): (v, None) for k, v in source.items()}
    if isinstance(source, (onnx.ModelProto, bytes, bytearray)):
        return _from_onnx(source, program)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".onnx":
            return _from_onnx(path, program)
        return _from_tensor_file(path)
    raise WeightUpdateError(
        f"update_weights takes a mapping of Param name to array, a .safetensors file, a saved "
        f"program or an ONNX model; got {type(source).__name__}"
    )


def _from_tensor_file(path: Path) -> dict[str, Item]:
    from nerve.runtime.safetensors import read_tensors
    from nerve.runtime.serialize import PARAM_PREFIX, is_program_file

    try:
        f = read_tensors(path)
    except ModelFormatError as exc:
        raise WeightUpdateError(f"cannot read weights from {str(path)!r}: {exc}") from None
    if is_program_file(f.metadata):  # a saved program: its Params
        return {
            name[len(PARAM_PREFIX):]: (array, f.dtypes[name])
            for name, array in f.arrays.items() if name.startswith(PARAM_PREFIX)
        }
    return {name: (array, f.dtypes[name]) for name, array in f.arrays.items()}


def _from_onnx(model: Any, program: Program) -> dict[str, Item]:
    from nerve.frontend.onnx import load_onnx
    from nerve.ir import structural_key

    origin = program.origin
    constants = origin.constants if origin is not None else None
    shapes = {i.name: i.shape for i in program.inputs}
    graph = load_onnx(model, shapes, constants)
    extra = origin.key_extra if origin is not None else None
    if extra is not None and structural_key(graph, extra) != program.key:
        raise WeightUpdateError(
            "the ONNX model's structure differs from the compiled program's (ops, attributes, "
            "shapes, constants or Param names); update_weights changes weights only — compile "
            "the new model instead"
        )
    return {name: (array, graph.params[name].type.dtype) for name, array in graph.weights.items()}


# ---- checking ------------------------------------------------------------------------------


def _as_array(value: Any, param: Param) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "__dlpack__"):
        try:
            array = np.from_dlpack(value)
        except (TypeError, RuntimeError, BufferError) as exc:
            raise WeightUpdateError(
                f"Param {param.name!r}: cannot read the {type(value).__name__} given "
                f"({exc}); pass a numpy array"
            ) from None
    else:
        array = np.asarray(value)
    if param.type.dtype is DType.BFLOAT16 and array.dtype.name == "bfloat16":
        array = array.view(np.uint16)  # ml_dtypes.bfloat16: the same bits nerve keeps
    return array


def _check(program: Program, items: Mapping[str, Item]) -> dict[str, np.ndarray]:
    params = program.plan.params or {
        n: p for n, p in program.plan.graph.params.items() if n in program.weights
    }
    recipes = program.plan.bake_recipes
    problems: list[str] = []
    checked: dict[str, np.ndarray] = {}
    for name, (value, declared) in items.items():
        param = params.get(name)
        if param is None:
            problems.append(_not_a_param(name, params, recipes))
            continue
        expected = param.type
        if declared is not None and declared is not expected.dtype:
            problems.append(
                f"Param {name!r} is {expected}, the file stores it as {declared.value}"
            )
            continue
        array = _as_array(value, param)
        if array.dtype != expected.dtype.numpy or tuple(array.shape) != expected.shape:
            hint = " (bfloat16 takes uint16 bit patterns)" if expected.dtype is DType.BFLOAT16 \
                else ""
            problems.append(
                f"Param {name!r} is {expected}, got {array.dtype}{list(array.shape)}{hint}"
            )
            continue
        checked[name] = array
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise WeightUpdateError(f"update_weights: {shown}{more}. Nothing was changed")
    return checked


def _not_a_param(name: str, params: Mapping[str, Param], recipes: Mapping[str, Any]) -> str:
    recipe = recipes.get(name)
    if recipe is not None and name not in params:
        return (
            f"{name!r} is a weight slot the compiler derived from {list(recipe.sources)}; "
            "update those Params instead"
        )
    close = difflib.get_close_matches(name, list(params), n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"{name!r} is not a Param of the program{hint}"


# ---- the update ----------------------------------------------------------------------------


def _notify(program: Program, slots: list[str]) -> None:
    """Tell executables which slots were rewritten in place (runs are held back meanwhile).

    Engines read weight slots in place, so most need nothing. One that keeps a derived copy
    of a slot (say, a layout packed for its micro-kernel) implements
    ``weights_changed(slots)`` and refreshes that copy from the slot.
    """
    for exe in program._executables:
        hook = getattr(exe, "weights_changed", None)
        if hook is not None:
            hook(slots)


def update_weights(program: Program, weights: Any) -> UpdateReport:
    """Give ``program`` new weights in place; see the module docstring."""
    start = time.perf_counter()
    target = program.plan.target
    if not target.mutable_weights:
        raise WeightUpdateError(
            f"target {target.name!r} bakes weights into the program at compile time; compile "
            "the model with the new weights instead"
        )
    new = _check(program, read_weights(weights, program))
    arena = program.arena
    slots = arena.slots_reading(new)
    current = dict(arena.params)
    current.update(new)
    writes = [arena.stage(slot, current) for slot in slots]  # BN folds etc. computed here
    unused = [name for name in new if name not in arena.readers]
    written = arena.commit(writes, new, lambda names: _notify(program, names))
    if unused:
        message = (
            f"update_weights: Params {unused} are not read by the compiled program (their "
            "consumers were removed or computed away at compile time); their new values change "
            "no result"
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return UpdateReport(list(new), slots, written, time.perf_counter() - start, unused)


__all__ = ["UpdateReport", "read_weights", "update_weights"]

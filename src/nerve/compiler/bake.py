"""Bake recipes: how weight slots are computed from Params.

The compiler never transforms a weight in place and never hides a transformed copy in the
graph. When a pass wants a weight in another form — BatchNorm folded into a conv, transposed,
reshaped, cast, packed — it asks the :class:`BakeBook` for a new *slot*: a named weight with a
type, and a :class:`BakeRecipe` saying how to compute it (input Params or slots -> a chain of
steps). The Plan carries the recipes of every slot its graph reads; the runtime builds its
weights with :func:`run_recipes`, and a weight update re-runs only the recipes whose
:attr:`BakeRecipe.sources` changed.

>>> import numpy as np
>>> from nerve.ir import DType, Graph, TensorType
>>> g = Graph("g"); g.add_param("w", np.arange(6, dtype=np.float32).reshape(2, 3))
>>> book = BakeBook(g)
>>> slot = book.derive(["w"], step("transpose", perm=(1, 0)), TensorType(DType.FLOAT32, (3, 2)))
>>> book.recipes[slot].sources, [s.op for s in book.recipes[slot].steps]
(('w',), ['transpose'])
>>> bake(book.recipes, {"w": g.weights["w"]})[slot].shape
(3, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.errors import CompileError
from nerve.ir import DType, Graph, Param, TensorType
from nerve.ir.dtypes import float32_to_bfloat16

if TYPE_CHECKING:
    from nerve.compiler.plan import Plan


@dataclass(frozen=True)
class BakeStep:
    """One transform: its name and attributes (a sorted tuple of pairs, so it hashes)."""

    op: str
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, name: str, default: Any = None) -> Any:
        return dict(self.attrs).get(name, default)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.attrs)
        return f"{self.op}({args})"


def step(op: str, **attrs: Any) -> BakeStep:
    """A :class:`BakeStep` with keyword attributes."""
    if op not in TRANSFORMS:
        raise CompileError(f"unknown bake transform {op!r}; known: {', '.join(TRANSFORMS)}")
    return BakeStep(op, tuple(sorted(attrs.items())))


@dataclass(frozen=True)
class BakeRecipe:
    """``inputs`` (Params or other slots) -> ``steps`` -> the weight ``slot`` of ``type``.

    The first step combines the inputs into one array; each later step transforms that array.
    ``sources`` are the Params the slot depends on, directly or through other slots.
    """

    slot: str
    inputs: tuple[str, ...]
    steps: tuple[BakeStep, ...]
    type: TensorType
    sources: tuple[str, ...]

    def __str__(self) -> str:
        chain = " -> ".join(str(s) for s in self.steps) or "identity"
        return f"{self.slot}: {self.type} = ({', '.join(self.inputs)}) -> {chain}"


# ---- transforms ---------------------------------------------------------------------------
# Each takes the list of input arrays (one array after the first step) and the step; it returns
# a new array and never modifies its inputs. BatchNorm folding computes in float64 and rounds
# once, so the folded conv matches conv-then-BN to float32 rounding.

Transform = Callable[[list[np.ndarray], BakeStep], np.ndarray]


def _bn_scale(scale: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    return np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)


def _bn_fold_weight(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    w, scale, var = xs
    k = _bn_scale(scale, var, float(s.attr("epsilon")))
    folded = np.asarray(w, np.float64) * k.reshape((-1,) + (1,) * (w.ndim - 1))
    return folded.astype(w.dtype)


def _bn_fold_bias(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    # inputs: [conv bias,] scale, B, mean, var
    bias = xs[0] if s.attr("has_bias") else None
    scale, b, mean, var = xs[-4:]
    k = _bn_scale(scale, var, float(s.attr("epsilon")))
    base = -np.asarray(mean, np.float64)
    if bias is not None:
        base = base + np.asarray(bias, np.float64)
    return (base * k + np.asarray(b, np.float64)).astype(b.dtype)


def _transpose(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(xs[0], s.attr("perm")))


def _reshape(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    return np.reshape(xs[0], s.attr("shape")).copy()


def _cast(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    to = DType(s.attr("to"))
    if to is DType.BFLOAT16:
        return float32_to_bfloat16(np.asarray(xs[0], np.float32))
    if to is DType.FLOAT16:
        # Saturate rather than overflow to inf: the ANE's weights are clamped the same way.
        return np.clip(xs[0], -65504.0, 65504.0).astype(np.float16)
    return np.asarray(xs[0]).astype(to.numpy)


def _add(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    a, b = xs
    return np.add(a, b.reshape(a.shape) if b.size == a.size else b).astype(a.dtype)


def _negate(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    return np.negative(xs[0])


def _reciprocal(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return (1.0 / np.asarray(xs[0], np.float64)).astype(xs[0].dtype)


def _clamp(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    return np.clip(xs[0], s.attr("min"), s.attr("max")).astype(xs[0].dtype)


def symmetric_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Per-slice symmetric int8 scales of ``w`` along ``axis``: max|w| / 127 in float32
    (1 for an all-zero slice, whose values quantize to 0 whatever the scale)."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    peak = np.max(np.abs(np.asarray(w, np.float32)), axis=others)
    scales = (peak / np.float32(127)).astype(np.float32)
    return np.where(scales > 0, scales, np.float32(1)).astype(np.float32)


def _quantize_symmetric(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    # int8 per channel: round half to even of w / scale (float32 division), clamped to +-127.
    w = np.asarray(xs[0], np.float32)
    axis = int(s.attr("axis"))
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.rint(w / symmetric_scales(w, axis).reshape(shape))
    return np.clip(q, -127, 127).astype(np.int8)


def _symmetric_scale(xs: list[np.ndarray], s: BakeStep) -> np.ndarray:
    # The per-channel weight scale times ``factor`` (the activation scale, Gemm's alpha), in
    # float32: what multiplies the int32 accumulator.
    return (symmetric_scales(xs[0], int(s.attr("axis"))) * np.float32(s.attr("factor", 1.0)))


TRANSFORMS: dict[str, Transform] = {
    "bn_fold_weight": _bn_fold_weight,
    "bn_fold_bias": _bn_fold_bias,
    "transpose": _transpose,
    "reshape": _reshape,
    "cast": _cast,
    "add": _add,
    "negate": _negate,
    "reciprocal": _reciprocal,
    "clamp": _clamp,
    "quantize_symmetric": _quantize_symmetric,
    "symmetric_scale": _symmetric_scale,
}


# ---- the book of recipes a compile writes -------------------------------------------------


class BakeBook:
    """The recipes a compile has written so far, and the Params they start from."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.recipes: dict[str, BakeRecipe] = {}

    def is_weight(self, name: str) -> bool:
        return name in self.graph.params

    def sources_of(self, name: str) -> tuple[str, ...]:
        recipe = self.recipes.get(name)
        return recipe.sources if recipe else (name,)

    def derive(
        self,
        inputs: Iterable[str],
        transform: BakeStep,
        type: TensorType,
        *,
        base: str | None = None,
    ) -> str:
        """A new weight slot computed by ``transform`` from ``inputs``; returns its name.

        A slot derived from one other slot by a one-input step extends that slot's chain, so
        a chain of layout and precision steps stays one recipe. The slot is declared on the
        graph as a Param without data: its data comes from the recipe.
        """
        inputs = tuple(inputs)
        for name in inputs:
            if name not in self.graph.params and name not in self.graph.constants:
                raise CompileError(f"bake recipe input {name!r} is not a weight or constant")
        prior = self.recipes.get(inputs[0]) if len(inputs) == 1 else None
        if prior is not None and prior.steps:
            recipe_inputs, steps = prior.inputs, (*prior.steps, transform)
        else:
            recipe_inputs, steps = inputs, (transform,)
        sources: dict[str, None] = {}
        for name in recipe_inputs:
            for src in self.sources_of(name):
                if src in self.graph.params:
                    sources.setdefault(src)
        slot = self.graph.unique_value_name(f"{base or inputs[0]}@{transform.op}")
        self.graph.types[slot] = type
        self.graph.params[slot] = Param(slot, type)
        self.recipes[slot] = BakeRecipe(slot, recipe_inputs, steps, type, tuple(sources))
        return slot


def identity_recipe(param: Param) -> BakeRecipe:
    return BakeRecipe(param.name, (param.name,), (), param.type, (param.name,))


def bake(
    recipes: Mapping[str, BakeRecipe],
    weights: Mapping[str, np.ndarray],
    constants: Mapping[str, np.ndarray] | None = None,
    only: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Compute the slots of ``recipes`` (those in ``only`` when given) from ``weights``.

    Identity recipes return the weight itself (no copy); every other slot is a new array.
    """
    consts = constants or {}
    done: dict[str, np.ndarray] = {}

    def value(name: str, trail: tuple[str, ...]) -> np.ndarray:
        if name in done:
            return done[name]
        recipe = recipes.get(name)
        if recipe is None or (not recipe.steps and recipe.inputs == (name,)):
            if name in weights:
                return weights[name]
            if name in consts:
                return consts[name]
            raise CompileError(
                f"weight {name!r} is missing: the plan's recipes need it; pass every Param of "
                "the model"
            )
        if name in trail:
            raise CompileError(f"bake recipes form a cycle through {name!r}")
        arrays = [value(i, (*trail, name)) for i in recipe.inputs]
        for s in recipe.steps:
            # ufuncs turn 0-d arrays into numpy scalars; slots are always arrays.
            arrays = [np.asarray(TRANSFORMS[s.op](arrays, s))]
        result = arrays[0]
        if result.shape != recipe.type.shape or result.dtype != recipe.type.dtype.numpy:
            raise CompileError(
                f"bake recipe of {name!r} produced {result.dtype}{list(result.shape)}, the "
                f"plan expects {recipe.type} — a compiler bug; please report it"
            )
        done[name] = result
        return result

    wanted = list(only) if only is not None else list(recipes)
    return {name: value(name, ()) for name in wanted}


def run_recipes(plan: Plan, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every weight slot of ``plan``'s graph, computed from the model's ``weights``.

    ``weights`` maps Param names (the model's initializers) to arrays; the result maps each
    slot the plan's nodes read to its array. Slots that are plain Params are passed through
    without a copy.
    """
    return bake(plan.bake_recipes, weights, plan.graph.constants)


def recipes_reading(
    recipes: Mapping[str, BakeRecipe], changed: Iterable[str]
) -> list[str]:
    """The slots whose recipes depend on any Param in ``changed`` (for weight updates)."""
    changed_set = set(changed)
    return [slot for slot, r in recipes.items() if changed_set & set(r.sources)]


__all__ = [
    "TRANSFORMS",
    "BakeBook",
    "BakeRecipe",
    "BakeStep",
    "bake",
    "identity_recipe",
    "recipes_reading",
    "run_recipes",
    "step",
    "symmetric_scales",
]

"""A Plan (or a Graph) as JSON plus raw tensors, and back — no pickle.

Program files and cache entries must be safe to open: unpickling a file runs code chosen by
whoever wrote it. So a Plan is written as a JSON document (every field spelled out) and a
table of numpy arrays (constants, array-valued attributes); the caller stores the arrays
(nerve stores them as safetensors tensors next to the JSON). Decoding builds the objects
field by field and never calls anything a document names.

Values are tagged where JSON would lose them: tuples (``{"$": "t"}``), floats (exact, as
hex, so ``-0.0``, ``inf`` and ``nan`` survive), dicts with non-string keys, bytes, numpy
scalars, arrays (a reference into the tensor table), string arrays, DTypes, TensorTypes.
Anything else in an attribute is refused with :class:`~nerve.errors.ModelFormatError`.

Weights are never part of the document: ``graph.weights`` is left out (a Plan's structure
is what gets cached and shared; weights travel separately).

>>> import numpy as np
>>> from nerve.ir import Graph, Node, TensorType, DType
>>> g = Graph("g"); g.add_input("x", TensorType(DType.FLOAT32, (2,)))
>>> _ = g.add_node(Node("LeakyRelu", ["x"], ["y"], {"alpha": 0.1}),
...                {"y": TensorType(DType.FLOAT32, (2,))})
>>> g.set_outputs(["y"])
>>> tensors: dict = {}
>>> doc = encode_graph(g, tensors)
>>> decode_graph(doc, tensors).nodes[0].attrs
{'alpha': 0.1}
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import numpy as np

from nerve.compiler.bake import BakeRecipe, BakeStep
from nerve.compiler.memplan import Buffer, MemoryPlan
from nerve.compiler.plan import Plan, Segment
from nerve.compiler.report import CompileReport, PassRecord
from nerve.compiler.targets import Target, get_target
from nerve.errors import ModelFormatError
from nerve.ir import DType, Graph, Node, Param, TensorType, Value

FORMAT = 1

Tensors = MutableMapping[str, np.ndarray]
TargetResolver = Callable[[str, tuple[str, ...]], Target]


# ---- values ------------------------------------------------------------------------------


class _Encoder:
    def __init__(self, tensors: Tensors) -> None:
        self.tensors = tensors
        self._ids: dict[int, str] = {}
        self._keep: list[np.ndarray] = []  # ids stay unique while encoding

    def array(self, a: np.ndarray) -> str:
        name = self._ids.get(id(a))
        if name is None:
            name = f"t{len(self.tensors)}"
            while name in self.tensors:
                name += "_"
            self.tensors[name] = a if a.flags.c_contiguous else a.copy(order="C")
            self._ids[id(a)] = name
            self._keep.append(a)
        return name

    def value(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return {"$": "f", "v": v.hex()}
        if isinstance(v, tuple):
            return {"$": "t", "v": [self.value(x) for x in v]}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            return {"$": "d", "v": [[self.value(k), self.value(x)] for k, x in v.items()]}
        if isinstance(v, DType):
            return {"$": "dt", "v": v.value}
        if isinstance(v, TensorType):
            return {"$": "tt", "v": type_text(v)}
        if isinstance(v, bytes):
            return {"$": "b", "v": v.hex()}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                items = [self.value(x) for x in v.reshape(-1).tolist()]
                return {"$": "sa", "shape": list(v.shape), "v": items}
            return {"$": "a", "v": self.array(v)}
        if isinstance(v, np.generic):
            return {"$": "s", "v": self.array(np.asarray(v))}
        raise ModelFormatError(
            f"cannot serialize a value of type {type(v).__name__} ({v!r:.60}); plans hold "
            "numbers, strings, tuples, lists, dicts and numpy arrays"
        )


def _decode(v: Any, tensors: Mapping[str, np.ndarray]) -> Any:
    if isinstance(v, list):
        return [_decode(x, tensors) for x in v]
    if not isinstance(v, dict):
        return v
    tag, body = v.get("$"), v.get("v")
    if body is None:
        raise ModelFormatError(f"a plan value tagged {tag!r} has no body")
    if tag == "f":
        return float.fromhex(body)
    if tag == "t":
        return tuple(_decode(x, tensors) for x in body)
    if tag == "d":
        return {_decode(k, tensors): _decode(x, tensors) for k, x in body}
    if tag == "dt":
        return DType(body)
    if tag == "tt":
        return parse_type(body)
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "sa":
        flat = [_decode(x, tensors) for x in body]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(v["shape"])
    if tag in ("a", "s"):
        try:
            array = tensors[body]
        except KeyError:
            raise ModelFormatError(f"plan refers to tensor {body!r}, which is missing") from None
        return array[()] if tag == "s" else array
    raise ModelFormatError(f"unknown value tag {tag!r} in a plan document")


def type_text(t: TensorType) -> str:
    return str(t)


@functools.lru_cache(maxsize=4096)
def parse_type(text: str) -> TensorType:
    """The inverse of ``str(TensorType)``: ``"float32[1,3]"`` -> TensorType (memoized: a
    plan repeats a few types thousands of times)."""
    try:
        dtype, _, dims = text.partition("[")
        shape = tuple(int(d) for d in dims.rstrip("]").split(",") if d != "")
        return TensorType(DType(dtype), shape)
    except ValueError:
        raise ModelFormatError(f"{text!r} is not a tensor type") from None


def encode_value(value: Any, tensors: Tensors) -> Any:
    """A JSON-able form of an attribute-like ``value``; arrays go into ``tensors``."""
    return _Encoder(tensors).value(value)


def decode_value(doc: Any, tensors: Mapping[str, np.ndarray]) -> Any:
    """The inverse of :func:`encode_value`."""
    return _decode(doc, tensors)


# ---- graphs ------------------------------------------------------------------------------


def encode_graph(graph: Graph, tensors: Tensors) -> dict[str, Any]:
    """``graph``'s structure as a JSON-able document; arrays go into ``tensors``."""
    return _encode_graph(graph, _Encoder(tensors))


def _encode_graph(graph: Graph, enc: _Encoder) -> dict[str, Any]:
    return {
        "name": graph.name,
        "inputs": [[v.name, type_text(v.type)] for v in graph.inputs],
        "outputs": [[v.name, type_text(v.type)] for v in graph.outputs],
        "types": [[n, type_text(t)] for n, t in graph.types.items()],
        "constants": [[n, enc.value(np.asarray(a))] for n, a in graph.constants.items()],
        "params": [[n, type_text(p.type)] for n, p in graph.params.items()],
        "nodes": [
            [n.op_type, n.domain, n.name, list(n.inputs), list(n.outputs), enc.value(n.attrs)]
            for n in graph.nodes
        ],
    }


def decode_graph(doc: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> Graph:
    """The Graph ``doc`` describes (without weights: ``graph.weights`` is empty)."""
    try:
        g = Graph(doc["name"])
        g.types = {n: parse_type(t) for n, t in doc["types"]}
        for name, value in doc["constants"]:
            array = np.asarray(_decode(value, tensors))
            if array.flags.writeable:
                array = array.view()
                array.flags.writeable = False
            g.constants[name] = array
        g.params = {n: Param(n, parse_type(t)) for n, t in doc["params"]}
        g.inputs = [Value(n, parse_type(t)) for n, t in doc["inputs"]]
        g.outputs = [Value(n, parse_type(t)) for n, t in doc["outputs"]]
        for op_type, domain, name, inputs, outputs, attrs in doc["nodes"]:
            g.nodes.append(Node(op_type, list(inputs), list(outputs),
                                dict(_decode(attrs, tensors)), name, domain))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"a graph document is malformed ({type(exc).__name__}: {exc})"
        ) from None
    g._node_names = {n.name for n in g.nodes}
    return g


# ---- plans -------------------------------------------------------------------------------


def encode_plan(plan: Plan, tensors: Tensors) -> dict[str, Any]:
    """``plan`` as a JSON-able document (no weights); arrays go into ``tensors``."""
    enc = _Encoder(tensors)
    index = {id(n): i for i, n in enumerate(plan.graph.nodes)}
    by_name = {n.name: i for i, n in enumerate(plan.graph.nodes)}
    segments = []
    for seg in plan.segments:
        ids = [index.get(id(n), by_name.get(n.name)) for n in seg.nodes]
        if any(i is None for i in ids):
            raise ModelFormatError(f"segment {seg.index} holds a node that is not in the graph")
        segments.append([seg.index, seg.engine, ids])
    report = plan.report
    return {
        "format": FORMAT,
        "key": plan.key,
        "target": {"name": plan.target.name, "features": list(plan.target.features)},
        "options": enc.value(dict(plan.options)),
        "graph": _encode_graph(plan.graph, enc),
        "segments": segments,
        "recipes": [
            [r.slot, list(r.inputs), [[s.op, enc.value(s.attrs)] for s in r.steps],
             type_text(r.type), list(r.sources)]
            for r in plan.bake_recipes.values()
        ],
        "memory": {
            "buffers": [enc.value(dataclasses.astuple(b)) for b in plan.memory.buffers.values()],
            "arena_bytes": plan.memory.arena_bytes,
            "total_bytes": plan.memory.total_bytes,
            "peak_live_bytes": plan.memory.peak_live_bytes,
        },
        "layouts": dict(plan.layouts),
        "params": [[n, type_text(p.type)] for n, p in plan.params.items()],
        "diagnostics": [enc.value(dataclasses.asdict(d)) for d in plan.diagnostics],
        "report": {
            **{k: v for k, v in report.to_dict().items() if k not in ("passes", "segments")},
            "passes": [enc.value(dataclasses.astuple(p)) for p in report.passes],
            "segments": [list(s) for s in report.segments],
        },
    }


def builtin_target(name: str, features: tuple[str, ...]) -> Target:
    """The built-in target ``name``, with the ISA ``features`` the plan was compiled for."""
    target = get_target(name)
    if tuple(target.features) != features:
        target = dataclasses.replace(target, features=features)
    return target


def decode_plan(
    doc: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    resolve_target: TargetResolver = builtin_target,
) -> Plan:
    """The Plan ``doc`` describes; its graph has no weights (bind them separately)."""
    from nerve.compiler.restrictions import Diagnostic

    if doc.get("format") != FORMAT:
        raise ModelFormatError(
            f"plan format {doc.get('format')!r} is not the format this nerve reads ({FORMAT})"
        )
    graph = decode_graph(doc["graph"], tensors)
    try:
        target = resolve_target(doc["target"]["name"], tuple(doc["target"]["features"]))
        segments = [
            Segment(i, engine, [graph.nodes[k] for k in ids]) for i, engine, ids in doc["segments"]
        ]
        recipes = {}
        for slot, inputs, steps, type_, sources in doc["recipes"]:
            chain = tuple(BakeStep(op, tuple(_decode(a, tensors))) for op, a in steps)
            recipes[slot] = BakeRecipe(slot, tuple(inputs), chain, parse_type(type_),
                                       tuple(sources))
        mem = doc["memory"]
        buffers = [Buffer(*_decode(b, tensors)) for b in mem["buffers"]]
        memory = MemoryPlan({b.name: b for b in buffers}, mem["arena_bytes"],
                            mem["total_bytes"], mem["peak_live_bytes"])
        rep = doc["report"]
        report = CompileReport(
            target=rep["target"],
            passes=[PassRecord(*_decode(p, tensors)) for p in rep["passes"]],
            cache=rep["cache"],
            notes=list(rep["notes"]),
            peak_scratch_bytes=rep["peak_scratch_bytes"],
            intermediate_bytes=rep["intermediate_bytes"],
            peak_live_bytes=rep["peak_live_bytes"],
            intermediates=rep["intermediates"],
            segments=[(e, n) for e, n in rep["segments"]],
            bake_recipes=rep["bake_recipes"],
        )
        diagnostics = [Diagnostic(**_decode(d, tensors)) for d in doc["diagnostics"]]
        report.diagnostics = list(diagnostics)
        return Plan(
            graph=graph,
            target=target,
            segments=segments,
            key=doc["key"],
            report=report,
            options=_decode(doc["options"], tensors),
            bake_recipes=recipes,
            memory=memory,
            layouts=dict(doc["layouts"]),
            params={n: Param(n, parse_type(t)) for n, t in doc["params"]},
            diagnostics=diagnostics,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFormatError(
            f"a plan document is malformed ({type(exc).__name__}: {exc})"
        ) from None


__all__ = [
    "FORMAT",
    "builtin_target",
    "decode_graph",
    "decode_plan",
    "decode_value",
    "encode_graph",
    "encode_plan",
    "encode_value",
    "parse_type",
]

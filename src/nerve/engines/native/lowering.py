"""The lowering of a segment's nodes to steps: bookkeeping, dispatch and elementwise chains.

Fusion rules (all local, all safe):

* an elementwise node extends the chain whose last result it consumes when that result has no
  other reader and is not needed after the segment, the shapes agree, and every other input
  is computed before the chain runs;
* a chain may start right after a MatMul/Gemm/Conv, becoming that kernel's *epilogue*, when
  each of its operands can be addressed from the kernel's (batch, row, column) blocks;
* view ops (Reshape, Flatten, Squeeze, Unsqueeze, Identity) alias their input.

Kernel steps come from builders registered per op type (``lower_gemm``, ``lower_ops``);
``lower`` assembles them.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping

from nerve.engines.native.buffers import root_of
from nerve.engines.native.claims import ELEMENTWISE_OPS, VIEW_OPS
from nerve.engines.native.elementwise import Chain, ChainOp, _group_stride
from nerve.engines.native.packing import PackSpec
from nerve.engines.native.shapes import broadcast_strides
from nerve.engines.native.steps import ChainStep, Step, _WithEpilogue
from nerve.errors import CompileError
from nerve.ir import NERVE_DOMAIN, DType, Graph, Node, TensorType
from nerve.ir.fused_ops import OPERANDS, step_node

# A chain program: registers (tensor names, or ready-made arguments) and steps over them.
Register = str | tuple[str, int | float]
Program = tuple[list[Register], list[tuple[Node, list[int | None]]]]
MAIN = "\0main"  # the register holding a GEMM-like step's own result

Builder = Callable[["Lowering", Node], "Step | list[Step]"]
BUILDERS: dict[str, Builder] = {}  # op type -> the function lowering it (see ``builds``)


def builds(*ops: str) -> Callable[[Builder], Builder]:
    """Register the decorated function as the lowering of ``ops``."""

    def register(fn: Builder) -> Builder:
        for op in ops:
            BUILDERS[op] = fn
        return fn

    return register


class Lowering:
    """The steps of one segment, built node by node."""

    def __init__(
        self, graph: Graph, nodes: list[Node], keep: set[str], features: tuple[str, ...] = ()
    ) -> None:
        self.graph = graph
        self.keep = keep
        self.nodes = nodes  # the segment's nodes (builders may look ahead at consumers)
        # ISA features of the target (Target.features): builders pick kernel variants by them.
        self.features = features
        self.extra_types: dict[str, TensorType] = {}  # tensors the lowering itself introduces
        self.types: Mapping[str, TensorType] = ChainMap(self.extra_types, graph.types)
        self.steps: list[Step] = []
        self.alias: dict[str, str] = {}
        # Weight slots the lowering introduces in a kernel's packed layout (see packing.py).
        self.packed: dict[str, PackSpec] = {}
        self.produced_at: dict[str, int] = {}  # tensor -> index of the step computing it
        self.uses: dict[str, int] = {}
        for node in nodes:
            for name in node.inputs:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
        # Chains that may still grow, by the tensor holding their latest result.
        self.open: dict[str, _WithEpilogue | ChainStep] = {}
        for node in nodes:
            self._lower(node)

    # ---- bookkeeping ------------------------------------------------------------------------
    def add(self, step: Step) -> Step:
        self.steps.append(step)
        for name in step.writes():
            self.produced_at[name] = len(self.steps) - 1
        if isinstance(step, (_WithEpilogue, ChainStep)):
            self.open[step.chain.out] = step
        return step

    def type(self, name: str) -> TensorType:
        return self.types[name]

    def fresh(self, base: str, type_: TensorType) -> str:
        """A new tensor name for an intermediate the lowering introduces."""
        name, i = f"{base}.native", 0
        while name in self.types:
            i += 1
            name = f"{base}.native{i}"
        self.extra_types[name] = type_
        return name

    def packed_weight(self, source: str, spec: PackSpec, size: int) -> str | None:
        """The packed slot of weight ``source`` (None when it is not a weight)."""
        if source not in self.graph.params:
            return None
        name = f"{source}.packed.{spec.kind}{spec.groups}{'t' if spec.trans else ''}"
        if name not in self.packed:
            self.packed[name] = spec
            self.extra_types[name] = TensorType(DType.FLOAT32, (size,))
        return name

    def _ready_before(self, name: str, index: int) -> bool:
        root = root_of(self.alias, name)
        at = self.produced_at.get(root, self.produced_at.get(name))
        return at is None or at < index

    # ---- dispatch ---------------------------------------------------------------------------
    def _lower(self, node: Node) -> None:
        op = node.qualified_op
        if op in VIEW_OPS:
            self.alias[node.outputs[0]] = node.inputs[0]
            return
        if op in ELEMENTWISE_OPS or op == "nerve.FusedElementwise":
            self._elementwise(node)
            return
        operands = node.attr(OPERANDS) if node.domain == NERVE_DOMAIN else None
        if operands:  # narrowed operands (bf16): "nerve.FusedMatMul[bfloat16]" (lower_bf16)
            op = f"{op}[{operands}]"
        builder = BUILDERS.get(op)
        if builder is None:
            raise CompileError(f"native engine: no lowering for {op} (node {node.name!r})")
        result = builder(self, node)
        for step in result if isinstance(result, list) else [result]:
            self.add(step)

    # ---- elementwise chains -------------------------------------------------------------------
    def _program(self, node: Node) -> Program:
        """``node`` as registers (its inputs) and steps over them."""
        if node.domain == NERVE_DOMAIN:
            registers: list[Register] = [n for n in node.inputs if n]
            steps: list[tuple[Node, list[int | None]]] = [
                (step_node(s), [int(r) for r in s[1]]) for s in node.attr("program", ())
            ]
            return registers, steps
        return list(node.inputs), [(node, list(range(len(node.inputs))))]

    def _operand_shape(self, node: Node, index: int, name: str) -> tuple[int, ...]:
        shape = self.type(name).shape
        if node.op_type == "BatchNormalization" and not node.domain and index > 0:
            rank = self.type(node.inputs[0]).rank
            shape = (*shape, *([1] * (rank - 2)))
        return shape

    def _elementwise(self, node: Node) -> None:
        out = node.outputs[0]
        shape = self.type(out).shape
        for name in node.inputs:
            step = self.open.get(name)
            if step is None or self.uses.get(name, 0) != 1 or name in self.keep:
                continue
            if step.chain.shape != shape:
                continue
            index = self.steps.index(step)
            others = [n for n in node.inputs if n and n != name]
            if not all(self._ready_before(n, index) for n in others):
                continue
            if self.extend(step, node, name):
                del self.open[name]
                self.open[out] = step
                self.produced_at[out] = index
                return
        step = ChainStep([], Chain(shape, out))
        if not self.extend(step, node, None):
            raise CompileError(f"native engine: cannot fuse node {node.name!r}")
        self.add(step)

    def extend(
        self,
        step: _WithEpilogue | ChainStep,
        node: Node,
        tail: str | None,
        program: Program | None = None,
        out: str | None = None,
    ) -> bool:
        """Append ``node`` (or ``program``, computed for ``node``) to ``step``'s chain.

        ``tail`` names the input holding the chain's latest result. A register may also be a
        ready-made argument (a literal). Returns False, changing nothing, when an operand
        cannot be addressed from the step's output blocks.
        """
        chain = step.chain
        trial = Chain(chain.shape, chain.out, list(chain.ops), list(chain.operands))
        registers, steps = program if program is not None else self._program(node)
        args: list[tuple[str, int | float]] = []
        for i, name in enumerate(registers):
            if isinstance(name, tuple):
                args.append(name)
            elif not name:
                args.append(("none", 0))
            elif name == tail:
                args.append(("value", len(trial.ops) - 1) if trial.ops else ("acc", 0))
            elif self._is_literal(name):
                args.append(("literal", float(self.graph.constants[name].reshape(-1)[0])))
            else:
                strides = broadcast_strides(self._operand_shape(node, i, name), chain.shape)
                if isinstance(step, _WithEpilogue) and not _addressable(
                    chain.shape, strides, step.groups
                ):
                    return False
                args.append(("operand", trial.operand(name, self.type(name).dtype, strides)))
        for op_node, refs in steps:
            trial.ops.append(
                ChainOp(op_node, [args[r] if r is not None else ("none", 0) for r in refs])
            )
            args.append(("value", len(trial.ops) - 1))
        chain.ops, chain.operands = trial.ops, trial.operands
        chain.out = out or node.outputs[0]
        if node not in step.nodes:
            step.nodes.append(node)
        return True

    def _is_literal(self, name: str) -> bool:
        value = self.graph.constants.get(name)
        return value is not None and value.size == 1 and value.dtype.kind in "fb"


def _addressable(
    shape: tuple[int, ...], strides: tuple[int, ...], groups: tuple[list[int], list[int], list[int]]
) -> bool:
    _, md, nd = groups
    m = _group_stride(shape, strides, md)
    n = _group_stride(shape, strides, nd)
    return m is not None and n is not None and n in (0, 1)

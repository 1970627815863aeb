"""Targets are data: what an engine supports, its limits, its features.

A :class:`Target` says which engine runs its segments, which ops it supports (with predicates on
attributes, dtypes and shapes), the dtypes it computes in (its precision policies), its layout
rules, its resource limits, whether weights can change after compile, and how many compiles a
process may afford. The passes and the restriction catalog read these fields; no pass has a
target's name written into it.

>>> get_target("host").engine
'host'
>>> sorted(TARGETS)
['ane', 'cpu', 'host']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from nerve.errors import TargetError
from nerve.ir import DType, Graph, Node

# (node, graph) -> why the target cannot run the node, or None when it can.
OpPredicate = Callable[[Node, Graph], "str | None"]


@dataclass(frozen=True)
class OpRule:
    """How a target supports one op: allowed tensor dtypes, a rank limit, and a predicate."""

    dtypes: frozenset[DType] | None = None  # dtypes of the node's runtime tensors; None: any
    max_rank: int | None = None
    check: OpPredicate | None = None


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means "no limit known"."""

    scratch_bytes: int | None = None  # largest scratch arena the engine can address
    min_io_bytes: int | None = None  # smallest I/O buffer per tensor
    max_rank: int | None = None
    max_dim: int | None = None
    max_channels: int | None = None  # widest convolution / linear accepted
    max_program_weights: int | None = None  # weight tensors one program may reference
    max_program_io: int | None = None  # inputs + outputs of one program
    sram_bytes: int | None = None  # on-chip memory; larger tensors spill (slower, not wrong)


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which dtype float tensors compute in.

    ``compute`` None keeps every tensor's own dtype (the model's). Otherwise the ops in ``ops``
    (all float ops when None) compute in ``compute``; the precision pass inserts casts where
    dtypes meet and records weight casts as bake-recipe steps. Graph inputs and outputs keep
    the model's dtypes, so callers never see the policy except through rounding.
    """

    name: str
    compute: DType | None = None
    ops: frozenset[str] | None = None
    # ISA features of which the policy needs at least one (cpu bf16: amx_bf16 or avx512_bf16).
    requires_any: tuple[str, ...] = ()
    # Operand precision (bfloat16 or int8): the GEMM-class ops in ``ops`` read their operands
    # rounded to bfloat16 (or quantized to int8: weights per output channel, activations per
    # tensor from a calibration) and accumulate in float32 (int32); their outputs keep the
    # model's dtype. This is what AMX / AVX512-BF16 / VNNI hardware computes.
    operands: DType | None = None
    # ISA features of the target the policy uses (shown in the CompileReport).
    uses: tuple[str, ...] = ()


NATIVE = PrecisionPolicy("native")
FP32 = PrecisionPolicy("fp32", DType.FLOAT32)
# The ops whose operands the bf16 / int8 policies narrow (their accumulation stays wide).
GEMM_OPS = frozenset({"MatMul", "Gemm", "Conv", "nerve.FusedMatMul", "nerve.FusedConv"})
BF16_OPERANDS = PrecisionPolicy("bf16", ops=GEMM_OPS, operands=DType.BFLOAT16)
INT8_OPERANDS = PrecisionPolicy("int8", ops=GEMM_OPS, operands=DType.INT8)
# ISA features that run bf16 / int8 dot products, best first.
BF16_FEATURES = ("amx_bf16", "avx512_bf16")
INT8_FEATURES = ("amx_int8", "avx512_vnni")


def auto_policy(features: tuple[str, ...]) -> PrecisionPolicy:
    """``auto``: bf16 operands for matmul/conv where the features run bf16, else fp32."""
    have = tuple(f for f in BF16_FEATURES if f in features)
    if have:
        return replace(BF16_OPERANDS, name="auto", uses=have)
    return replace(FP32, name="auto")


@dataclass(frozen=True)
class LayoutRules:
    """Tensor layouts a target wants.

    ``activation`` is the layout of feature maps ("NCHW", "NHWC", "1C1S" — the ANE's
    ``[1, C, 1, S]``). ``conv_bias`` False means a convolution cannot carry its bias (it is
    added by a separate op). ``pack_transposed_weights`` asks the layout pass to store weights
    that ops read transposed (``Transpose(W)``, ``Gemm(transB=1)``) pre-transposed, as a
    bake-recipe step, so no run transposes them again.
    """

    activation: str = "NCHW"
    conv_bias: bool = True
    pack_transposed_weights: bool = True


@dataclass(frozen=True)
class Target:
    """One compilation target, as data. See the module docstring."""

    name: str
    engine: str
    description: str
    features: tuple[str, ...] = ()
    # Weights may be replaced after compile (delta compilation) on this target.
    mutable_weights: bool = True
    options: dict[str, object] = field(default_factory=dict)
    # Ops the engine runs (qualified names, "nerve.FusedConv" for nerve ops); None: every op.
    ops: Mapping[str, OpRule] | None = None
    dtypes: frozenset[DType] | None = None
    precisions: Mapping[str, PrecisionPolicy] = field(
        default_factory=lambda: MappingProxyType({"native": NATIVE})
    )
    default_precision: str = "native"
    # Policies the target runs only when asked by name (the host emulates bf16 and int8
    # exactly, for accuracy reports); automatic choosers (power modes) never pick them.
    emulations: Mapping[str, PrecisionPolicy] = field(default_factory=lambda: MappingProxyType({}))
    layout: LayoutRules = field(default_factory=LayoutRules)
    limits: Limits = field(default_factory=Limits)
    compile_budget: int | None = None  # compiles one process can afford; None: unlimited
    # Fusion rewrites the engine can execute; None: all of them.
    fusions: frozenset[str] | None = None

    def supports(self, node: Node, graph: Graph) -> str | None:
        """Why this target cannot run ``node``, or None when it can.

        >>> from nerve.ir import Node
        >>> get_target("ane").supports(Node("Concat", ["a", "b"], ["c"]), Graph()) is not None
        True
        """
        if self.ops is None:
            return None
        rule = self.ops.get(node.qualified_op)
        if rule is None:
            return f"{self.name} has no {node.qualified_op} op"
        tensors = [n for n in (*node.inputs, *node.outputs) if n and n not in graph.constants]
        if rule.dtypes is not None or self.dtypes is not None:
            allowed = rule.dtypes if rule.dtypes is not None else self.dtypes
            assert allowed is not None
            for name in tensors:
                dtype = graph.types[name].dtype
                if dtype not in allowed:
                    return f"{self.name} cannot hold {dtype.value} tensors ({name!r})"
        max_rank = rule.max_rank if rule.max_rank is not None else self.limits.max_rank
        if max_rank is not None:
            for name in tensors:
                if graph.types[name].rank > max_rank:
                    return f"{name!r} has rank {graph.types[name].rank} > {max_rank}"
        return rule.check(node, graph) if rule.check else None

    def precision(self, name: str | None = None) -> PrecisionPolicy:
        """The precision policy ``name`` (the target's default when None)."""
        key = name or self.default_precision
        policy = self.precisions.get(key) or self.emulations.get(key)
        if policy is None:
            raise TargetError(
                f"target {self.name!r} has no precision {key!r}; it offers "
                f"{', '.join([*self.precisions, *self.emulations])}"
            )
        if policy.requires_any and not set(policy.requires_any) & set(self.features):
            raise TargetError(
                f"precision {key!r} on target {self.name!r} needs one of the CPU features "
                f"{', '.join(policy.requires_any)}, which this machine lacks; use "
                "precision='fp32'"
            )
        return policy

    def allows_fusion(self, name: str) -> bool:
        return self.fusions is None or name in self.fusions


def _builtin() -> dict[str, Callable[[], Target]]:
    from nerve.compiler.targets import ane, cpu, host

    return {"host": host.target, "cpu": cpu.target, "ane": ane.target}


class _Targets(Mapping[str, Target]):
    """The built-in targets, built on first use (the cpu target probes the machine)."""

    def __init__(self) -> None:
        self._made: dict[str, Target] = {}

    def __getitem__(self, name: str) -> Target:
        if name not in self._made:
            self._made[name] = _builtin()[name]()
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_builtin()))

    def __len__(self) -> int:
        return len(_builtin())


TARGETS: Mapping[str, Target] = _Targets()


def get_target(name: str | Target) -> Target:
    """The target named ``name`` (a Target passes through)."""
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; available: {', '.join(TARGETS)}") from None


__all__ = [
    "BF16_FEATURES",
    "BF16_OPERANDS",
    "FP32",
    "GEMM_OPS",
    "INT8_FEATURES",
    "INT8_OPERANDS",
    "NATIVE",
    "TARGETS",
    "LayoutRules",
    "Limits",
    "OpRule",
    "PrecisionPolicy",
    "Target",
    "auto_policy",
    "get_target",
]

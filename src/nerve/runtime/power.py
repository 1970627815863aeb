"""Power modes, the energy model, measured energy (RAPL) and the power-budget governor.

Power modes
-----------
A mode sets three things the runtime controls:

============  =============================  ======================  =========================
mode          threads per engine             precision preference    dynamic batching
============  =============================  ======================  =========================
performance   one per available core         bf16, fp16, then fp32   on, 50 µs max queue delay
                                             (reduced precision      (fill batches quickly)
                                             where the target and
                                             CPU support it)
balanced      half the cores (at least 1)    fp32 (accuracy)         on, 500 µs
efficiency    1                              bf16, fp16, then fp32   on, 2000 µs (fuller
                                                                     batches, fewer wake-ups)
============  =============================  ======================  =========================

The precision preference is resolved against the target: the first precision it offers and
this CPU runs (``cpu`` offers fp32 and bf16 — bf16 only with AMX/AVX512-BF16; ``host`` only
its native types, so there the target default applies). Threads and precision reach the
compiler through :meth:`PowerMode.compile_options` (used by
:meth:`nerve.Runtime.compile`); creating a Runtime (or switching its mode) also caps the BLAS
threads numpy uses, process-wide (:func:`apply_threads`). The batching delay is the default
``max_queue_delay_us`` of batched programs.

The energy model
----------------
``joules = Σ_nodes flops · (e_op[dtype] + e_issue[engine]) + bytes · e_mem(tensor size)``

where *flops* count one add or one multiply as one operation (a multiply-add is 2), and
*bytes* are the bytes each node reads and writes (every tensor a node touches, which is what an
unfused engine moves). Coefficients, in picojoules:

* ``e_op`` — arithmetic energy from M. Horowitz, "Computing's Energy Problem (and what we can
  do about it)", ISSCC 2014, Table at 45 nm / 0.9 V: fp32 add 0.9, mult 3.7 → 2.3 per op;
  fp16 add 0.4, mult 1.1 → 0.75 (used for fp16 and bf16); int8 add 0.03, mult 0.2 → 0.115;
  int32 add 0.1, mult 3.1 → 1.6. Not in the paper, our assumption: 64-bit types cost 4x their
  32-bit counterparts (multiplier energy grows about quadratically with width); int16 half of
  int32; bool like int8.
* ``e_issue`` — instruction overhead (fetch, decode, register file), ~70 pJ per instruction in
  the same paper, divided by the operations one instruction does: host engine (numpy ufuncs,
  AVX2 without FMA: 8 lanes) 70/8 = 8.75; native engine (AVX-512 FMA: 16 lanes x 2) 70/32 =
  2.19; AMX (one TDPBF16PS tile op = 16x16x32 multiply-adds = 16384 ops) 70/16384 ≈ 0.004.
* ``e_mem`` — from the same paper, per 64-bit access: 1 MB SRAM 100 pJ → 12.5 pJ/byte for a
  tensor of at most 1 MiB (assumed to stay in cache); DRAM 1.3-2.6 nJ → 162.5 pJ/byte (the low
  end) for larger tensors.

These are 45 nm figures: a current 7-10 nm CPU spends roughly 3-4x less per operation, so the
estimates run high. They are for comparing programs, precisions and batch sizes, and for
enforcing ``power_budget_w`` conservatively — not for billing.

Measured energy comes from Intel RAPL (``/sys/class/powercap/intel-rapl:0/energy_uj``) where the
OS exposes it and we may read it; on machines without it (like many VMs) it is reported as
``None``.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nerve.errors import NerveError
from nerve.ir import DType, Graph, Node

if TYPE_CHECKING:
    from nerve.runtime.program import Program


# --------------------------------------------------------------------------- power modes


@dataclass(frozen=True)
class PowerMode:
    """What a power mode sets: threads, precision preference and batching."""

    name: str
    threads: int  # 0: one per available core; -k: cores // k; k > 0: exactly k
    precision: tuple[str, ...]  # precisions to prefer, best first (the target's default last)
    batching: bool  # dynamic batching for programs registered with batch=True
    max_queue_delay_us: int  # default wait for a fuller batch

    def resolved_threads(self) -> int:
        """The thread count this mode asks for on this machine."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
        if self.threads == 0:
            return cores
        if self.threads < 0:  # -k: cores / k
            return max(1, cores // -self.threads)
        return self.threads

    def precision_for(self, target: Any) -> str | None:
        """The first preferred precision ``target`` offers and this CPU can run (None: the
        target's default). ``target`` is a name or a :class:`nerve.compiler.targets.Target`."""
        from nerve.compiler.targets import get_target

        tgt = get_target(target)
        for name in self.precision:
            if name in tgt.precisions:
                try:
                    tgt.precision(name)  # raises when the CPU lacks the features it needs
                except NerveError:
                    continue
                return name
        return None

    def compile_options(self, target: Any = "host") -> dict[str, Any]:
        """Options for :func:`nerve.compile` on ``target`` that carry this mode's thread count
        and precision preference."""
        options: dict[str, Any] = {"threads": self.resolved_threads()}
        precision = self.precision_for(target)
        if precision is not None:
            options["precision"] = precision
        return options


POWER_MODES: dict[str, PowerMode] = {
    m.name: m
    for m in (
        PowerMode("performance", threads=0, precision=("bf16", "fp16", "fp32"), batching=True,
                  max_queue_delay_us=50),
        PowerMode("balanced", threads=-2, precision=("fp32",), batching=True,
                  max_queue_delay_us=500),
        PowerMode("efficiency", threads=1, precision=("bf16", "fp16", "fp32"), batching=True,
                  max_queue_delay_us=2000),
    )
}


def get_power_mode(mode: str | PowerMode) -> PowerMode:
    """The PowerMode named ``mode`` (or ``mode`` itself)."""
    if isinstance(mode, PowerMode):
        return mode
    try:
        return POWER_MODES[mode]
    except KeyError:
        raise NerveError(
            f"unknown power mode {mode!r}; choose one of {', '.join(POWER_MODES)}"
        ) from None


_BLAS_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",  # the OpenBLAS inside numpy's wheels
)


def _openblas_libraries() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; else none)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps
                           if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []


def apply_threads(threads: int) -> bool:
    """Cap BLAS threads process-wide (numpy's matmul in the host engine); True if applied.

    Uses threadpoolctl when installed, otherwise OpenBLAS's own ``*_set_num_threads`` in the
    libraries already loaded. Why it matters: OpenBLAS threads spin after each call, and on a
    small machine they starve the scheduler's threads (10 ms hand-offs instead of 50 µs).
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        threadpool_limits(limits=threads, user_api="blas")
        return True
    import ctypes

    applied = False
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                applied = True
                break
    return applied


# --------------------------------------------------------------------------- energy model

PJ = 1e-12
# Arithmetic energy per operation (pJ), Horowitz ISSCC 2014, 45 nm; see the module doc.
OP_PJ: dict[DType, float] = {
    DType.FLOAT32: 2.3,
    DType.FLOAT16: 0.75,
    DType.BFLOAT16: 0.75,
    DType.FLOAT64: 9.2,
    DType.INT8: 0.115,
    DType.UINT8: 0.115,
    DType.BOOL: 0.115,
    DType.INT16: 0.8,
    DType.UINT16: 0.8,
    DType.INT32: 1.6,
    DType.UINT32: 1.6,
    DType.INT64: 6.4,
    DType.UINT64: 6.4,
    DType.STRING: 0.0,
}
# Instruction-issue overhead per operation (pJ) by engine; ~70 pJ/instruction / ops per instr.
ISSUE_PJ: dict[str, float] = {"host": 70 / 8, "native": 70 / 32, "cpu": 70 / 32,
                              "amx": 70 / 16384, "null": 0.0}
CACHE_PJ_PER_BYTE = 100 / 8  # 1 MB SRAM, 64-bit access
DRAM_PJ_PER_BYTE = 1300 / 8  # DRAM, 64-bit access (low end of 1.3-2.6 nJ)
CACHE_RESIDENT_BYTES = 1 << 20  # tensors up to this size are assumed to stay in cache

# Multiplier on output elements for ops that are more than one operation per element.
_PER_ELEMENT: dict[str, float] = {
    "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "RMSNormalization": 6,
    "BatchNormalization": 2, "InstanceNormalization": 8, "GroupNormalization": 8,
    "Gelu": 8, "Erf": 4, "Tanh": 4, "Sigmoid": 4, "Exp": 4, "Log": 4, "Sqrt": 2, "Pow": 4,
    "HardSigmoid": 3, "HardSwish": 4, "LeakyRelu": 2, "Elu": 4, "Selu": 5, "Softplus": 4,
    "Mish": 8, "Swish": 5, "Clip": 2, "LayerNorm": 8, "RMSNorm": 6,
}
# Ops that only move or reinterpret data.
_NO_FLOPS = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Shape", "Size",
    "Cast", "CastLike", "ConstantOfShape", "Constant", "Range", "DepthToSpace", "SpaceToDepth",
    "ScatterND", "ScatterElements", "Where", "Resize",
})


@dataclass(frozen=True)
class Energy:
    """Work and estimated energy of one run."""

    flops: float
    bytes: float
    joules: float


def node_flops(graph: Graph, node: Node) -> float:
    """Operations of one node (an add or a multiply counts 1)."""
    types = graph.types
    outs = [types[o] for o in node.outputs if o and o in types]
    out_numel = sum(t.numel for t in outs)
    op = node.op_type
    if op in _NO_FLOPS:
        return 0.0
    if node.domain == "nerve" and op in _FUSED:
        return _FUSED[op](graph, node, out_numel)
    if op in ("MatMul", "MatMulInteger", "FusedMatMul") and node.inputs and node.inputs[0] in types:
        k = types[node.inputs[0]].shape[-1] if types[node.inputs[0]].shape else 1
        return 2.0 * out_numel * k
    if op == "Gemm" and node.inputs[0] in types:
        a = types[node.inputs[0]].shape
        k = a[0] if node.attr("transA", 0) else a[-1]
        bias = out_numel if len(node.inputs) > 2 and node.inputs[2] else 0
        return 2.0 * out_numel * k + bias
    if op in ("Conv", "ConvInteger", "ConvTranspose") and len(node.inputs) > 1:
        w = types.get(node.inputs[1])
        per_out = math.prod(w.shape[1:]) if w is not None else 1
        if op == "ConvTranspose" and w is not None:  # weight is (C_in, C_out/group, k...)
            x = types[node.inputs[0]]
            return 2.0 * x.numel * math.prod(w.shape[1:])
        return 2.0 * out_numel * per_out
    if op.startswith("Reduce") or op in ("ArgMax", "ArgMin", "GlobalAveragePool",
                                         "GlobalMaxPool"):
        return float(sum(types[i].numel for i in node.inputs if i and i in types))
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = node.attr("kernel_shape", ()) or (1,)
        return float(out_numel * math.prod(kernel))
    return float(out_numel * _PER_ELEMENT.get(op, 1.0))


def _program_flops(steps: Any, numel: int) -> float:
    """Operations of a fused elementwise program (or epilogue) over ``numel`` elements."""
    return float(sum(_PER_ELEMENT.get(step[0], 1.0) for step in steps or ()) * numel)


def _fused_matmul(graph: Graph, node: Node, out: int) -> float:
    a = graph.types[node.inputs[0]].shape
    k = a[-1] if a else 1
    bias = out if len(node.inputs) > 2 and node.inputs[2] else 0
    return 2.0 * out * k + bias + _program_flops(node.attr("epilogue"), out)


def _fused_conv(graph: Graph, node: Node, out: int) -> float:
    w = graph.types[node.inputs[1]].shape
    bias = out if len(node.inputs) > 2 and node.inputs[2] else 0
    return 2.0 * out * math.prod(w[1:]) + bias + _program_flops(node.attr("epilogue"), out)


def _fused_elementwise(graph: Graph, node: Node, out: int) -> float:
    return _program_flops(node.attr("program"), out)


def _attention(graph: Graph, node: Node, out: int) -> float:
    q, kt, v = (graph.types[name].shape for name in node.inputs[:3])
    rows = math.prod(q[:-1])  # batch x heads x query length
    keys, d, dv = kt[-1], q[-1], v[-1]
    # Q.Kt, scale (+ mask), softmax (~5 per score), then P.V.
    return float(rows * keys * (2 * d + 2 + 5 + 2 * dv))


def _norm(per_element: float) -> Callable[[Graph, Node, int], float]:
    return lambda graph, node, out: per_element * out


_FUSED: dict[str, Callable[[Graph, Node, int], float]] = {
    "FusedMatMul": _fused_matmul,
    "FusedConv": _fused_conv,
    "FusedElementwise": _fused_elementwise,
    "Attention": _attention,
    "LayerNorm": _norm(8),
    "RMSNorm": _norm(6),
}


def _mem_pj(nbytes: int) -> float:
    per_byte = CACHE_PJ_PER_BYTE if nbytes <= CACHE_RESIDENT_BYTES else DRAM_PJ_PER_BYTE
    return nbytes * per_byte


class EnergyModel:
    """Estimated energy of a program's run from its FLOPs and bytes, by engine and dtype.

    >>> from onnx import helper, TensorProto
    >>> import nerve
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])])
    >>> e = EnergyModel().cost(nerve.compile(helper.make_model(g)))
    >>> e.flops, e.bytes
    (1000.0, 8000.0)
    """

    def __init__(
        self,
        op_pj: dict[DType, float] | None = None,
        issue_pj: dict[str, float] | None = None,
    ) -> None:
        self.op_pj = {**OP_PJ, **(op_pj or {})}
        self.issue_pj = {**ISSUE_PJ, **(issue_pj or {})}
        self._cache: weakref.WeakKeyDictionary[Program, Energy] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def cost(self, program: Program) -> Energy:
        """Energy of one run of ``program`` (cached per program)."""
        with self._lock:
            hit = self._cache.get(program)
        if hit is not None:
            return hit
        energy = self.estimate(program.graph, program.engine)
        with self._lock:
            self._cache[program] = energy
        return energy

    def estimate(self, graph: Graph, engine: str) -> Energy:
        """Energy of one run of ``graph`` on ``engine``."""
        issue = self.issue_pj.get(engine, self.issue_pj["host"])
        if engine == "null":
            return Energy(0.0, 0.0, 0.0)
        flops = 0.0
        nbytes = 0.0
        pj = 0.0
        types = graph.types
        for node in graph.nodes:
            f = node_flops(graph, node)
            dtype = next((types[o].dtype for o in node.outputs if o in types), DType.FLOAT32)
            pj += f * (self.op_pj.get(dtype, OP_PJ[DType.FLOAT32]) + issue)
            flops += f
            for name in [*node.inputs, *node.outputs]:
                if name and name in types:
                    size = types[name].nbytes
                    nbytes += size
                    pj += _mem_pj(size)
        return Energy(flops, nbytes, pj * PJ)


# --------------------------------------------------------------------------- measured energy

RAPL_PATH = "/sys/class/powercap/intel-rapl:0/energy_uj"


def read_rapl_joules(path: str = RAPL_PATH) -> float | None:
    """Package energy counter in joules, or None where RAPL is absent or unreadable."""
    try:
        with open(path) as f:
            return int(f.read().strip()) / 1e6
    except (OSError, ValueError):
        return None


def rapl_available(path: str = RAPL_PATH) -> bool:
    return read_rapl_joules(path) is not None


# --------------------------------------------------------------------------- power budget


class PowerGovernor:
    """Keeps estimated power at or under ``budget_w`` (a token bucket of joules).

    The bucket holds at most ``budget_w * window_s`` joules and refills at ``budget_w`` joules
    per second. A job may start when the bucket holds its estimated energy (a job bigger than
    the bucket starts when the bucket is full and leaves it in debt), so over any interval the
    energy started is at most ``budget_w * interval + capacity``.

    >>> now = [0.0]
    >>> gov = PowerGovernor(10.0, window_s=0.1, clock=lambda: now[0])   # 1 J bucket
    >>> gov.reserve(0.6), round(gov.reserve(0.6), 3)    # second must wait (0.6-0.4)/10 s
    (0.0, 0.02)
    >>> now[0] = 0.02; gov.reserve(0.6)
    0.0
    """

    def __init__(
        self, budget_w: float, window_s: float = 0.1, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if budget_w <= 0:
            raise NerveError(f"power_budget_w must be positive, got {budget_w}")
        self.budget_w = float(budget_w)
        self.capacity = self.budget_w * window_s
        self.clock = clock
        self.tokens = self.capacity
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.budget_w)
        self.last = now

    def reserve(self, joules: float) -> float:
        """Take ``joules`` and return 0.0, or take nothing and return the seconds to wait."""
        self._refill()
        need = min(joules, self.capacity)
        if self.tokens + 1e-15 >= need:
            self.tokens -= joules
            return 0.0
        return (need - self.tokens) / self.budget_w


__all__ = [
    "POWER_MODES",
    "Energy",
    "EnergyModel",
    "PowerGovernor",
    "PowerMode",
    "apply_threads",
    "get_power_mode",
    "node_flops",
    "rapl_available",
    "read_rapl_joules",
]

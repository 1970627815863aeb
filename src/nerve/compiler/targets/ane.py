"""The ``ane`` target: Apple's Neural Engine, for ``nerve check`` now and export later.

Everything here comes from the public characterisation of the ANE by Orion (Kumaresan,
arXiv 2603.06728, and its repository ``mechramc/Orion``), as digested in
``shared/reference/ane-orion-notes.md``; section numbers below refer to that digest.

* Op set: the 27 ops of Orion's IR (§3.1), i.e. what its MIL code generator emits and what
  was verified to compile: conv, add/sub/mul, matmul, reshape, transpose, cast, relu, tanh,
  sigmoid, softmax, exp, pow, reduce_sum/mean/max, neg, sqrt, split, pad, slice, identity.
  ``concat`` is rejected by the compiler (§4.1 #1), ``rsqrt`` fails to compile (§4.2), there is
  no gelu/layernorm op — only composites (§3.1, §4.1 #10), ``gather`` is not in MIL (§10.5).
* dtypes: fp16, fp32, int32, bool (``OrionDtype``, §3.1); compute is fp16 (§2.2, §10.2).
* Layout: every tensor is ``[1, C, 1, S]`` (§2.2, §3.1); ``conv`` takes no ``bias=`` (§4.1 #13).
* Limits: ≥ 49,152-byte I/O surfaces (§4.1 #4), rank 4 (§3.1), ~32,000-channel convs rejected
  (§4.1 #16), 16 weight tensors per program (§4.2), 16 graph I/Os (Orion IR, §3.1), 32 MB SRAM
  (§10.2), ~119 compiles per process (§4.1 #5, §5), weights baked at compile time (§4.1 #7).

>>> t = target()
>>> t.limits.min_io_bytes, t.compile_budget, t.mutable_weights
(49152, 119, False)
"""

from __future__ import annotations

from nerve.compiler.targets import LayoutRules, Limits, OpRule, PrecisionPolicy, Target
from nerve.ir import DType, Graph, Node

# §4.1 #4: 49,152 B = 768 channels x 16 positions x 4 bytes; smaller surfaces fail at eval.
MIN_IO_BYTES = 49_152
# §4.1 #16: a 32,000-channel classifier backward is rejected; forward with 32,000 outputs compiles.
MAX_CHANNELS = 32_000
# §4.2 (third-party, issue #3 of the Orion repository): 16 BLOBFILE weights per program.
MAX_PROGRAM_WEIGHTS = 16
# §3.1: Orion's IR holds at most 16 graph inputs + outputs.
MAX_PROGRAM_IO = 16
# §10.2: 32 MB of on-chip SRAM; ~30% slower once a working set exceeds it.
SRAM_BYTES = 32 * 1024 * 1024
# §4.1 #5 and §5: the compiler leaks state; about 119 compiles per process.
COMPILE_BUDGET = 119
# §4.3: additive masks use -1e4, not -inf (fp16's largest finite magnitude is 65504).
MASK_VALUE = -1.0e4
FP16_MAX = 65504.0

DTYPES = frozenset({DType.FLOAT16, DType.FLOAT32, DType.INT32, DType.BOOL})

FP16 = PrecisionPolicy("fp16", DType.FLOAT16)


def conv_channels(node: Node, graph: Graph) -> tuple[int, int]:
    """(input channels, output channels) of a Conv-like node, from its weight's shape."""
    w = graph.types[node.inputs[1]].shape
    return int(w[1]) * int(node.attr("group", 1)), int(w[0])


def _conv_ok(node: Node, graph: Graph) -> str | None:
    if len(node.inputs) > 2 and node.inputs[2]:
        return "the ANE conv takes no bias (§4.1 #13)"
    c_in, c_out = conv_channels(node, graph)
    if max(c_in, c_out) > MAX_CHANNELS:
        return f"a {max(c_in, c_out)}-channel conv is too wide (§4.1 #16)"
    return None


def _linear_ok(node: Node, graph: Graph) -> str | None:
    k = graph.types[node.inputs[0]].shape[-1] if graph.types[node.inputs[0]].rank else 1
    if k > MAX_CHANNELS:
        return f"a linear with {k} input channels is too wide (§4.1 #16)"
    if node.op_type == "Gemm" and node.attr("transA", 0):
        return "Gemm with transA is not lowered to conv1x1"
    return None


_PLAIN = (
    "Add", "Sub", "Mul", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast",
    "Relu", "Tanh", "Sigmoid", "Softmax", "Exp", "Pow", "ReduceSum", "ReduceMean", "ReduceMax",
    "Neg", "Sqrt", "Split", "Pad", "Slice", "Identity",
)


def target() -> Target:
    """The ANE target (check and, later, export; no engine runs it here)."""
    ops: dict[str, OpRule] = {op: OpRule() for op in _PLAIN}
    ops["Conv"] = OpRule(check=_conv_ok)
    ops["MatMul"] = OpRule(check=_linear_ok)
    ops["Gemm"] = OpRule(check=_linear_ok)
    return Target(
        name="ane",
        engine="ane",
        description="Apple Neural Engine (restriction check; export comes later)",
        mutable_weights=False,
        ops=ops,
        dtypes=DTYPES,
        precisions={"fp16": FP16},
        default_precision="fp16",
        layout=LayoutRules(activation="1C1S", conv_bias=False),
        limits=Limits(
            min_io_bytes=MIN_IO_BYTES,
            max_rank=4,
            max_channels=MAX_CHANNELS,
            max_program_weights=MAX_PROGRAM_WEIGHTS,
            max_program_io=MAX_PROGRAM_IO,
            sram_bytes=SRAM_BYTES,
        ),
        compile_budget=COMPILE_BUDGET,
        # The ANE's MIL has no fused ops; composites are emitted as primitives (§3.2). Folding
        # BatchNorm into the conv weights is a weight transform, which it can use.
        fusions=frozenset({"bn_fold"}),
    )

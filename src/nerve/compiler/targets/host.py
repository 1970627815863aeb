"""The ``host`` target: numpy kernels for every op, the oracle and the fallback.

>>> target().engine, target().ops is None
('host', True)
"""

from __future__ import annotations

from nerve.compiler.targets import (
    BF16_OPERANDS,
    FP32,
    INT8_OPERANDS,
    LayoutRules,
    Limits,
    Target,
    auto_policy,
)


def target() -> Target:
    """The host target: every op, the model's own dtypes (bf16/int8 emulated on request),
    mutable weights, no limits."""
    return Target(
        name="host",
        engine="host",
        description="numpy kernels for every op: the oracle and the fallback",
        mutable_weights=True,
        # numpy emulates bf16 and int8 operands exactly (the oracle of the cpu kernels); asked
        # for by name only. auto is fp32 here: the host target has no ISA features.
        emulations={"fp32": FP32, "bf16": BF16_OPERANDS, "int8": INT8_OPERANDS,
                    "auto": auto_policy(())},
        layout=LayoutRules(activation="NCHW", conv_bias=True),
        limits=Limits(),
    )

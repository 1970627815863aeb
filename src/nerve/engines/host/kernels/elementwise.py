"""Elementwise arithmetic, math, activations, comparisons and logic.

Every kernel follows ONNX's numpy-style (multidirectional) broadcasting unless its op says
otherwise (PRelu's slope broadcasts one way, onto X) and returns exactly the ONNX output dtype.

Two dtype rules shape this module:

* float16 inputs of float math are computed in float32 and rounded back once, so a chain of
  numpy steps does not round at every step.
* bfloat16 tensors travel as uint16 bit patterns. An op whose ONNX type list has no uint16
  (Sqrt, Relu, Celu, ...) can therefore only receive uint16 as bfloat16: those kernels decode
  it (``_float_math``). Ops that accept both uint16 and bfloat16 (Add, Max, Equal, ...) cannot
  tell them apart here, so the importer brackets their bfloat16 inputs with Casts to float32;
  their kernels treat uint16 as the integer it claims to be.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from nerve.engines.host.registry import kernel
from nerve.ir import Node
from nerve.ir.dtypes import bfloat16_to_float32, float32_to_bfloat16

MathFn = Callable[..., np.ndarray]

# ---- dtype plumbing ---------------------------------------------------------------------------


def _widen(x: np.ndarray) -> np.ndarray:
    """The values of a float-math input in the dtype numpy computes them in."""
    if x.dtype == np.uint16:  # bfloat16 bits: see the module docstring
        return bfloat16_to_float32(x)
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x


def _narrow(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``y`` rounded back to the op's output dtype (uint16 meaning bfloat16)."""
    if dtype == np.uint16:
        return float32_to_bfloat16(np.asarray(y, dtype=np.float32))
    return np.asarray(y).astype(dtype, copy=False)


def _float_math(fn: MathFn) -> MathFn:
    """Wrap a kernel of an op without uint16 in its types: widen inputs, narrow the result.

    The result takes the dtype of the first input. Integer inputs (Relu, PRelu, Neg accept some)
    pass through unchanged. IEEE special values (log(-1), 1/0) are results, not warnings.
    """

    @functools.wraps(fn)
    def run(node: Node, *inputs: np.ndarray | None) -> np.ndarray:
        first = inputs[0]
        assert first is not None
        widened = [None if x is None else _widen(x) for x in inputs]
        with np.errstate(all="ignore"):
            return _narrow(fn(node, *widened), first.dtype)

    return run


def _quiet(fn: MathFn) -> MathFn:
    """Run ``fn`` without numpy's floating-point and integer-division warnings."""

    @functools.wraps(fn)
    def run(node: Node, *inputs: np.ndarray | None) -> np.ndarray:
        with np.errstate(all="ignore"):
            return fn(node, *inputs)

    return run


# ---- erf --------------------------------------------------------------------------------------

# erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)): every term is
# positive, so unlike the Taylor series nothing cancels; 40 terms reach double precision for
# |x| < 2.5. Beyond that, erf = 1 - erfc with erfc from its continued fraction
# erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + (2/2)/(x + (3/2)/(x + ...)))), which converges
# fast there. Together they agree with math.erf to about 1e-15 relative (see the unit tests).
_ERF_SERIES_LIMIT = 2.5
_ERF_SERIES_TERMS = 40
_ERFC_FRACTION_DEPTH = 32
_ERF_SERIES_COEFFS = np.cumprod(
    [1.0] + [2.0 / (2 * n + 1) for n in range(1, _ERF_SERIES_TERMS)], dtype=np.float64
)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function of ``x``, computed in float64 (returned as float64)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    magnitude = np.abs(x)
    near = magnitude < _ERF_SERIES_LIMIT  # NaN goes to the far branch and stays NaN
    with np.errstate(all="ignore"):
        xs = x[near]
        u = xs * xs
        series = np.full_like(xs, _ERF_SERIES_COEFFS[-1])
        for c in _ERF_SERIES_COEFFS[-2::-1]:
            series = series * u + c
        out[near] = _TWO_OVER_SQRT_PI * np.exp(-u) * xs * series

        a = magnitude[~near]
        fraction = a.copy()
        for k in range(_ERFC_FRACTION_DEPTH, 0, -1):
            fraction = a + (0.5 * k) / fraction
        erfc = np.exp(-a * a) / (math.sqrt(math.pi) * fraction)
        out[~near] = np.copysign(1.0 - erfc, x[~near])
    return out


# ---- arithmetic -------------------------------------------------------------------------------


# Ops that are exactly one numpy ufunc over their (broadcast) inputs, for every dtype the
# ONNX spec allows: registered from this table rather than written out one by one.
_UFUNC_OPS: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Abs": np.abs,
    "Sign": np.sign,
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
    "BitwiseNot": np.invert,
    "Equal": np.equal,  # object (string) arrays compare by value
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "Not": np.logical_not,
}


def _register_ufunc(op_type: str, ufunc: Callable[..., np.ndarray]) -> None:
    def run(node: Node, *inputs: np.ndarray) -> np.ndarray:
        return ufunc(*inputs)

    run.__name__ = run.__qualname__ = op_type.lower()
    kernel(op_type)(run)


for _op, _ufunc in _UFUNC_OPS.items():
    _register_ufunc(_op, _ufunc)
del _op, _ufunc


@kernel("Div")
@_quiet
def div(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return truncated_divide(a, b)
    return np.divide(a, b)


def truncated_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer a / b rounded toward zero (C semantics; numpy's // rounds toward -inf).

    Exact for all int64 values, unlike a detour through float64.
    """
    quotient = np.floor_divide(a, b)
    if a.dtype.kind == "u":
        return quotient
    # Floor and truncation differ by one exactly when the division is inexact and the signs of
    # a and b differ (the quotient is negative).
    inexact = np.remainder(a, b) != 0
    negative = (a < 0) != (b < 0)
    return quotient + (inexact & negative).astype(quotient.dtype)


@kernel("Mod")
@_quiet
def mod(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # fmod=1: C's fmod (sign of the dividend); fmod=0: Python's % (sign of the divisor), which
    # is also what ONNX 28 specifies for floats, signed zeros and infinities included.
    if int(node.attr("fmod", 0)):
        return np.fmod(a, b)
    return np.mod(a, b)


@kernel("Pow")
@_quiet
def pow_(node: Node, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x ** y in the dtype of x, whatever the type of the exponent."""
    if x.dtype.kind == "f":
        return np.power(x, y).astype(x.dtype, copy=False)
    if y.dtype.kind == "f":
        # An integer base with a fractional exponent: the real power, truncated like a C cast.
        return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
    return _integer_power(x, y)


def _integer_power(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # numpy refuses negative integer exponents; the truncated real power is 0 for |x| > 1.
    negative = y < 0
    exponent = np.where(negative, 0, y).astype(np.int64)
    result = np.power(x.astype(np.int64), exponent).astype(x.dtype)
    if not negative.any():
        return result
    odd = (y % 2) != 0
    one = x.dtype.type(1)
    minus_one_power = np.where(odd, x.dtype.type(-1), one) if x.dtype.kind == "i" else one
    tiny = np.where(x == 1, one, np.where(x == -1, minus_one_power, x.dtype.type(0)))
    return np.where(negative, tiny, result).astype(x.dtype)


@kernel("Neg")
@_float_math
def neg(node: Node, x: np.ndarray) -> np.ndarray:
    return np.negative(x)


@kernel("Max")
def max_(node: Node, *inputs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.maximum, inputs)


@kernel("Min")
def min_(node: Node, *inputs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.minimum, inputs)


@kernel("Sum")
@_float_math
def sum_(node: Node, *inputs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.add, inputs)


@kernel("Mean")
@_float_math
def mean(node: Node, *inputs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.add, inputs) / len(inputs)


@kernel("Clip")
def clip(
    node: Node, x: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None
) -> np.ndarray:
    # max(min(...)) order: when low > high every element becomes high, as ONNX specifies.
    out = x
    if low is not None:
        out = np.maximum(out, low.reshape(()))
    if high is not None:
        out = np.minimum(out, high.reshape(()))
    return out


# ---- float math -------------------------------------------------------------------------------


def _register_unary(op_type: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    def run(node: Node, x: np.ndarray) -> np.ndarray:
        return fn(x)

    run.__name__ = run.__qualname__ = op_type.lower()
    kernel(op_type)(_float_math(run))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number never overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)


_UNARY_MATH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Exp": np.exp,
    "Log": np.log,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.round,  # half to even, as ONNX specifies
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Erf": erf,
    "Tanh": np.tanh,
    "Sigmoid": _sigmoid,
    "Softplus": _softplus,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Mish": lambda x: x * np.tanh(_softplus(x)),
}

for _op, _fn in _UNARY_MATH.items():
    _register_unary(_op, _fn)
del _op, _fn


@kernel("IsNaN")
def isnan(node: Node, x: np.ndarray) -> np.ndarray:
    return np.isnan(_widen(x))


@kernel("IsInf")
@_quiet
def isinf(node: Node, x: np.ndarray) -> np.ndarray:
    x = _widen(x)
    negative = bool(node.attr("detect_negative", 1))
    positive = bool(node.attr("detect_positive", 1))
    return np.isinf(x) & (((x > 0) & positive) | ((x < 0) & negative))


# ---- activations ------------------------------------------------------------------------------


@kernel("Relu")
@_float_math
def relu(node: Node, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


@kernel("LeakyRelu")
@_float_math
def leaky_relu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 0.01))
    return np.where(x < 0, alpha * x, x)


@kernel("PRelu")
@_float_math
def prelu(node: Node, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    # The slope broadcasts onto X (checked at import), so the result has X's shape.
    return np.where(x < 0, slope * x, x)


@kernel("HardSigmoid")
@_float_math
def hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 0.2))
    beta = float(node.attr("beta", 0.5))
    return np.clip(alpha * x + beta, 0, 1)


@kernel("HardSwish")
@_float_math
def hard_swish(node: Node, x: np.ndarray) -> np.ndarray:
    return x * np.clip(x * (1 / 6) + 0.5, 0, 1)


@kernel("Gelu")
@_float_math
def gelu(node: Node, x: np.ndarray) -> np.ndarray:
    wide = x.astype(np.float64)
    if node.attr("approximate", "none") == "tanh":
        inner = math.sqrt(2 / math.pi) * (wide + 0.044715 * wide**3)
        return 0.5 * wide * (1 + np.tanh(inner))
    return 0.5 * wide * (1 + erf(wide / math.sqrt(2)))


@kernel("Elu")
@_float_math
def elu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 1.0))
    return np.where(x < 0, alpha * np.expm1(x), x)


@kernel("Selu")
@_float_math
def selu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    return np.where(x <= 0, gamma * (alpha * np.exp(x) - alpha), gamma * x)


@kernel("Celu")
@_float_math
def celu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 1.0))
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


@kernel("ThresholdedRelu")
@_float_math
def thresholded_relu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 1.0))
    return np.where(x > alpha, x, 0)


@kernel("Swish")
@_float_math
def swish(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = float(node.attr("alpha", 1.0))
    return x * _sigmoid(alpha * x)


@kernel("Shrink")
@_quiet
def shrink(node: Node, x: np.ndarray) -> np.ndarray:
    # Shrink accepts every integer type (uint16 included) but not bfloat16: no bit decoding.
    lambd = float(node.attr("lambd", 0.5))
    bias = float(node.attr("bias", 0.0))
    wide = x.astype(np.float64) if x.dtype.kind in "iu" else _widen(x)
    out = np.where(wide < -lambd, wide + bias, np.where(wide > lambd, wide - bias, 0))
    return out.astype(x.dtype)


# ---- bitwise ----------------------------------------------------------------------------------


@kernel("BitShift")
def bit_shift(node: Node, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ONNX 28 semantics: arithmetic right shifts; out-of-range amounts give the sign fill."""
    bits = x.dtype.itemsize * 8
    unsigned = np.dtype(f"u{x.dtype.itemsize}")
    in_range = (y >= 0) & (y < bits)
    amount = np.where(in_range, y, 0).astype(unsigned)
    fill: np.ndarray | int
    if node.attr("direction") == "LEFT":
        # Shift the two's-complement bits as unsigned: bits leaving the top are dropped, with
        # no signed overflow.
        shifted = np.left_shift(x.astype(unsigned), amount).astype(x.dtype)
        fill = np.zeros((), x.dtype)
    else:
        shifted = np.right_shift(x, amount.astype(x.dtype))
        fill = np.where(x < 0, x.dtype.type(-1), x.dtype.type(0)) if x.dtype.kind == "i" else 0
    return np.where(in_range, shifted, fill).astype(x.dtype, copy=False)


# ---- selection ------------------------------------------------------------------------------


@kernel("Where")
def where(node: Node, condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Pure selection: bfloat16 bit patterns and strings are chosen as they are.
    return np.where(condition, x, y)

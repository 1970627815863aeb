"""Element types of the IR and their numpy and ONNX equivalents.

numpy has no bfloat16; nerve stores bfloat16 tensors as uint16 bit patterns in memory and
names the type ``bfloat16`` in the IR, so no precision is lost in transit.

The low-precision storage types ONNX defines for quantized models (float8 in four flavours,
float8 E8M0 scales, float4 E2M1, and 4-bit and 2-bit integers) are held as ``ml_dtypes``
arrays, one element per byte: onnx's own ``numpy_helper`` unpacks the packed 4-bit and 2-bit
layouts into exactly these arrays. No ONNX arithmetic op takes them; they are cast, quantized
and dequantized, and moved. :func:`to_low_precision` is ONNX Cast into them (saturation,
round-to-nearest-even, E8M0's rounding modes); :func:`widen_low_precision` is Cast out of them.

>>> from nerve.ir.dtypes import DType
>>> DType.FLOAT32.numpy, DType.from_onnx(7)
(dtype('float32'), <DType.INT64: 'int64'>)
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np
from onnx import TensorProto

from nerve.errors import ModelFormatError


class DType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    BOOL = "bool"
    STRING = "string"
    # Low-precision storage types (ml_dtypes arrays; see the module docstring).
    FLOAT8E4M3FN = "float8e4m3fn"
    FLOAT8E4M3FNUZ = "float8e4m3fnuz"
    FLOAT8E5M2 = "float8e5m2"
    FLOAT8E5M2FNUZ = "float8e5m2fnuz"
    FLOAT8E8M0 = "float8e8m0"
    FLOAT4E2M1 = "float4e2m1"
    INT4 = "int4"
    UINT4 = "uint4"
    INT2 = "int2"
    UINT2 = "uint2"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that holds this type's values (uint16 bit patterns for bfloat16)."""
        return _NUMPY[self]

    @property
    def onnx(self) -> int:
        """The ``TensorProto.DataType`` code."""
        return _ONNX[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element in memory (0 for strings).

        The 4-bit and 2-bit types report 1: nerve holds them unpacked, one element per byte
        (the ml_dtypes layout); only ONNX files pack them, two or four to a byte.
        """
        return 0 if self is DType.STRING else int(self.numpy.itemsize)

    @property
    def is_float(self) -> bool:
        """A floating-point type, the low-precision storage floats (float8, float4) included.

        Float initializers become Params (weights), so quantized float8/float4 weights are
        weights too. Whether a type can be *computed* in is :attr:`is_low_precision`'s question.
        """
        return self in _FLOATS

    @property
    def is_low_precision(self) -> bool:
        """A storage type for quantized data (float8, float4, 4-bit, 2-bit integers).

        ONNX's arithmetic ops do not take these: they are cast, (de)quantized and moved only.
        """
        return self in _LOW_PRECISION

    @property
    def is_integer(self) -> bool:
        return not self.is_float and self not in (DType.BOOL, DType.STRING)

    @staticmethod
    def from_onnx(code: int) -> DType:
        try:
            return _FROM_ONNX[code]
        except KeyError:
            name = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else code
            raise ModelFormatError(
                f"ONNX element type {name} is not supported by nerve; supported: "
                + ", ".join(d.value for d in DType)
            ) from None

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> DType:
        dt = np.dtype(dtype)
        if dt.kind in ("U", "S", "O"):
            return DType.STRING
        try:
            return _FROM_NUMPY[dt]
        except KeyError:
            raise ModelFormatError(f"numpy dtype {dt} has no nerve equivalent") from None


_NUMPY: dict[DType, np.dtype] = {
    DType.FLOAT32: np.dtype(np.float32),
    DType.FLOAT64: np.dtype(np.float64),
    DType.FLOAT16: np.dtype(np.float16),
    DType.BFLOAT16: np.dtype(np.uint16),
    DType.INT8: np.dtype(np.int8),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT16: np.dtype(np.int16),
    DType.UINT16: np.dtype(np.uint16),
    DType.INT32: np.dtype(np.int32),
    DType.UINT32: np.dtype(np.uint32),
    DType.INT64: np.dtype(np.int64),
    DType.UINT64: np.dtype(np.uint64),
    DType.BOOL: np.dtype(np.bool_),
    DType.STRING: np.dtype(object),
}

_ONNX: dict[DType, int] = {
    DType.FLOAT32: TensorProto.FLOAT,
    DType.FLOAT64: TensorProto.DOUBLE,
    DType.FLOAT16: TensorProto.FLOAT16,
    DType.BFLOAT16: TensorProto.BFLOAT16,
    DType.INT8: TensorProto.INT8,
    DType.UINT8: TensorProto.UINT8,
    DType.INT16: TensorProto.INT16,
    DType.UINT16: TensorProto.UINT16,
    DType.INT32: TensorProto.INT32,
    DType.UINT32: TensorProto.UINT32,
    DType.INT64: TensorProto.INT64,
    DType.UINT64: TensorProto.UINT64,
    DType.BOOL: TensorProto.BOOL,
    DType.STRING: TensorProto.STRING,
}

_LOW_PRECISION_NUMPY: dict[DType, np.dtype] = {
    DType.FLOAT8E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    DType.FLOAT8E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    DType.FLOAT8E5M2: np.dtype(ml_dtypes.float8_e5m2),
    DType.FLOAT8E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    DType.FLOAT8E8M0: np.dtype(ml_dtypes.float8_e8m0fnu),
    DType.FLOAT4E2M1: np.dtype(ml_dtypes.float4_e2m1fn),
    DType.INT4: np.dtype(ml_dtypes.int4),
    DType.UINT4: np.dtype(ml_dtypes.uint4),
    DType.INT2: np.dtype(ml_dtypes.int2),
    DType.UINT2: np.dtype(ml_dtypes.uint2),
}
_NUMPY.update(_LOW_PRECISION_NUMPY)

# TensorProto.DataType codes (fixed by onnx.proto; literal so older onnx packages still import).
_ONNX.update({
    DType.FLOAT8E4M3FN: 17,
    DType.FLOAT8E4M3FNUZ: 18,
    DType.FLOAT8E5M2: 19,
    DType.FLOAT8E5M2FNUZ: 20,
    DType.UINT4: 21,
    DType.INT4: 22,
    DType.FLOAT4E2M1: 23,
    DType.FLOAT8E8M0: 24,
    DType.UINT2: 25,
    DType.INT2: 26,
})  # fmt: skip

_LOW_PRECISION = frozenset(_LOW_PRECISION_NUMPY)
_FLOATS = frozenset({
    DType.FLOAT32, DType.FLOAT64, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT8E4M3FN,
    DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT8E8M0,
    DType.FLOAT4E2M1,
})  # fmt: skip

_FROM_ONNX = {code: dt for dt, code in _ONNX.items()}
# uint16 maps back to UINT16; bfloat16 only ever comes from ONNX or explicit IR types.
_FROM_NUMPY = {npdt: dt for dt, npdt in _NUMPY.items() if dt not in (DType.BFLOAT16, DType.STRING)}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns, round-to-nearest-even (NaN stays NaN)."""
    # ascontiguousarray makes a 0-d array 1-d: reshape so a scalar stays a scalar.
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(np.shape(values)).view(np.uint32)
    rounding = ((v >> 16) & 1) + np.uint32(0x7FFF)
    out = ((v + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if np.any(nan):
        out = np.where(nan, np.uint16(0x7FC0), out)
    return out


# ---- ONNX Cast into and out of the low-precision types ------------------------------------------

_FLOAT8 = frozenset(
    {DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ}
)
# (bits, signed) of the sub-byte integer types.
_SMALL_INTS = {DType.INT4: (4, True), DType.UINT4: (4, False), DType.INT2: (2, True),
               DType.UINT2: (2, False)}  # fmt: skip
_NATIVE_FLOATS = frozenset({np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)})
E8M0_ROUND_MODES = ("up", "down", "nearest")
_E8M0_BIAS, _E8M0_MAX_CODE, _E8M0_NAN = 127, 254, 255


def widen_low_precision(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Values of a low-precision array in a type numpy computes with, exactly.

    Floats widen to float32 (every float8, float4 and E8M0 value is a float32, 2^-127 included);
    4-bit and 2-bit integers to int8 / uint8.
    """
    if dtype in _SMALL_INTS:
        return x.astype(np.int8 if _SMALL_INTS[dtype][1] else np.uint8)
    return x.astype(np.float32)


def to_low_precision(
    values: np.ndarray, target: DType, *, saturate: bool = True, round_mode: str = "up"
) -> np.ndarray:
    """ONNX Cast of numeric ``values`` (any numpy or ml_dtypes type) into ``target``.

    * float8 (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ): round to nearest even. With ``saturate``,
      values (infinities included) beyond the type's largest finite value clamp to it, sign
      kept; without, they become NaN, or infinity for E5M2 (ONNX Cast's tables; ml_dtypes'
      conversion is that rounding and that overflow). NaN stays NaN.
    * FLOAT8E8M0 (a power of two 2^-127..2^127): see :func:`_to_e8m0`.
    * FLOAT4E2M1: round to nearest even, clamped to +-6 (no infinities or NaN in the type).
      A NaN becomes -0, as in ONNX's reference evaluator and ml_dtypes (ONNX's float4 note
      says 6; the Cast operator itself leaves it unsaid).
    * 4-bit and 2-bit integers: integers keep their low bits (two's complement), as ONNX Cast
      says for every fixed-point target; floats truncate toward zero first, like every other
      float-to-integer Cast in nerve and in ONNX's reference evaluator (out of range, NaN and
      infinity are undefined in ONNX; they give the low bits, 0 for NaN and infinity).
    """
    values = np.asarray(values)
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if target in _SMALL_INTS:
        return _to_small_int(values, target)
    wide = values if values.dtype in _NATIVE_FLOATS else values.astype(np.float64)
    if target is DType.FLOAT8E8M0:
        return _to_e8m0(wide, saturate, round_mode)
    if target not in _FLOAT8 and target is not DType.FLOAT4E2M1:
        raise ValueError(f"{target.value} is not a low-precision type")
    with np.errstate(all="ignore"):
        if saturate and target in _FLOAT8:
            # Clamping before rounding is the same as clamping the rounded value ([x] in the
            # ONNX tables): rounding is monotonic and the limit is representable.
            limit = float(ml_dtypes.finfo(target.numpy).max)
            wide = np.clip(wide, -limit, limit)
        return wide.astype(target.numpy)


def _to_small_int(values: np.ndarray, target: DType) -> np.ndarray:
    bits, signed = _SMALL_INTS[target]
    if values.dtype.kind in "iu":
        ints = values.astype(np.int64)  # uint64 wraps here, which keeps its low bits
    else:
        floats = values if values.dtype in _NATIVE_FLOATS else values.astype(np.float64)
        with np.errstate(all="ignore"):
            whole = np.trunc(floats.astype(np.float64))
            whole = np.where(np.isfinite(whole), whole, 0.0)
            # fmod is exact and keeps the low bits, so huge floats never overflow int64.
            ints = np.fmod(whole, float(1 << bits)).astype(np.int64)
    low = ints & ((1 << bits) - 1)
    if signed:
        low = np.where(low >= 1 << (bits - 1), low - (1 << bits), low)
    return low.astype(np.int8 if signed else np.uint8).astype(target.numpy)


def _to_e8m0(values: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """ONNX Cast to FLOAT8E8M0, the power of two 2^(code - 127), code 0..254; 255 is NaN.

    ``round_mode`` picks the power of two: ``up`` the next one at or above x, ``down`` the one
    at or below, ``nearest`` the closer one with ties (1.5 * 2^k) going up. With ``saturate``
    results beyond the range clamp to 2^127 / 2^-127 (infinity to 2^127, zero to 2^-127);
    without, they are NaN (zero too), as ONNX Cast's E8M0 table says. Negative values are
    undefined in ONNX; nerve uses their magnitude, as ONNX's reference evaluator does.
    """
    if round_mode not in E8M0_ROUND_MODES:
        raise ValueError(f"round_mode {round_mode!r} is not one of {', '.join(E8M0_ROUND_MODES)}")
    magnitude = np.abs(values.astype(np.float64))
    finite = np.isfinite(magnitude) & (magnitude > 0)
    mantissa, exponent = np.frexp(np.where(finite, magnitude, 1.0))  # m in [0.5, 1)
    if round_mode == "up":
        bump = mantissa > 0.5
    elif round_mode == "down":
        bump = np.zeros(mantissa.shape, dtype=bool)
    else:
        bump = mantissa >= 0.75
    code = exponent.astype(np.int64) - 1 + bump + _E8M0_BIAS
    too_big = (finite & (code > _E8M0_MAX_CODE)) | np.isposinf(magnitude)
    too_small = (finite & (code < 0)) | (magnitude == 0)
    if saturate:
        code = np.where(too_big, _E8M0_MAX_CODE, np.where(too_small, 0, code))
    else:
        code = np.where(too_big | too_small, _E8M0_NAN, code)
    code = np.where(np.isnan(magnitude), _E8M0_NAN, code)
    return code.astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)
